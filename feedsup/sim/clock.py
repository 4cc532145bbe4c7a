"""The simulated clock: sim_ms = start_ms + (monotonic - t0) * speed."""

from __future__ import annotations

import time
from typing import Callable


class SimClock:
    def __init__(self, start_ms: int, speed: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.start_ms = start_ms
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((self._monotonic() - self._t0) * self.speed * 1000.0)

    def wall(self) -> float:
        """Monotonic wall seconds, for protocol rules."""
        return self._monotonic()
