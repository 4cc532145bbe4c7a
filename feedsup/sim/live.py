"""Live requests on a stream connection (SUBSCRIBE & co), as a pure function.

``handle_request(text, state)`` parses one text frame and returns the reply
plus the subscription changes to carry out; it never touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")


@dataclass
class LiveState:
    streams: list[str]
    combined: bool
    max_streams: int


@dataclass
class Outcome:
    reply: dict[str, Any]
    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)
    combined: bool | None = None


def error(code: int, msg: str, req_id: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": req_id}


def _valid_id(req_id: Any) -> bool:
    if req_id is None:
        return True
    if isinstance(req_id, bool):
        return False
    if isinstance(req_id, int):
        return -(2**63) <= req_id < 2**63   # web-socket-streams.md: "64-bit signed integer"
    return isinstance(req_id, str) and len(req_id) <= 36


def handle_request(text: str | bytes, state: LiveState) -> Outcome:
    try:
        req = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Outcome(error(3, f"Invalid JSON: {exc}", None))
    if not isinstance(req, dict):
        return Outcome(error(2, "Invalid request: expected a JSON object", None))
    req_id = req.get("id")
    if not _valid_id(req_id):
        return Outcome(error(2, "Invalid request: request ID must be an unsigned integer", None))
    if "method" not in req:
        return Outcome(error(2, "Invalid request: missing field `method`", req_id))
    method = req["method"]
    if method not in METHODS:
        expected = ", ".join(f"`{m}`" for m in METHODS)
        return Outcome(error(2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", req_id))
    params = req.get("params", [])
    if not isinstance(params, list):
        return Outcome(error(2, "Invalid request: invalid type: expected a sequence", req_id))
    return _HANDLERS[method](params, req_id, state)


def _subscribe(params: list[Any], req_id: Any, state: LiveState) -> Outcome:
    if not all(isinstance(p, str) for p in params):
        return Outcome(error(2, "Invalid request: stream names must be strings", req_id))
    new = [p for p in dict.fromkeys(params) if p not in state.streams]
    if len(state.streams) + len(new) > state.max_streams:
        return Outcome(error(2, f"Invalid request: too many streams (max {state.max_streams} per connection)", req_id))
    return Outcome({"result": None, "id": req_id}, subscribe=new)


def _unsubscribe(params: list[Any], req_id: Any, state: LiveState) -> Outcome:
    if not all(isinstance(p, str) for p in params):
        return Outcome(error(2, "Invalid request: stream names must be strings", req_id))
    return Outcome({"result": None, "id": req_id}, unsubscribe=[p for p in params if p in state.streams])


def _list(params: list[Any], req_id: Any, state: LiveState) -> Outcome:
    return Outcome({"result": list(state.streams), "id": req_id})


def _set_property(params: list[Any], req_id: Any, state: LiveState) -> Outcome:
    if len(params) != 2 or not isinstance(params[0], str):
        return Outcome(error(2, "Invalid request: property name must be a string", req_id))
    if params[0] != "combined":
        return Outcome(error(0, "Unknown property", req_id))
    if not isinstance(params[1], bool):
        return Outcome(error(1, "Invalid value type: expected Boolean", req_id))
    return Outcome({"result": None, "id": req_id}, combined=params[1])


def _get_property(params: list[Any], req_id: Any, state: LiveState) -> Outcome:
    if len(params) != 1 or not isinstance(params[0], str):
        return Outcome(error(2, "Invalid request: property name must be a string", req_id))
    if params[0] != "combined":
        return Outcome(error(0, "Unknown property", req_id))
    return Outcome({"result": state.combined, "id": req_id})


_HANDLERS = {
    "SUBSCRIBE": _subscribe, "UNSUBSCRIBE": _unsubscribe, "LIST_SUBSCRIPTIONS": _list,
    "SET_PROPERTY": _set_property, "GET_PROPERTY": _get_property,
}
