"""Rate limits as small pure state machines; callers pass ``now``."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


class SlidingWindow:
    """At most ``limit`` hits in any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: deque[float] = deque()

    def hit(self, now: float) -> bool:
        """Record a hit; True while still within the limit."""
        hits = self._hits
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        hits.append(now)
        return len(hits) <= self.limit


class AttemptCounter:
    """Connection attempts per client IP (refused attempts count too)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._by_ip: dict[str, SlidingWindow] = {}

    def attempt(self, ip: str, now: float) -> bool:
        win = self._by_ip.setdefault(ip, SlidingWindow(self.limit, self.window))
        return win.hit(now)


MAX_BAN = 3 * 86_400.0   # rest-api.md: bans "scale in duration ... from 2 minutes to 3 days"


@dataclass(frozen=True)
class WeightVerdict:
    status: int          # 200, 429 or 418
    used: int            # weight used in the current window
    retry_after: int     # seconds, for 429/418
    limit: int = 0
    window: float = 60.0
    banned_until: float = 0.0   # wall seconds, for 418

    def message(self, futures: bool = False) -> str:
        """The -1003 message Binance writes (spot errors.md; USD-M "Error Codes")."""
        if futures:
            if self.status == 418:
                return (f"Way too many requests; IP banned until {int(self.banned_until * 1000)}. "
                        "Please use the websocket for live updates to avoid bans.")
            return (f"Too many requests; current limit is {self.limit} requests per minute. "
                    "Please use the websocket for live updates to avoid polling the API.")
        if self.status == 418:
            return (f"Way too much request weight used; IP banned until {int(self.banned_until * 1000)}. "
                    "Please use WebSocket Streams for live updates to avoid bans.")
        per = "1 MINUTE" if self.window == 60 else f"{int(self.window)} SECOND"
        return (f"Too much request weight used; current limit is {self.limit} request weight per {per}. "
                "Please use WebSocket Streams for live updates to avoid polling the API.")


@dataclass
class _IpState:
    window_id: int = -1
    used: int = 0
    backoff_until: float = 0.0
    strikes: int = 0
    banned_until: float = 0.0
    bans: int = 0


class WeightLimiter:
    """Binance's REQUEST_WEIGHT: fixed windows per client IP.

    Over the limit -> 429 until the window ends. Requests sent anyway while
    told to back off are strikes; ``ban_after`` strikes -> 418 for
    ``ban_seconds``, doubling for each later ban of the same IP up to 3 days.
    ``now`` is wall time (windows align to the clock minute).
    """

    def __init__(self, limit: int, window: float, ban_after: int, ban_seconds: float) -> None:
        self.limit = limit
        self.window = window
        self.ban_after = ban_after
        self.ban_seconds = ban_seconds
        self._ips: dict[str, _IpState] = {}

    def charge(self, ip: str, weight: int, now: float) -> WeightVerdict:
        st = self._ips.setdefault(ip, _IpState())
        window_id = int(now // self.window)
        if window_id != st.window_id:
            st.window_id, st.used = window_id, 0
        lim, win = self.limit, self.window
        if now < st.banned_until:
            return WeightVerdict(418, st.used, math.ceil(st.banned_until - now), lim, win, st.banned_until)
        if now < st.backoff_until:
            st.strikes += 1
            if st.strikes >= self.ban_after:
                ban = min(MAX_BAN, self.ban_seconds * 2 ** st.bans)
                st.bans += 1
                st.strikes = 0
                st.banned_until = now + ban
                return WeightVerdict(418, st.used, math.ceil(ban), lim, win, st.banned_until)
            return WeightVerdict(429, st.used, math.ceil(st.backoff_until - now), lim, win)
        st.strikes = 0
        st.used += weight
        if st.used > self.limit:
            st.backoff_until = (window_id + 1) * self.window
            return WeightVerdict(429, st.used, max(1, math.ceil(st.backoff_until - now)), lim, win)
        return WeightVerdict(200, st.used, 0, lim, win)

    def used(self, ip: str, now: float) -> int:
        st = self._ips.get(ip)
        return st.used if st and st.window_id == int(now // self.window) else 0


class OrderCounter:
    """Orders placed per account in the ORDERS rate-limit windows, for the
    ``X-MBX-ORDER-COUNT-<n><unit>`` headers (rest-api.md "Unfilled Order Count":
    spot 10S and 1D; USD-M 10S and 1M). ``now`` is wall seconds."""

    def __init__(self, windows: dict[str, tuple[float, int]]) -> None:
        self.windows = {name: (SlidingWindow(limit, seconds), limit) for name, (seconds, limit) in windows.items()}

    def count(self, now: float) -> tuple[dict[str, str], str | None]:
        """Record one order; (headers, name of the window exceeded or None)."""
        headers, over = {}, None
        for name, (win, limit) in self.windows.items():
            within = win.hit(now)
            headers[f"X-MBX-ORDER-COUNT-{name}"] = str(len(win._hits))
            if not within and over is None:
                over = name
        return headers, over
