"""The control socket's commands: one function each, validated, answering
``{"ok": True, ...}`` or ``{"ok": False, "error": ...}`` (circus style).

Requests are msgpack maps ``{"cmd": NAME, ...args}`` on a ZeroMQ ROUTER, so a
client that vanishes mid-request cannot wedge the parent as a REP would.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from feedsup.ipc.topics import HELLO_PREFIX


class Supervised(Protocol):
    """What the commands ask of the parent (feedsup/supervisor/parent.py),
    named here so this module does not import it back."""

    pid: int

    def status(self) -> dict[str, Any]: ...
    def stream_names(self) -> list[str]: ...
    def restart(self, stream: str) -> None: ...
    def last_frames(self, prefix: str) -> list[bytes]: ...
    def hello(self, token: str) -> bool: ...


Handler = Callable[[Supervised, dict[str, Any]], dict[str, Any]]
COMMANDS: dict[str, Handler] = {}


class CommandError(Exception):
    pass


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn
    return register


def dispatch(parent: Supervised, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": "request must be a map with a string 'cmd'"}
    handler = COMMANDS.get(request["cmd"])
    if handler is None:
        return {"ok": False, "error": f"unknown command {request['cmd']!r}; known: {', '.join(sorted(COMMANDS))}"}
    try:
        return {"ok": True, **handler(parent, request)}
    except CommandError as exc:
        return {"ok": False, "error": str(exc)}


@command("status")
def status(parent: Supervised, request: dict[str, Any]) -> dict[str, Any]:
    return parent.status()


@command("restart")
def restart(parent: Supervised, request: dict[str, Any]) -> dict[str, Any]:
    stream = request.get("stream")
    if stream not in parent.stream_names():
        raise CommandError(f"no stream named {stream!r}; streams: {', '.join(parent.stream_names())}")
    parent.restart(stream)
    return {"stream": stream}


@command("ping")
def ping(parent: Supervised, request: dict[str, Any]) -> dict[str, Any]:
    return {"pid": parent.pid}


@command("last")
def last(parent: Supervised, request: dict[str, Any]) -> dict[str, Any]:
    """The latest payload of every topic starting with ``prefix``."""
    prefix = request.get("prefix", "")
    if not isinstance(prefix, str):
        raise CommandError("prefix must be a string")
    return {"frames": parent.last_frames(prefix)}


@command("hello")
def hello(parent: Supervised, request: dict[str, Any]) -> dict[str, Any]:
    """Has this client's subscription to ``_feedsup.hello.<token>`` reached
    the PUB socket (``live``)? Nothing is ever published on that topic."""
    token = request.get("token")
    if not isinstance(token, str) or not token or len(token.encode()) > 64:
        raise CommandError("token must be a non-empty string of at most 64 bytes")
    return {"topic": HELLO_PREFIX + token, "live": parent.hello(token)}
