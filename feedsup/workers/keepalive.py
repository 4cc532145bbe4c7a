"""Client-side ping/pong bookkeeping (``Pinger``, pure) and the ticker
thread's loop that drives it (``Ticker``: its clock and its waits injected).

We send native WebSocket pings ourselves instead of using WebSocketApp's
ping thread: its first ping can come only after 2 x ping_interval, which
would make the detection bound twice what the config says. Here the bound is
exact: a dead link is detected at most ``interval + timeout`` after the last
pong.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from feedsup.workers.threads import Clock, Waiter


@dataclass
class Pinger:
    interval: float
    timeout: float
    next_ping: float = 0.0
    outstanding: bytes | None = None
    sent_at: float = 0.0
    counter: int = 0

    def start(self, now: float) -> None:
        self.next_ping = now + self.interval

    def poll(self, now: float) -> bytes | str | None:
        """Return a payload to ping with, "timeout" when the pong is late, or None."""
        if self.outstanding is not None and now - self.sent_at >= self.timeout:
            return "timeout"
        if now >= self.next_ping:
            self.counter += 1
            payload = str(self.counter).encode()
            if self.outstanding is None:
                # The oldest unanswered ping keeps its deadline.
                self.outstanding = payload
                self.sent_at = now
            self.next_ping = now + self.interval
            return payload
        return None

    def on_pong(self, payload: bytes) -> None:
        # A pong answers every ping up to the one it echoes; unsolicited or
        # stale pongs change nothing.
        if self.outstanding is not None and payload.isdigit() and int(payload) >= int(self.outstanding):
            self.outstanding = None

    def next_deadline(self) -> float:
        deadline = self.next_ping
        if self.outstanding is not None:
            deadline = min(deadline, self.sent_at + self.timeout)
        return deadline


@dataclass
class Ticker:
    """The ticker thread: a liveness ping to the parent every ``interval``
    seconds from the start, and, once ``connected()``, the native pings and
    pong deadline ``pinger`` asks for, each at its due time. It reads time
    only from ``clock`` and sleeps only in ``stop.wait``; the I/O is the
    callbacks': ``live(now)`` sends a liveness ping, ``ping(payload)`` a
    native ping, ``timed_out()`` ends the connection (and sets ``stop``)."""

    interval: float
    pinger: Pinger
    live: Callable[[float], None]
    ping: Callable[[bytes], None]
    timed_out: Callable[[], None]
    connected: Callable[[], bool]
    stop: Waiter
    clock: Clock = time.monotonic

    def run(self) -> None:
        next_live = self.clock()
        while not self.stop.is_set():
            now = self.clock()
            if now >= next_live:
                self.live(now)
                next_live = now + self.interval
            deadline = next_live
            if self.connected():
                due = self.pinger.poll(now)
                if due == "timeout":
                    self.timed_out()
                elif due is not None:
                    self.ping(due)
                deadline = min(deadline, self.pinger.next_deadline())
            self.stop.wait(max(0.0, deadline - self.clock()))
