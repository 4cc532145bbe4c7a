"""The connection budget shared by every stream.

Binance allows 300 connection attempts per 5 minutes per IP, and every worker
spawn is one attempt. A sliding window (not a refilling bucket) makes the
guarantee exact: no half-open interval ``[t, t + window)`` ever holds more
than ``capacity`` takes, whatever the failure pattern.

``now`` is monotonic seconds and must never go backwards.
"""

from __future__ import annotations

from collections import deque


class ConnectBudget:
    def __init__(self, capacity: int, window: float) -> None:
        if capacity < 1:
            raise ValueError("connect budget must allow at least one attempt")
        if window <= 0:
            raise ValueError("budget window must be positive")
        self.capacity = capacity
        self.window = window
        self._taken: deque[float] = deque()

    def _expire(self, now: float) -> None:
        # A take at t stops counting at t + window exactly.
        while self._taken and self._taken[0] + self.window <= now:
            self._taken.popleft()

    def try_take(self, now: float) -> bool:
        """Take one attempt if the window has room; say whether it did."""
        self._expire(now)
        if len(self._taken) >= self.capacity:
            return False
        self._taken.append(now)
        return True

    def remaining(self, now: float) -> int:
        self._expire(now)
        return self.capacity - len(self._taken)

    def next_free(self, now: float) -> float:
        """The earliest time at which ``try_take`` can succeed (``now`` if it can now)."""
        self._expire(now)
        if len(self._taken) < self.capacity:
            return now
        return self._taken[0] + self.window

    def taken(self, now: float) -> list[float]:
        """The takes that still count at ``now``."""
        self._expire(now)
        return list(self._taken)

    def restore(self, times: list[float], now: float) -> None:
        """Count takes made before (by a previous parent); ``times`` must not
        be in the future."""
        merged = sorted([t for t in times if t <= now] + list(self._taken))
        self._taken = deque(merged)
        self._expire(now)
