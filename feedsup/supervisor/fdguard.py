"""When the relay stops accepting TCP connections because descriptors run short.

Only the relay process listens on TCP (``relay.py``: the parent never does,
since libzmq aborts a process whose ipc accept meets EMFILE). libzmq
survives a failed TCP accept, but at the limit its I/O thread spins on a
listener it cannot accept from, and real subscribers wait for the flood's
idle connections to time out. So near the limit the relay closes its TCP
endpoints (which also closes every connection accepted through them) and
opens them again once the count is back under the low-water mark and a hold
time has passed. The hold doubles while closures follow each other.

While closed, a plain socket holds the port and closes what it accepts at
once: each is a refused attempt, counted. The port goes back to libzmq only
once attempts have slowed down enough: libzmq's I/O thread accepts on its
own, and only the loop can close the endpoint again, so a flood still going
on would fill the table before the loop reacts. On a loaded 2-core host a
reopened port took 238 accepts in 16 ms.

The relay passes ``streams=0``: the per-worker reserve is the parent's
concern no more; what it keeps free is for its own sockets and pipes.

Pure: the caller passes the open count, the limit and ``now``; this module
only says when to change. ``fdwatch.py`` is the I/O around it.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

# Descriptors the parent may still need, kept free of TCP connections:
# each worker's uplink connection (x2: a rotation runs two per stream) plus
# slack, one spawn's pipes (Popen: error pipe, /dev/null), control clients
# over ipc, the metrics server (8 connections, one being turned away), and a
# reserve for state saves (file and folder), the NATS sink, log files and
# libzmq's own sockets.
PER_WORKER = 2
SPAWN = 4
CONTROL_CLIENTS = 16
METRICS = 10
RESERVE = 32
# libzmq's I/O thread goes on accepting until the loop reacts to the monitor
# event (well under a millisecond when idle, a few ms in a busy drain): the
# high mark leaves this much room for it, an eighth of the limit, at least 16.
MIN_OVERSHOOT = 16
# Hysteresis in descriptors: at least this band between the marks.
MIN_BAND = 8
# Hysteresis in time: how long the endpoints stay closed, at least.
MIN_HOLD_S = 1.0
MAX_HOLD_S = 30.0
# Accepting this long without a closure resets the hold to MIN_HOLD_S.
CALM_S = 60.0
# Reopen only when, at the rate of the refused attempts of the last
# QUIET_WINDOW_S, the loop would have REACT_S to close the endpoint again
# before the overshoot allowance is used up (320 attempts/s at a limit of
# 256: subscribers retry every 100 ms, so a few dozen of them still fit).
REACT_S = 0.1
QUIET_WINDOW_S = 1.0


class Change(enum.Enum):
    REFUSE = "refuse"   # close the TCP endpoints now
    ACCEPT = "accept"   # open them again now


@dataclass(frozen=True)
class Marks:
    high: int   # refuse at or above this many open descriptors
    low: int    # accept again at or below this many


def needed(streams: int) -> int:
    """Descriptors kept free for feedsup's own use with ``streams`` streams."""
    return 2 * max(streams, 0) * PER_WORKER + SPAWN + CONTROL_CLIENTS + METRICS + RESERVE


def overshoot(limit: int) -> int:
    """Room above the high mark for the accepts made before the loop reacts."""
    return max(MIN_OVERSHOOT, limit // 8)


def quiet_rate(limit: int) -> float:
    """Refused attempts per second below which the port may be reopened."""
    return overshoot(limit) / REACT_S


def marks(limit: int, streams: int) -> Marks:
    """The water marks for a soft limit of ``limit`` descriptors. With a limit
    too low for feedsup itself, ``high`` is at most 0: refuse for good."""
    high = limit - needed(streams) - overshoot(limit)
    return Marks(high, high - max(MIN_BAND, high // 8))


def reason(open_fds: int, limit: int, streams: int) -> str:
    """Why TCP connections are refused, for status and the log."""
    free = limit - marks(limit, streams).high
    if free >= limit:
        return (f"fd limit {limit} too low: feedsup keeps {free} descriptors free "
                f"for workers, control and metrics (raise ulimit -Hn)")
    return (f"{open_fds} of {limit} file descriptors open; {free} are kept free "
            f"for workers, control and metrics")


class FdGuard:
    """Decides when to stop and resume accepting TCP connections."""

    def __init__(self, min_hold: float = MIN_HOLD_S, max_hold: float = MAX_HOLD_S,
                 calm: float = CALM_S) -> None:
        self.min_hold = min_hold
        self.max_hold = max_hold
        self.calm = calm
        self.refusing = False
        self.closures = 0           # times the endpoints were closed
        self.refused = 0            # connection attempts refused while closed
        self.reason: str | None = None
        self.hold = min_hold
        self._until = 0.0           # refusing: not before this to accept again
        self._accepted_at: float | None = None
        self._attempts: collections.deque[tuple[float, int]] = collections.deque()   # (when, how many)

    def decide(self, open_fds: int, limit: int, streams: int, now: float,
               attempts: int = 0) -> Change | None:
        """Feed the current count, and the connection attempts refused since
        the previous call; return the change to carry out, if any."""
        m = marks(limit, streams)
        if attempts:
            self.refused += attempts
            self._attempts.append((now, attempts))
        while self._attempts and self._attempts[0][0] <= now - QUIET_WINDOW_S:
            self._attempts.popleft()
        if not self.refusing:
            if open_fds < m.high:
                return None
            recent = self._accepted_at is not None and now - self._accepted_at < self.calm
            self.hold = min(self.hold * 2, self.max_hold) if recent else self.min_hold
            self.refusing = True
            self.closures += 1
            self.reason = reason(open_fds, limit, streams)
            self._until = now + self.hold
            return Change.REFUSE
        recent = sum(n for _, n in self._attempts)
        if open_fds <= m.low and now >= self._until and recent <= quiet_rate(limit) * QUIET_WINDOW_S:
            self.refusing = False
            self.reason = None
            self._accepted_at = now
            return Change.ACCEPT
        return None

    def retry_later(self, now: float) -> None:
        """Opening the endpoints again failed (the port was taken meanwhile):
        stay refusing for another hold; not a new closure."""
        self.refusing = True
        self.reason = "could not bind the TCP endpoints again; retrying"
        self._until = now + self.hold
