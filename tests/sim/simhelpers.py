"""HTTP and WebSocket helpers shared by the simulator tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable
from urllib.parse import urlencode

import websocket


class Http:
    """Result of an HTTP call: status, headers and decoded JSON body."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.body = json.loads(body) if body else None
        except ValueError:   # Binance's HTML 404 page
            self.body = None


def http(method: str, url: str, params: dict[str, Any] | None = None, data: Any = None,
         headers: dict[str, str] | None = None) -> Http:
    if params:
        url += "?" + urlencode(params)
    body = None
    hdrs = dict(headers or {})
    if data is not None:
        if isinstance(data, (dict, list)) and hdrs.get("Content-Type") != "application/x-www-form-urlencoded":
            body = json.dumps(data).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(data, dict):
            body = urlencode(data).encode()
        else:
            body = data
    req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Http(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Http(err.code, err.headers, err.read())


def get(url: str, **params: Any) -> Http:
    return http("GET", url, params)


def wait_until(cond: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01, what: str = "") -> Any:
    """Poll ``cond`` until truthy or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(interval)


def recv_json(ws: websocket.WebSocket) -> Any:
    return json.loads(ws.recv())


def collect(ws: websocket.WebSocket, until: Callable[[list[Any]], bool], timeout: float = 5.0) -> list[Any]:
    """Receive JSON messages until ``until(messages)`` holds (deadline-bound)."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while not until(out):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {len(out)} messages")
        ws.settimeout(max(0.05, deadline - time.monotonic()))
        out.append(json.loads(ws.recv()))
    return out


def request(ws: websocket.WebSocket, payload: dict[str, Any], timeout: float = 5.0) -> Any:
    """Send a live request and return the reply with the same id (skipping data)."""
    ws.send(json.dumps(payload))
    msgs = collect(ws, lambda m: bool(m) and isinstance(m[-1], dict) and "id" in m[-1]
                   and m[-1].get("id") == payload.get("id"), timeout)
    return msgs[-1]


def read_until_close(ws: websocket.WebSocket, timeout: float = 5.0) -> tuple[int, str, list[bytes]]:
    """Read (answering pings) until a close frame: (code, reason, data frames before it)."""
    from websocket import ABNF
    data: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no close frame within {timeout}s ({len(data)} data frames)")
        ws.settimeout(remaining)
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            payload = frame.data
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            return code, payload[2:].decode(errors="replace"), data
        if opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
            data.append(frame.data)


def read_frames(ws: websocket.WebSocket, seconds: float) -> list[tuple[int, bytes]]:
    """Raw frames (no automatic pong) for ``seconds``: [(opcode, payload)]."""
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return out
        ws.settimeout(remaining)
        try:
            frame = ws.recv_frame()
        except websocket.WebSocketTimeoutException:
            return out
        out.append((frame.opcode, frame.data))
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            return out


KEY, SECRET = "test-key", "test-secret"


def server_ms(sim: Any) -> int:
    return get(sim.base_url + "/api/v3/time").body["serverTime"]


def signed(sim: Any, method: str, path: str, key: str = KEY, secret: str = SECRET, in_body: bool = False,
           **params: Any) -> Http:
    """A signed REST call (HMAC-SHA256 over the query, or the form body)."""
    params.setdefault("timestamp", server_ms(sim))
    query = urlencode(params)
    query += "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    headers = {"X-MBX-APIKEY": key} if key else {}
    if in_body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return http(method, sim.base_url + path, data=query.encode(), headers=headers)
    return http(method, f"{sim.base_url}{path}?{query}", headers=headers)
