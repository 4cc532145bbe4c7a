"""Fault records and the registry of active ones (pure: callers pass ``now``).

Instant faults act once on the connections they target; lasting faults stay
in the registry until their duration ends, their count is used up or they are
cleared, and connections consult the registry while they send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

INSTANT = frozenset({"drop", "close", "malformed", "server_shutdown", "lifetime", "expire_listen_key",
                     "list", "delist"})
LASTING = frozenset({"stall", "data_stall", "latency", "refuse", "rest_error", "halt", "rest_lag", "outage"})
KINDS = INSTANT | LASTING
MALFORMED_VARIANTS = ("invalid_json", "unknown_event", "truncated", "oversized", "id_jump")
REST_ERROR_STATUSES = (418, 429, 500, 502, 503, 504)
OUTAGE_STATUSES = (500, 502, 503, 504)


class FaultError(ValueError):
    """A fault request that cannot be honoured (bad kind, target or params)."""


@dataclass
class Fault:
    id: int
    kind: str
    target: dict[str, Any]
    params: dict[str, Any]
    created: float
    until: float | None = None      # wall time the fault ends; None = until cleared
    remaining: int | None = None    # count-limited faults (rest_error calls)
    applied_to: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "params": self.params,
                "until": self.until, "remaining": self.remaining, "applied_to": self.applied_to}

    def hits(self, conn_id: int, streams: Iterable[str]) -> bool:
        """Does this fault target a connection with these streams?"""
        if "conn" in self.target:
            return self.target["conn"] == conn_id
        if "stream" in self.target:
            return self.target["stream"] in streams
        return True

    def stream(self) -> str | None:
        return self.target.get("stream")


def validate(kind: str, target: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Check a fault request; return its normalised params."""
    if kind not in KINDS:
        raise FaultError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    if not isinstance(target, dict) or not set(target) <= {"stream", "conn", "listenKey"} or len(target) > 1:
        raise FaultError("target must be {} or one of {stream: name}, {conn: id}, {listenKey: key}")
    if "conn" in target and not isinstance(target["conn"], int):
        raise FaultError("target.conn must be an integer connection id")
    p = dict(params)
    _number(p, "duration", None)
    if kind == "close":
        p["code"] = int(p.get("code", 1001))
        if not (1000 <= p["code"] <= 4999):
            raise FaultError("close code must be within 1000..4999")
        p.setdefault("reason", "")
    elif kind == "latency":
        _number(p, "ms", None)
        if p.get("ms") is None:
            raise FaultError("latency needs ms")
        p["rest"] = bool(p.get("rest", False))    # true: delay REST answers instead of stream data
    elif kind == "malformed":
        p.setdefault("variant", "invalid_json")
        if p["variant"] not in MALFORMED_VARIANTS:
            raise FaultError(f"variant must be one of {MALFORMED_VARIANTS}")
        p["count"] = int(p.get("count", 1))
        p["size"] = int(p.get("size", 2 * 1024 * 1024))
    elif kind == "refuse":
        p.setdefault("mode", "503")
        if p["mode"] not in ("503", "reset"):
            raise FaultError("refuse mode must be '503' or 'reset'")
        if p.get("duration") is None:
            raise FaultError("refuse needs duration (seconds)")
    elif kind == "rest_error":
        p["status"] = int(p.get("status", 503))
        if p["status"] not in REST_ERROR_STATUSES:
            raise FaultError(f"status must be one of {REST_ERROR_STATUSES}")
        if p.get("count") is None and p.get("duration") is None:
            p["count"] = 1
        if p.get("count") is not None:
            p["count"] = int(p["count"])
        _number(p, "retry_after", None)
    elif kind == "server_shutdown":
        _number(p, "delay", None)
    elif kind == "halt":
        if p.get("duration") is None:
            raise FaultError("halt needs duration (seconds)")
        symbol = p.get("symbol")
        if symbol is not None and (not isinstance(symbol, str) or not symbol):
            raise FaultError("halt symbol must be a symbol name (or absent: every symbol)")
        if symbol is not None:
            p["symbol"] = symbol.upper()
    elif kind in ("list", "delist"):
        symbol = p.get("symbol")
        if not isinstance(symbol, str) or not symbol.isalnum() or not 2 <= len(symbol) <= 20:
            raise FaultError(f"{kind} needs symbol: 2-20 letters and digits, such as NEWUSDT")
        p["symbol"] = symbol.upper()
    elif kind == "rest_lag":
        _number(p, "ms", None)
        if p.get("ms") is None:
            raise FaultError("rest_lag needs ms (simulated milliseconds)")
    elif kind == "outage":
        if p.get("duration") is None:
            raise FaultError("outage needs duration (seconds)")
        p.setdefault("mode", "503")
        if p["mode"] not in ("503", "reset"):
            raise FaultError("outage mode must be '503' or 'reset'")
        p["status"] = int(p.get("status", 503))
        if p["status"] not in OUTAGE_STATUSES:
            raise FaultError(f"outage status must be one of {OUTAGE_STATUSES}")
    return p


def _number(p: dict[str, Any], key: str, default: float | None) -> None:
    value = p.get(key, default)
    if value is None:
        p.pop(key, None)
        return
    try:
        p[key] = float(value)
    except (TypeError, ValueError):
        raise FaultError(f"{key} must be a number") from None
    if p[key] < 0:
        raise FaultError(f"{key} must be >= 0")


class FaultRegistry:
    def __init__(self) -> None:
        self._next_id = 1
        self.active: list[Fault] = []
        self.version = 0      # bumps on every change so connections can cache

    def create(self, kind: str, target: dict[str, Any], params: dict[str, Any], now: float) -> Fault:
        p = validate(kind, target, params)
        duration = p.get("duration")
        fault = Fault(self._next_id, kind, dict(target), p, now,
                      until=None if duration is None else now + duration,
                      remaining=p.get("count") if kind == "rest_error" else None)
        self._next_id += 1
        if kind in LASTING:
            self.active.append(fault)
            self.version += 1
        return fault

    def expire(self, now: float) -> None:
        keep = [f for f in self.active if (f.until is None or now < f.until) and (f.remaining is None or f.remaining > 0)]
        if len(keep) != len(self.active):
            self.active = keep
            self.version += 1

    def clear(self, fault_id: int | None = None) -> int:
        before = len(self.active)
        self.active = [f for f in self.active if fault_id is not None and f.id != fault_id]
        self.version += 1
        return before - len(self.active)

    def of_kind(self, kind: str, now: float) -> list[Fault]:
        return [f for f in self.active if f.kind == kind and (f.until is None or now < f.until)
                and (f.remaining is None or f.remaining > 0)]

    def take_rest_error(self, now: float) -> Fault | None:
        """The REST fault that answers the next call, consuming one count
        (an exchange-wide outage answers every call)."""
        for f in self.of_kind("outage", now):
            return f
        for f in self.of_kind("rest_error", now):
            if f.remaining is not None:
                f.remaining -= 1
            return f
        return None


@dataclass
class Effects:
    """What the lasting faults do to one connection right now."""

    stalled: bool = False
    data_stalled: bool = False
    stalled_streams: frozenset[str] = frozenset()
    latency: float = 0.0                       # seconds, whole connection
    stream_latency: dict[str, float] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return self.stalled or self.data_stalled or bool(self.stalled_streams) or self.latency > 0 or bool(self.stream_latency)


NO_EFFECTS = Effects()


def effects_for(faults: list[Fault], conn_id: int, streams: Iterable[str], now: float) -> Effects:
    streams = set(streams)
    eff = Effects()
    stalled_streams: set[str] = set()
    for f in faults:
        if (f.until is not None and now >= f.until) or not f.hits(conn_id, streams):
            continue
        if f.kind == "stall":
            eff.stalled = True
        elif f.kind == "data_stall":
            if f.stream() is None:
                eff.data_stalled = True
            else:
                stalled_streams.add(f.stream())
        elif f.kind == "latency" and not f.params.get("rest"):
            seconds = f.params["ms"] / 1000.0
            if f.stream() is None:
                eff.latency = max(eff.latency, seconds)
            else:
                eff.stream_latency[f.stream()] = seconds
    eff.stalled_streams = frozenset(stalled_streams)
    return eff
