"""One client WebSocket connection: its queue, its writer and its keepalive.

The hub pushes pre-serialised frames into ``queue``; ``run_writer`` sends them
while honouring the lasting faults (stall, data stall, latency). The server
calls ``keepalive(now)`` every tick for pings, pong deadlines and lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from .faults import NO_EFFECTS, Effects, FaultRegistry, effects_for
from .limits import SlidingWindow

log = logging.getLogger("feedsup.sim")
TEXT = WSMsgType.TEXT


@dataclass(frozen=True)
class Rules:
    """Protocol rules for one kind of connection (spot or futures), wall seconds."""

    ping_interval: float
    pong_timeout: float
    msg_limit: int
    msg_window: float
    max_streams: int
    max_lifetime: float
    shutdown_lead: float
    max_queue: int


class Connection:
    def __init__(self, cid: int, ws: web.WebSocketResponse, request: web.Request, market: str, route: str,
                 rules: Rules, faults: FaultRegistry, combined: bool, now: float) -> None:
        self.id = cid
        self.ws = ws
        self.path = request.path_qs
        self.market = market
        self.route = route
        self.peer = f"{request.remote}:{_peer_port(request)}"
        self.transport = request.transport
        self.rules = rules
        self.faults = faults
        self.combined = combined
        self.opened = now
        self.streams: list[str] = []
        self.queue: deque[tuple[str, bytes, float]] = deque()
        self.wake = asyncio.Event()
        self.rate = SlidingWindow(rules.msg_limit, rules.msg_window)
        self.last_ping = now
        self.pings: dict[bytes, float] = {}      # payload -> sent at, unanswered
        self.shutdown_at: float | None = None
        self.closing = False
        self.sent = 0
        self.received = 0
        self._effects: Effects = NO_EFFECTS
        self._effects_key: tuple[int, int] = (-1, -1)
        self.blast = False                       # trade/aggTrade come from the blast task
        self.tasks: list[asyncio.Task[Any]] = []

    # -- sending -------------------------------------------------------------------

    def push(self, stream: str, raw: bytes, combined: bytes) -> None:
        self.queue.append((stream, combined if self.combined else raw, time.monotonic()))
        if len(self.queue) > self.rules.max_queue and not self.closing:
            log.warning("conn %d: %d messages queued, closing a client too slow to read", self.id, len(self.queue))
            self.queue.clear()
            self.close_soon(1008, "Client too slow")
        self.wake.set()

    def effects(self, now: float) -> Effects:
        if not self.faults.active:
            return NO_EFFECTS
        # Re-resolve when faults change or at most every 50 ms (durations end).
        key = (self.faults.version, int(now * 20))
        if key != self._effects_key:
            self._effects_key = key
            self._effects = effects_for(self.faults.active, self.id, self.streams, now)
        return self._effects

    async def run_writer(self) -> None:
        ws = self.ws
        queue = self.queue
        while not ws.closed:
            await self.wake.wait()
            self.wake.clear()
            while queue and not ws.closed:
                stream, data, queued_at = queue.popleft()
                eff = self.effects(time.monotonic())
                if eff.any:
                    if eff.stalled or eff.data_stalled or stream in eff.stalled_streams:
                        continue  # a stalled server loses the data, it does not buffer it
                    delay = queued_at + eff.stream_latency.get(stream, eff.latency) - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await ws.send_frame(data, TEXT)
                self.sent += 1

    async def send_json(self, obj: Any) -> None:
        """A control message (reply, serverShutdown): never combined-wrapped."""
        if not self.ws.closed and not self.effects(time.monotonic()).stalled:
            await self.ws.send_frame(orjson.dumps(obj), TEXT)

    # -- keepalive and lifetime -------------------------------------------------------

    def keepalive(self, now: float, sim_ms: int) -> None:
        if self.closing or self.ws.closed:
            return
        if self.effects(now).stalled:
            # A silent stall sends no pings and judges no pongs; the ping
            # cycle restarts when it ends, so pongs ignored meanwhile do not count.
            self.pings.clear()
            self.last_ping = now
            return
        rules = self.rules
        if self.pings and now - min(self.pings.values()) > rules.pong_timeout:
            self.close_soon(1008, "Pong timeout")
            return
        if now - self.last_ping >= rules.ping_interval:
            self.last_ping = now
            payload = str(sim_ms).encode()
            self.pings[payload] = now
            self._spawn(self.ws.ping(payload))
        if self.shutdown_at is None and now - self.opened >= rules.max_lifetime:
            self.begin_shutdown(now, sim_ms, rules.shutdown_lead)
        if self.shutdown_at is not None and now >= self.shutdown_at:
            self.close_soon(1001, "Connection lifetime expired")

    def on_pong(self, payload: bytes) -> None:
        """Spot: a pong keeps the connection alive only if it echoes a ping we sent
        (web-socket-streams.md: unsolicited pongs "will not prevent disconnection").
        USD-M: any pong is a keepalive (USD-M "Websocket Market Streams": "Unsolicited
        pong frames are allowed")."""
        if self.market == "usdm":
            self.pings.clear()
            return
        sent_at = self.pings.get(bytes(payload))
        if sent_at is None:
            return
        self.pings = {p: t for p, t in self.pings.items() if t > sent_at}

    def begin_shutdown(self, now: float, sim_ms: int, delay: float) -> None:
        self.shutdown_at = now + delay
        event = {"e": "serverShutdown", "E": sim_ms}
        if self.combined:
            # web-socket-streams.md "Server Shutdown": combined streams get it wrapped.
            self._spawn(self.send_json({"stream": "!serverShutdown", "data": event}))
        else:
            self._spawn(self.send_json(event))

    # -- ending --------------------------------------------------------------------

    def close_soon(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._spawn(self.ws.close(code=code, message=reason.encode()))

    def drop(self) -> None:
        """Abrupt drop: TCP RST, no close frame."""
        self.closing = True
        reset_transport(self.transport)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("conn %d: background send failed: %r", self.id, task.exception())

    def info(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "market": self.market, "route": self.route,
                "streams": list(self.streams), "client": self.peer, "age": round(now - self.opened, 3),
                "combined": self.combined, "sent": self.sent, "received": self.received,
                "queued": len(self.queue)}


def reset_transport(transport: Any) -> None:
    """Abort with SO_LINGER 0, so the peer sees a TCP RST rather than a FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _peer_port(request: web.Request) -> int:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return peer[1] if peer else 0
