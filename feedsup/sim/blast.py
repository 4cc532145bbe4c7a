"""Blast mode: synthetic trade/aggTrade events as fast as the server can send.

Benchmarks need volume, not realism: each blasting connection gets its own
event sequence (ids consecutive from 1 per stream, so a client can check that
nothing was lost), built from a pre-serialised template with only the ids and
times substituted. It is independent of the seeded market.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import WSMsgType

from .conn import Connection
from .hub import Hub
from .market import SymbolMarket
from .payloads import fmt_of
from .streams import parse_stream

BATCH = 512


def template(m: SymbolMarket, kind: str, name: str, combined: bool) -> bytes:
    """A %-template taking (E, id, [first, last,] T)."""
    f = fmt_of(m)
    p, q, s = f.p(m.last_price), f.q(max(1, m.spec.max_qty_units // 100)), m.spec.symbol
    if kind == "trade":
        body = '{"e":"trade","E":%d,"s":"' + s + '","t":%d,"p":"' + p + '","q":"' + q + '","T":%d,"m":true,"M":true}'
    else:
        tail = ',"m":true,"M":true}' if m.market == "spot" else ',"m":true}'
        body = ('{"e":"aggTrade","E":%d,"s":"' + s + '","a":%d,"p":"' + p + '","q":"' + q
                + '","f":%d,"l":%d,"T":%d' + tail)
    if combined:
        body = '{"stream":"' + name + '","data":' + body + "}"
    return body.encode()


def blast_streams(conn: Connection, hub: Hub) -> list[tuple[str, str, SymbolMarket]]:
    out = []
    for name in conn.streams:
        spec = parse_stream(name, conn.market, hub.symbols)
        if spec is not None and spec.kind in ("trade", "aggTrade") and spec.symbol:
            m = hub.market(conn.market, spec.symbol)
            if m is not None:
                out.append((name, spec.kind, m))
    return out


class _Cork:
    """Collects aiohttp's framed writes so that a batch leaves in one send()."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def flush(self) -> None:
        if self.parts:
            self.transport.write(b"".join(self.parts))
            self.parts.clear()


async def run_blast(conn: Connection, hub: Hub, count: int) -> None:
    """Send ``count`` events per stream (0 = until the connection ends)."""
    streams = blast_streams(conn, hub)
    if not streams:
        return
    ws = conn.ws
    text = WSMsgType.TEXT
    plans = [(template(m, kind, name, conn.combined), kind == "trade") for name, kind, m in streams]
    # aiohttp still builds every frame; we only batch the transport writes
    # (one syscall per batch instead of one per message). Fall back to plain
    # sends if aiohttp's writer ever stops exposing its transport.
    writer = getattr(ws, "_writer", None)
    corkable = writer is not None and hasattr(writer, "transport") and hasattr(writer, "protocol")
    next_id = 1
    while not ws.closed and (count == 0 or next_id <= count):
        eff = conn.effects(time.monotonic())
        if eff.stalled or eff.data_stalled or conn.closing:
            await asyncio.sleep(0.01)
            continue
        now = hub.now_ms
        end = next_id + BATCH if count == 0 else min(next_id + BATCH, count + 1)
        frames = [tpl % ((now, i, now) if is_trade else (now, i, i, i, now))
                  for i in range(next_id, end) for tpl, is_trade in plans]
        if corkable:
            await _send_corked(ws, writer, frames, text)
        else:
            for frame in frames:
                await ws.send_frame(frame, text)
        conn.sent += len(frames)
        next_id = end
        await asyncio.sleep(0)  # let pings, requests and faults through


async def _send_corked(ws: Any, writer: Any, frames: list[bytes], opcode: WSMsgType) -> None:
    real = writer.transport
    cork = _Cork(real)
    writer.transport = cork
    try:
        for frame in frames:
            await ws.send_frame(frame, opcode)
    finally:
        writer.transport = real
        cork.flush()
    protocol = writer.protocol
    if getattr(protocol, "_paused", False):
        await protocol._drain_helper()  # the client is slower than us: wait for it
