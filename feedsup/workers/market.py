"""Market-data worker: one combined-stream connection, normalised frames out.

The reading loop is the hot path. It parses, normalises, encodes and pushes
without touching a clock or a lock beyond one wall-clock stamp per message.
"""

from __future__ import annotations

import time

import msgpack
import orjson
import websocket

from feedsup.ipc import frames
from feedsup.workers import rest
from feedsup.workers.normalise import MalformedEvent, make_normaliser
from feedsup.workers.runtime import ConnectionEnded, Runtime, close_reason
from feedsup.workers.streams import stream_url

OP_TEXT = websocket.ABNF.OPCODE_TEXT
OP_BINARY = websocket.ABNF.OPCODE_BINARY
OP_CLOSE = websocket.ABNF.OPCODE_CLOSE
OP_PONG = websocket.ABNF.OPCODE_PONG


def run(rt: Runtime) -> None:
    """Connect, stream until the connection ends, then raise ConnectionEnded."""
    stream = rt.spec.stream
    check_symbols(rt)
    ws = rt.connect(stream_url(stream, rt.spec.endpoint))
    rt.ready(url=stream_url(stream, rt.spec.endpoint))
    read_loop(rt, ws, make_normaliser(stream))


def check_symbols(rt: Runtime) -> None:
    stream = rt.spec.stream
    bad = rest.invalid_symbols(stream.market, rt.spec.endpoint.rest_url, stream.symbols,
                               rt.conn.connect_timeout)
    if bad:
        raise ConnectionEnded(f"invalid symbol: {', '.join(bad)} (not listed by the exchange)", fatal=True)


def read_loop(rt: Runtime, ws: websocket.WebSocket, normalise) -> None:
    counters = rt.counters
    uplink_send = rt.uplink.send
    recv = ws.recv_data
    loads = orjson.loads
    packb = msgpack.packb
    encode_data = frames.encode_data
    time_ns = time.time_ns
    name = rt.name
    topics: dict[str, bytes] = {}
    first = True
    while True:
        try:
            opcode, payload = recv(True)
        except (OSError, websocket.WebSocketException) as exc:
            raise ConnectionEnded(rt.ending or f"connection lost: {exc.__class__.__name__}: {exc}") from None
        if opcode == OP_TEXT or opcode == OP_BINARY:
            recv_ns = time_ns()
            counters.msgs += 1
            counters.bytes += len(payload)
            try:
                msg = loads(payload)
                event = msg["data"]
                topic, data, major, minor, final = normalise(event)
            except (ValueError, KeyError, TypeError, MalformedEvent):
                handle_other(rt, payload)
                continue
            tb = topics.get(topic)
            if tb is None:
                tb = topics[topic] = topic.encode()
            body = packb({"topic": topic, "stream": name, "recv_ns": recv_ns, "data": data})
            uplink_send(encode_data(tb, major, minor, final, body))
            counters.last_event_ms = event.get("E") or event.get("T") or 0
            counters.last_recv_ms = recv_ns // 1_000_000
            if first:
                first = False
                rt.streaming()
        elif opcode == OP_PONG:
            rt.pinger.on_pong(payload)
        elif opcode == OP_CLOSE:
            reason, code = close_reason(payload)
            raise ConnectionEnded(rt.ending or reason, close_code=code)


def handle_other(rt: Runtime, payload: bytes) -> None:
    """Not a market event: a server notice, or malformed (counted, skipped)."""
    try:
        msg = orjson.loads(payload)
    except ValueError:
        rt.counters.malformed += 1
        return
    event = msg.get("data", msg) if isinstance(msg, dict) else None
    if isinstance(event, dict) and event.get("e") == "serverShutdown":
        rt.notice("serverShutdown", event_time=event.get("E"))
        return
    rt.counters.malformed += 1
