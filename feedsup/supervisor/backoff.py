"""Restart pacing: exponential backoff with full jitter.

Full jitter (``uniform(0, min(cap, initial * 2**attempt))``) spreads the
reconnects of many workers that failed together, so they do not hit the
exchange in lock-step. The delay ceiling grows with each failure and drops
back to ``initial`` once a worker has run for ``stable_after`` seconds: a
worker that worked for a while and then failed is a new incident, not the
next step of a crash loop.

No clock, no sleeping: the caller passes durations and owns the ``Random``.
"""

from __future__ import annotations

import random

# 2**64 times any sane initial delay is far above any sane cap; clamping the
# exponent keeps ``initial * 2**attempt`` from overflowing a float.
_MAX_EXPONENT = 64


def full_jitter_ceiling(attempt: int, initial: float, cap: float) -> float:
    """The largest delay attempt number ``attempt`` (0-based) may draw."""
    return min(cap, initial * 2.0 ** min(attempt, _MAX_EXPONENT))


class Backoff:
    """Delays for successive restarts of one stream."""

    def __init__(self, initial: float, cap: float, stable_after: float, rng: random.Random) -> None:
        if initial < 0 or cap < 0:
            raise ValueError("backoff delays must not be negative")
        self.initial = initial
        self.cap = cap
        self.stable_after = stable_after
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were drawn since the last reset."""
        return self._attempt

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return full_jitter_ceiling(self._attempt, self.initial, self.cap)

    def next_delay(self) -> float:
        """Draw the delay before the next attempt and count the attempt."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0

    def reset_if_stable(self, ran_for: float | None) -> bool:
        """Reset when the worker ran (was RUNNING) long enough; say whether it did."""
        if ran_for is not None and ran_for >= self.stable_after:
            self.reset()
            return True
        return False
