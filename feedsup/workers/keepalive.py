"""Client-side ping/pong bookkeeping (pure; the ticker thread drives it).

We send native WebSocket pings ourselves instead of using WebSocketApp's
ping thread: its first ping can come only after 2 x ping_interval, which
would make the detection bound twice what the config says. Here the bound is
exact: a dead link is detected at most ``interval + timeout`` after the last
pong.
"""

from __future__ import annotations

from dataclasses import dataclass


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
