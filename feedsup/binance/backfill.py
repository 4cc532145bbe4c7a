"""REST backfill after a (re)connect, pure: what to fetch, paging, merging.

A worker that resumes a topic knows the last exchange id the parent delivered
(``spec.resume``): the agg id, the trade id, or for klines the open time of
the last closed kline delivered (minus one when only an open kline was). It
connects first, so every event from the subscription on arrives live; then
it fetches over REST what came after the resume mark. The union of the two
has no hole whatever the timing, and ``merge`` cuts the REST part at the
first live event so each event goes out once.

``Plan`` pages one topic: ``request()`` says what to GET next, ``on_page()``
takes the rows. ``merge()`` checks continuity (ids are consecutive; each
kline opens where the previous one closed) and turns every hole REST could
not fill into a ``Gap``. No I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from feedsup.binance.streams import MARKET_CHANNELS

PAGE = 1000

# REST paths per (market, channel).
_PATHS = {
    ("spot", "kline"): "/api/v3/klines",
    ("spot", "aggTrade"): "/api/v3/aggTrades",
    ("spot", "trade"): "/api/v3/trades",
    ("usdm", "kline"): "/fapi/v1/klines",
    ("usdm", "aggTrade"): "/fapi/v1/aggTrades",
    ("usdm", "trade"): "/fapi/v1/trades",
}
# The channels whose history Binance serves: a hole in them is backfilled.
CHANNELS = frozenset(c for _, c in _PATHS)
# The others: when their source is lost the parent announces a gap, and
# closes it with the next regular frame.
NO_HISTORY = frozenset(MARKET_CHANNELS) - CHANNELS

_FIXED_MS = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000,
    "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000,
    "6h": 21_600_000, "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000,
}


class Item(NamedTuple):
    """One recovered event: its ordering key and normalised data."""

    major: int          # agg id, trade id or kline open time
    minor: int          # kline close time (closed klines only), else 0
    data: dict[str, Any]
    end: int            # the id or close time it covers up to (kline: close time)
    time: int | None    # exchange time of the event (ms), for gap notices


@dataclass(frozen=True)
class Gap:
    """Events that neither REST nor the live stream can give us."""

    reason: str
    from_id: int | None = None     # first id lost (trade/aggTrade)
    to_id: int | None = None       # last id lost; None = up to the first live event
    from_ms: int | None = None     # exchange time around the hole, when known
    to_ms: int | None = None


class Step(enum.Enum):
    MORE = "more"          # request the next page now
    LAGGING = "lagging"    # REST has not caught up with the live stream: ask again shortly
    DONE = "done"


# -- rows -> normalised data (the live normaliser's shape) --------------------

def kline_data(symbol: str, interval: str, row: list[Any]) -> dict[str, Any]:
    """A closed kline from a REST row. REST has no event time and no trade
    ids; those fields are None rather than invented."""
    return {
        "symbol": symbol, "interval": interval, "open_time": row[0], "close_time": row[6],
        "open": row[1], "high": row[2], "low": row[3], "close": row[4],
        "volume": row[5], "quote_volume": row[7], "trades": row[8], "closed": True,
        "event_time": None, "first_trade_id": None, "last_trade_id": None,
        "taker_buy_volume": row[9], "taker_buy_quote_volume": row[10],
    }


def agg_data(symbol: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "symbol": symbol, "agg_id": row["a"], "price": row["p"], "qty": row["q"],
        "first_trade_id": row["f"], "last_trade_id": row["l"], "time": row["T"],
        "buyer_maker": row["m"], "event_time": None,
    }


def trade_data(symbol: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "symbol": symbol, "trade_id": row["id"], "price": row["price"], "qty": row["qty"],
        "time": row["time"], "buyer_maker": row["isBuyerMaker"], "event_time": None,
    }


# -- intervals -------------------------------------------------------------------

def interval_ms(interval: str) -> int | None:
    """Fixed length of a kline interval; None for calendar ones (3d, 1w, 1M)."""
    return _FIXED_MS.get(interval)


def first_open_after(resume: int, interval: str) -> int | None:
    """Open time of the first kline not yet delivered, from a resume mark.

    The mark is either a closed kline's open time (on the interval grid) or
    an open kline's open time minus one. None when the interval has no fixed
    grid we can check against.
    """
    ms = interval_ms(interval)
    if ms is None:
        return None
    if (resume + 1) % ms == 0:
        return resume + 1
    return (resume // ms + 1) * ms


# -- one topic -------------------------------------------------------------------

@dataclass
class Plan:
    """Backfill of one topic from ``resume`` (exclusive) to the live stream."""

    market: str
    channel: str           # kline | aggTrade | trade
    symbol: str
    topic: str
    resume: int
    interval: str = ""
    items: list[Item] = field(default_factory=list)
    first_live: int | None = None   # major of the first live event, once seen
    first_live_time: int | None = None   # its exchange time (trades), for plausibility
    # The first live event lies further beyond REST's present than the
    # exchange could have moved: hostile or corrupt, never to be chased.
    implausible_live: bool = False
    # kline: REST's newest row so far. Not yet known closed (REST may lag the
    # stream and still be updating it), so it is asked for again and becomes
    # an item only once REST shows a later row.
    tail: Item | None = None
    step: Step = Step.MORE
    pages: int = 0
    rows: int = 0                   # rows received, for progress reports

    def __post_init__(self) -> None:
        if (self.market, self.channel) not in _PATHS:
            raise ValueError(f"no REST history for {self.market} {self.channel}")
        self._next = self.resume + 1
        self._start = self._next

    @property
    def path(self) -> str:
        return _PATHS[self.market, self.channel]

    def request(self) -> dict[str, Any] | None:
        """Query parameters of the next GET, or None when done."""
        if self.step is Step.DONE:
            return None
        if self.channel == "kline":
            return {"symbol": self.symbol, "interval": self.interval, "startTime": self._next, "limit": PAGE}
        if self.channel == "aggTrade":
            return {"symbol": self.symbol, "fromId": self._next, "limit": PAGE}
        # Recent trades only: Binance serves older ones solely to API keys
        # (historicalTrades), so anything before this window is a gap.
        return {"symbol": self.symbol, "limit": PAGE}

    def on_page(self, rows: list[Any]) -> Step:
        """Take one page of REST rows; return what to do next."""
        self.pages += 1
        self.rows += len(rows)
        before = len(self.items)
        if self.channel == "kline":
            self._klines(rows)
        elif self.channel == "aggTrade":
            for row in rows:
                a = row["a"]
                if a >= self._next:
                    self.items.append(Item(a, 0, agg_data(self.symbol, row), a, row["T"]))
                    self._next = a + 1
        else:
            for row in rows:
                t = row["id"]
                if t >= self._next:
                    self.items.append(Item(t, 0, trade_data(self.symbol, row), t, row["time"]))
                    self._next = t + 1
            self.step = Step.DONE   # one page of recent trades is all there is
            if self.first_live is not None and not self.covered(self.first_live):
                self.implausible_live = not self._live_plausible(self.first_live)
            return self.step
        self.step = self._after_page(len(rows), len(self.items) - before)
        return self.step

    def _klines(self, rows: list[Any]) -> None:
        # A kline row is final only once REST itself shows a later row: then
        # REST's view has passed its close time. Not the local clock, and not
        # the live stream either (REST may trail it).
        tail = self.tail
        for row in rows:
            t = row[0]
            if t < self._next:
                continue
            if tail is not None and t > tail.major:
                self.items.append(tail)
            tail = Item(t, row[6], kline_data(self.symbol, self.interval, row), row[6], t)
        if tail is not None:
            self.tail = tail
            self._next = tail.major       # ask for it again: the next page proves it or refreshes it

    def _after_page(self, got: int, new: int) -> Step:
        if self.first_live is not None and self.covered(self.first_live):
            return Step.DONE
        if got >= PAGE and new > 0:
            return Step.MORE
        # REST is out of rows. Without a live event that is the present (the
        # stream was subscribed before we asked); with one we have not
        # reached, REST lags the stream: ask again shortly, unless the live
        # event is one the exchange cannot have produced yet.
        if self.first_live is None:
            return Step.DONE
        if not self._live_plausible(self.first_live):
            self.implausible_live = True
            return Step.DONE
        return Step.LAGGING

    def _live_plausible(self, live: int) -> bool:
        """Could the exchange be at ``live`` while REST's newest row is where
        it is? The same exchange-data bounds as ``Continuity.plausible``."""
        if self.channel == "kline":
            if self.tail is None:
                return True
            return live - self.tail.major <= LIFETIME_MS + 2 * (interval_ms(self.interval) or _LONGEST_INTERVAL_MS)
        if not self.items or self.first_live_time is None:
            return True
        last = self.items[-1]
        elapsed = self.first_live_time - (last.time or self.first_live_time)
        if elapsed > LIFETIME_MS + SLACK_MS:
            return False
        return live - last.major <= MAX_IDS_PER_MS * (max(0, elapsed) + SLACK_MS)

    def progress(self) -> dict[str, Any]:
        """How far paging got: rows received, ``done`` and ``remaining`` in
        ``unit`` (ids, or ms of kline open time) up to the first live event
        (``remaining`` None while no live event says where the end is)."""
        remaining = None if self.first_live is None else max(0, self.first_live - self._next)
        return {"topic": self.topic, "rows": self.rows, "done": max(0, self._next - self._start),
                "remaining": remaining, "unit": "ms" if self.channel == "kline" else "ids"}

    def covered(self, live: int) -> bool:
        """Has REST reached the live event with ordering key ``live``? For
        klines: REST showed that kline (or a later one), so every kline before
        it is either an item or does not exist (no trades, no kline)."""
        if self.channel == "kline":
            return self.tail is not None and self.tail.major >= live
        return self._next >= live

    def known_through(self) -> int | None:
        """kline: the close time up to which REST's answer is complete: just
        before its newest row. None before REST showed any row."""
        return None if self.tail is None else self.tail.major - 1

    def closed_items(self) -> list[Item]:
        """Items safe to publish: every aggTrade/trade; klines that a later
        REST row proves closed (``_klines`` keeps the others as the tail)."""
        return self.items


def eta_s(done: int, remaining: int | None, elapsed_s: float) -> float | None:
    """Seconds left at the pace so far; None while there is no pace yet."""
    if remaining is None or done <= 0 or elapsed_s <= 0:
        return None
    return remaining * elapsed_s / done


# -- merging -----------------------------------------------------------------------

def merge(plan: Plan, first_live: int | None, failure: str | None = None) -> list[Item | Gap]:
    """What to publish before the live frames of ``plan.topic``, in exchange
    order: the REST items older than the first live event, with a ``Gap``
    where each hole is.

    ``first_live`` is the major of the first buffered live event (None if
    none came). ``failure`` says REST gave up early (deadline, ban): the
    span from the last item to the live stream is then a gap too. Without a
    failure that span is not a loss but not yet fetched (REST was asked
    before the live event came); ``covered_through`` tells the caller where
    to resume.
    """
    items = plan.closed_items()
    if first_live is not None:
        items = [it for it in items if it.major < first_live]
    if plan.channel == "kline":
        return _with_kline_gaps(plan, items, first_live, failure)
    return _with_id_gaps(plan, items, first_live, failure)


def _with_id_gaps(plan: Plan, items: list[Item], first_live: int | None,
                  failure: str | None) -> list[Item | Gap]:
    out: list[Item | Gap] = []
    expected, before_ms = plan.resume + 1, None
    why = "not served by REST" if plan.channel == "aggTrade" else "older than the recent-trades window"
    for it in items:
        if it.major > expected:
            out.append(Gap(why, expected, it.major - 1, before_ms, it.time))
        out.append(it)
        expected, before_ms = it.major + 1, it.time
    if failure is not None and (first_live is None or first_live > expected):
        to_id = None if first_live is None else first_live - 1
        out.append(Gap(failure, expected, to_id, before_ms, None))
    return out


def _with_kline_gaps(plan: Plan, items: list[Item], first_live: int | None,
                     failure: str | None) -> list[Item | Gap]:
    # An interval REST skips between rows it serves had no kline (a trading
    # halt: no trades, no klines). That is a fact, not a loss: no gap notice.
    out: list[Item | Gap] = list(items)
    if failure is None:
        return out
    expected = first_open_after(plan.resume, plan.interval)
    if items:
        expected = items[-1].end + 1
    known = plan.known_through()
    if known is not None and (expected is None or known + 1 > expected):
        expected = known + 1
    start = expected if expected is not None else plan.resume + 1
    if first_live is None:
        out.append(Gap(failure, from_ms=start))
    elif first_live > start:
        out.append(Gap(failure, from_ms=start, to_ms=first_live - 1))
    return out


def covered_through(plan: Plan, merged: list[Item | Gap]) -> int | None:
    """The mark every event up to which is delivered or announced: an id, or
    for klines the close time of the last kline accounted for (the next one
    opens right after it). None when not known (an open-ended gap, or a
    kline interval without a fixed grid)."""
    if merged and isinstance(merged[-1], Gap):
        last = merged[-1]
        return last.to_id if plan.channel != "kline" else last.to_ms
    if plan.channel != "kline":
        return merged[-1].end if merged else plan.resume
    marks = [] if not merged else [merged[-1].end]
    first = first_open_after(plan.resume, plan.interval)
    if first is not None:
        marks.append(first - 1)
    known = plan.known_through()
    if known is not None:
        # Up to REST's newest row, no kline is missing; the live ones from
        # the first live event on come over the stream.
        live = plan.first_live
        marks.append(known if live is None else min(known, live - 1))
    return max(marks) if marks else None


# -- holes inside one live stream -------------------------------------------------------

# A live frame whose ordering key jumps further than the exchange could have
# moved is hostile or corrupt: counted as malformed and skipped, never a
# hole to backfill (a backfill towards id 2**62 would hold the topic for
# minutes, and the parent's watermark would then drop every real event).
# The bounds come from exchange data alone: within one connection, event
# times span at most Binance's 24 h connection lifetime, and ids cannot
# grow faster than a generous trade rate over that exchange time.
MALFORMED = -1
LIFETIME_MS = 86_400_000
SLACK_MS = 60_000
MAX_IDS_PER_MS = 1_000           # a million trades per second on one symbol
_LONGEST_INTERVAL_MS = 31 * 86_400_000


class Continuity:
    """Notices events missing *within* one connection (pure).

    Binance sends each stream in order over TCP, but a server that silently
    drops messages for a while (a data stall) would otherwise leave a hole
    nobody sees. ``check`` is called for every live frame in arrival order
    and returns the resume mark to backfill from when events before this one
    are missing, ``MALFORMED`` when the jump is implausible (see
    ``plausible``), else None. The first frame of a topic is never a hole:
    the reconnect backfill covers what came before it.

    aggTrade/trade: ids are consecutive. kline: every kline that opened
    before the one in hand must have been seen closed.
    """

    def __init__(self, channel: str) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"no continuity rule for {channel}")
        self._kline = channel == "kline"
        # id of the last event (kline: close time of the last closed kline)
        self.last: dict[str, int] = {}
        # (ordering key, exchange time) of the topic's first live frame on
        # this connection: what a later jump is judged against. Set once per
        # topic, so the per-frame path does no extra work.
        self.anchor: dict[str, tuple[int, int | None]] = {}
        # ordering key of a frame just rejected as implausible, per topic
        self.rejected: dict[str, int] = {}

    def check(self, topic: str, major: int, final: bool, data: dict[str, Any]) -> int | None:
        last = self.last.get(topic)
        if self._kline:
            return self._kline_check(topic, last, major, final, data)
        if last is None or major == last + 1:
            self.last[topic] = major
            if last is None:
                self.anchor[topic] = (major, data.get("time"))
            return None
        if major <= last:
            return None            # a repeat: the parent drops it
        if not self._accept_jump(topic, major, data):
            return MALFORMED
        self.last[topic] = major
        return last

    def _accept_jump(self, topic: str, major: int, data: dict[str, Any]) -> bool:
        """A plausible jump, or one the next frame confirms: a frame that
        continues from a rejected one shows the jump was real after all (a
        misjudged bound must never silence a topic for good)."""
        if self.plausible(topic, major, data):
            return True
        rejected = self.rejected.pop(topic, None)
        step = (interval_ms(data.get("interval", "")) or _LONGEST_INTERVAL_MS) if self._kline else 1
        if rejected is not None and 0 <= major - rejected <= step:
            self.anchor[topic] = (major, None if self._kline else data.get("time"))
            return True
        self.rejected[topic] = major
        return False

    def plausible(self, topic: str, major: int, data: dict[str, Any]) -> bool:
        """Could the exchange have moved from the topic's anchor to this frame
        within one connection? Judged on exchange ids and times only."""
        anchor = self.anchor.get(topic)
        if anchor is None:
            self.anchor[topic] = (major, data.get("time") if not self._kline else None)
            return True
        key, t0 = anchor
        if self._kline:
            length = interval_ms(data.get("interval", "")) or _LONGEST_INTERVAL_MS
            return major - key <= LIFETIME_MS + 2 * length
        t = data.get("time")
        if not isinstance(t, int) or t0 is None:
            return major - key <= MAX_IDS_PER_MS * (LIFETIME_MS + SLACK_MS)
        if not -SLACK_MS <= t - t0 <= LIFETIME_MS + SLACK_MS:
            return False
        return major - key <= MAX_IDS_PER_MS * (max(0, t - t0) + SLACK_MS)

    def seed(self, topic: str, mark: int) -> None:
        """Backfill accounted for everything up to ``mark`` (an id, or a
        kline close time) and no live event came yet: check the next one
        against it. A server that loses events while a backfill runs would
        otherwise leave a hole between the two."""
        self.last.setdefault(topic, mark)

    @staticmethod
    def follows(mark: int, major: int) -> bool:
        """Does an event with ordering key ``major`` leave no hole after ``mark``?"""
        return major <= mark + 1

    def _kline_check(self, topic: str, last: int | None, major: int, final: bool,
                     data: dict[str, Any]) -> int | None:
        if last is None:
            self.last[topic] = data["close_time"] if final else major - 1
            self.anchor[topic] = (major, None)
            return None
        hole = last if major > last + 1 else None
        if hole is not None and not self._accept_jump(topic, major, data):
            return MALFORMED
        if final:
            self.last[topic] = max(last, data["close_time"])
        elif hole is not None:
            self.last[topic] = major - 1
        return hole
