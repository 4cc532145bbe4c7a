"""The deterministic market of one symbol on one market (spot or usdm).

A single random process, seeded by (seed, market, symbol), produces events at
exponentially distributed simulated times. Each event moves the order book
(one update id) and, with probability trade_rate / (trade_rate + book_rate),
also prints one aggTrade made of 1-3 trades. Klines, tickers, depth diffs and
bookTicker are all derived from that one sequence, so identifiers agree across
every stream and REST endpoint.

``advance(now_ms)`` generates everything up to ``now_ms``. The sequence does
not depend on how often or when ``advance`` is called: no I/O, no wall clock.
Prices are integer ticks, quantities integer steps; amounts are exact ints.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterator, NamedTuple

from .intervals import INTERVALS, next_open, open_time
from .symbols import SymbolSpec

FIRST_TRADE_ID = 100_000_001
FIRST_AGG_ID = 50_000_001
FIRST_UPDATE_ID = 1_000_000_000
BID, ASK = 0, 1
DAY_MS = 86_400_000


class Trade(NamedTuple):
    id: int
    price: int
    qty: int
    time: int
    buyer_maker: bool


class AggTrade(NamedTuple):
    id: int
    price: int
    qty: int
    first: int
    last: int
    time: int
    buyer_maker: bool


class BookUpdate(NamedTuple):
    id: int
    time: int
    changes: tuple[tuple[int, int, int], ...]  # (side, price, qty); qty 0 deletes
    bid: int
    bid_qty: int
    ask: int
    ask_qty: int


@dataclass
class Kline:
    open_time: int
    close_time: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0         # steps
    quote_volume: int = 0   # ticks * steps
    trades: int = 0
    first_id: int = -1
    last_id: int = -1
    taker_volume: int = 0
    taker_quote_volume: int = 0

    def add(self, trade: Trade) -> None:
        if self.trades == 0:
            self.open = self.high = self.low = trade.price
            self.first_id = trade.id
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.close = trade.price
        self.volume += trade.qty
        self.quote_volume += trade.qty * trade.price
        self.trades += 1
        self.last_id = trade.id
        if not trade.buyer_maker:  # the buyer was the taker
            self.taker_volume += trade.qty
            self.taker_quote_volume += trade.qty * trade.price


class KlineSeries:
    """Klines of one interval, oldest first. The last one is open, unless a
    trading halt began inside it: then it closes at its close time and no
    kline follows until trading resumes (as on Binance: no trades, no
    klines for those intervals)."""

    def __init__(self, interval: str, t_ms: int, price: int, cap: int,
                 halted: Callable[[int, int], bool] | None = None) -> None:
        self.interval = interval
        self.cap = cap
        self.klines: list[Kline] = [self._empty(open_time(interval, t_ms), price)]
        self._halted = halted or (lambda start, end: False)
        self._next_start = self.klines[-1].close_time + 1   # first kline not yet created

    def _empty(self, start: int, price: int) -> Kline:
        return Kline(start, next_open(self.interval, start) - 1, price, price, price, price)

    @property
    def current(self) -> Kline:
        return self.klines[-1]

    def roll(self, t_ms: int) -> None:
        """Close klines up to ``t_ms``, adding empty ones for quiet periods
        (but none for an interval that lies wholly inside a halt)."""
        while t_ms >= self._next_start:
            start = self._next_start
            end = next_open(self.interval, start) - 1
            self._next_start = end + 1
            if not self._halted(start, end):
                self.klines.append(self._empty(start, self.klines[-1].close))
        last = self.klines[-1]
        if t_ms > last.close_time and not self._halted(t_ms, t_ms):
            # A halt cleared early: the interval was skipped while it looked
            # wholly halted, but trading resumed inside it.
            self.klines.append(self._empty(open_time(self.interval, t_ms), last.close))
        if len(self.klines) > self.cap * 1.25:
            del self.klines[: len(self.klines) - self.cap]

    def add(self, trade: Trade) -> None:
        self.roll(trade.time)
        self.klines[-1].add(trade)

    def index_at(self, open_ms: int) -> int:
        """Index of the first kline opening at or after ``open_ms``."""
        lo, hi = 0, len(self.klines)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.klines[mid].open_time < open_ms:
                lo = mid + 1
            else:
                hi = mid
        return lo


class SymbolMarket:
    def __init__(self, spec: SymbolSpec, market: str, seed: int, start_ms: int,
                 trade_rate: float, book_rate: float, levels: int, history: int) -> None:
        self.spec = spec
        self.market = market
        self.qty_decimals = spec.qty_decimals if market == "spot" else spec.futures_qty_decimals
        self.price_decimals = spec.price_decimals
        self._rng = random.Random(f"{seed}/{market}/{spec.symbol}")
        self._total_rate = trade_rate + book_rate
        self._trade_share = trade_rate / self._total_rate if self._total_rate > 0 else 0.0
        self._levels = levels
        self.now_ms = start_ms
        self._next_ms = float(start_ms) + self._gap_ms()
        self.trades: deque[Trade] = deque(maxlen=history)
        self.aggs: deque[AggTrade] = deque(maxlen=history)
        self.updates: deque[BookUpdate] = deque(maxlen=max(10_000, history // 4))
        self.next_trade_id = FIRST_TRADE_ID
        self.next_agg_id = FIRST_AGG_ID
        self.update_id = FIRST_UPDATE_ID
        self.center = max(spec.start_ticks, levels + 10)
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        for k in range(1, levels + 1):
            self.bids[self.center - k] = self._random_qty()
            self.asks[self.center + k] = self._random_qty()
        self.last_price = self.center + 1
        self.last_qty = 0
        # Trading halts: (first, last) simulated ms, inclusive, oldest first.
        self.halts: list[tuple[int, int]] = []
        self.klines = {i: KlineSeries(i, start_ms, self.last_price, 5000, self.halted_through)
                       for i in INTERVALS}

    # -- the random process --------------------------------------------------

    def _gap_ms(self) -> float:
        if self._total_rate <= 0:
            return float("inf")
        return self._rng.expovariate(self._total_rate) * 1000.0

    def _random_qty(self) -> int:
        # Mostly small orders with an occasional large one, like a real book.
        qmax = self.spec.max_qty_units
        return min(qmax, max(1, int(self._rng.paretovariate(1.5) * qmax / 20))) if self._rng.random() < 0.9 else self._rng.randint(1, qmax)

    # -- trading halts ------------------------------------------------------------

    def halt(self, first_ms: int, last_ms: int) -> None:
        """No trades, book updates or klines from ``first_ms`` to ``last_ms``
        (inclusive, both after the market's now). Ids do not advance."""
        self.halts.append((first_ms, last_ms))
        self.halts.sort()

    def end_halts(self, now_ms: int) -> None:
        """Trading resumes now: cut every halt still running at ``now_ms``."""
        self.halts = [(a, min(b, now_ms)) for a, b in self.halts if a <= now_ms]

    def halted_at(self, t_ms: int) -> bool:
        return any(a <= t_ms <= b for a, b in self.halts)

    def halted_through(self, start: int, end: int) -> bool:
        """Is every ms of [start, end] inside one halt?"""
        return any(a <= start and end <= b for a, b in self.halts)

    def advance(self, now_ms: int) -> None:
        """Generate every event with simulated time <= ``now_ms``."""
        if now_ms <= self.now_ms:
            return
        while self._next_ms <= now_ms:
            t = int(self._next_ms)
            if not (self.halts and self.halted_at(t)):
                self._event(t)
            self._next_ms += self._gap_ms()
        self.now_ms = now_ms
        for series in self.klines.values():
            series.roll(now_ms)

    def advance_to_update(self, update_id: int) -> None:
        """Generate events until the book reaches ``update_id`` (for replays)."""
        while self.update_id < update_id and self._next_ms != float("inf"):
            t = int(self._next_ms)
            self._event(t)
            self._next_ms += self._gap_ms()
            self.now_ms = max(self.now_ms, t)

    def _event(self, t: int) -> None:
        is_trade = self._rng.random() < self._trade_share
        move = self._rng.choice((-1, 0, 0, 1))
        new_center = max(self._levels + 10, self.center + move)
        changes = self._recenter(new_center)
        for _ in range(self._rng.randint(1, 3)):
            changes.append(self._tweak())
        self.update_id += 1
        self.updates.append(BookUpdate(
            self.update_id, t, tuple(changes),
            self.center - 1, self.bids[self.center - 1], self.center + 1, self.asks[self.center + 1],
        ))
        if is_trade:
            self._print_trade(t)

    def _recenter(self, new: int) -> list[tuple[int, int, int]]:
        old, n = self.center, self._levels
        self.center = new
        changes: list[tuple[int, int, int]] = []
        if new == old:
            return changes
        # Bids live in [c-n, c-1], asks in [c+1, c+n]; the mid price c is empty.
        for side, book, lo_old, lo_new in ((BID, self.bids, old - n, new - n), (ASK, self.asks, old + 1, new + 1)):
            # Only the levels at the edges move: O(|move|), not O(levels).
            for price in _minus(lo_old, lo_new, n):
                del book[price]
                changes.append((side, price, 0))
            for price in _minus(lo_new, lo_old, n):
                qty = self._random_qty()
                book[price] = qty
                changes.append((side, price, qty))
        return changes

    def _tweak(self) -> tuple[int, int, int]:
        side = BID if self._rng.random() < 0.5 else ASK
        depth = min(self._levels, int(self._rng.expovariate(0.2)) + 1)
        price = self.center - depth if side == BID else self.center + depth
        qty = self._random_qty()
        (self.bids if side == BID else self.asks)[price] = qty
        return side, price, qty

    def _print_trade(self, t: int) -> None:
        buyer_maker = self._rng.random() < 0.5
        price = self.center - 1 if buyer_maker else self.center + 1
        first = self.next_trade_id
        total = 0
        for _ in range(self._rng.randint(1, 3)):
            qty = max(1, self._random_qty() // 4)
            trade = Trade(self.next_trade_id, price, qty, t, buyer_maker)
            self.next_trade_id += 1
            total += qty
            self.trades.append(trade)
            for series in self.klines.values():
                series.add(trade)
            self.last_qty = qty
        self.aggs.append(AggTrade(self.next_agg_id, price, total, first, self.next_trade_id - 1, t, buyer_maker))
        self.next_agg_id += 1
        self.last_price = price

    # -- queries ---------------------------------------------------------------

    def trades_after(self, trade_id: int) -> Iterator[Trade]:
        """Trades with id > ``trade_id`` still in history, oldest first."""
        return _after(self.trades, trade_id)

    def aggs_after(self, agg_id: int) -> Iterator[AggTrade]:
        return _after(self.aggs, agg_id)

    def updates_after(self, update_id: int) -> Iterator[BookUpdate]:
        return _after(self.updates, update_id)

    def aggs_in(self, start_ms: int | None, end_ms: int | None, from_id: int | None, limit: int) -> list[AggTrade]:
        aggs = self.aggs
        if from_id is not None:
            items: Iterator[AggTrade] = _after(aggs, from_id - 1)
        elif start_ms is not None:
            i = bisect.bisect_left(aggs, start_ms, key=lambda a: a.time)
            items = islice(aggs, i, None)
        elif end_ms is not None:
            j = bisect.bisect_right(aggs, end_ms, key=lambda a: a.time)
            items = islice(aggs, max(0, j - limit), j)
        else:
            items = islice(aggs, max(0, len(aggs) - limit), None)
        out = []
        for agg in items:
            if (start_ms is not None and agg.time < start_ms) or (end_ms is not None and agg.time > end_ms):
                if end_ms is not None and agg.time > end_ms:
                    break
                continue
            out.append(agg)
            if len(out) >= limit:
                break
        return out

    def klines_in(self, interval: str, start_ms: int | None, end_ms: int | None, limit: int) -> list[Kline]:
        series = self.klines[interval].klines
        if start_ms is not None:
            i = self.klines[interval].index_at(open_time(interval, start_ms) if start_ms > 0 else 0)
            i = max(i, 0)
            rows = series[i:i + limit]
            if end_ms is not None:
                rows = [k for k in rows if k.open_time <= end_ms]
            return rows
        j = len(series)
        if end_ms is not None:
            j = self.klines[interval].index_at(end_ms + 1)
        return series[max(0, j - limit):j]

    def kline_as_of(self, interval: str, k: Kline, t_ms: int) -> Kline:
        """``k`` as it stood at simulated time ``t_ms`` (REST lag serves the
        newest row with its then-current values, not its final ones)."""
        if t_ms >= k.close_time:
            return k
        series = self.klines[interval]
        i = series.index_at(k.open_time)
        past = series._empty(k.open_time, series.klines[i - 1].close if i > 0 else k.open)
        if k.trades:
            for trade in self.trades_after(k.first_id - 1):
                if trade.id > k.last_id or trade.time > t_ms:
                    break
                past.add(trade)
        return past

    def depth(self, limit: int) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
        bids = sorted(self.bids.items(), reverse=True)[:limit]
        asks = sorted(self.asks.items())[:limit]
        return self.update_id, bids, asks

    def rolling(self, now_ms: int, window_ms: int = DAY_MS) -> "Rolling":
        """Rolling-window statistics from 1m klines (the 24hr ticker)."""
        series = self.klines["1m"]
        start = now_ms - window_ms
        i = series.index_at(open_time("1m", start))
        rows = series.klines[i:]
        prev_close = series.klines[i - 1].close if i > 0 else rows[0].open
        traded = [k for k in rows if k.trades]
        r = Rolling(start, now_ms, rows[0].open if rows else self.last_price, self.last_price, self.last_price,
                    self.last_price, prev_close)
        if traded:
            r.open = traded[0].open
            r.high = max(k.high for k in traded)
            r.low = min(k.low for k in traded)
            r.first_id = traded[0].first_id
            r.last_id = traded[-1].last_id
        for k in rows:
            r.volume += k.volume
            r.quote_volume += k.quote_volume
            r.count += k.trades
        return r


@dataclass
class Rolling:
    open_time: int
    close_time: int
    open: int
    high: int
    low: int
    close: int
    prev_close: int
    volume: int = 0
    quote_volume: int = 0
    count: int = 0
    first_id: int = -1
    last_id: int = -1


def _minus(a: int, b: int, n: int) -> list[int]:
    """Ascending prices of [a, a+n) that are not in [b, b+n)."""
    return [p for p in range(a, min(a + n, b))] + [p for p in range(max(a, b + n), a + n)]


def _after(items: deque, key: int) -> Iterator:
    """Items of an id-ordered deque with consecutive ids, after ``key``."""
    if not items:
        return iter(())
    start = key + 1 - items[0].id
    if start >= len(items):
        return iter(())
    return islice(items, max(0, start), None)
