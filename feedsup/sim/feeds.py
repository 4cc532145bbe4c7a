"""Feeds: turn market state into the events of one stream name.

A feed exists while a stream has subscribers. ``poll(now)`` returns the new
events since the last poll (already-advanced market, simulated ``now``). When
several update periods pass within one poll, periodic feeds send one update
(depth diffs merge, so U/u still chain) but closed klines are never skipped.
"""

from __future__ import annotations

from typing import Any

from . import payloads as pl
from .market import SymbolMarket
from .streams import StreamSpec


class Feed:
    def __init__(self, spec: StreamSpec, now: int) -> None:
        self.spec = spec
        self.next_ms = self._next_slot(now)

    def _next_slot(self, now: int) -> int:
        period = self.spec.period_ms
        return (now // period + 1) * period if period else 0

    def due(self, now: int) -> bool:
        """True once per update period."""
        if now < self.next_ms:
            return False
        self.next_ms = self._next_slot(now)
        return True

    def poll(self, now: int) -> list[Any]:
        raise NotImplementedError


class TradeFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m
        self.cursor = m.next_trade_id - 1

    def poll(self, now: int) -> list[Any]:
        out = [pl.trade_event(self.m, t, now) for t in self.m.trades_after(self.cursor)]
        if out:
            self.cursor = out[-1]["t"]
        return out


class AggTradeFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m
        self.cursor = m.next_agg_id - 1

    def poll(self, now: int) -> list[Any]:
        out = [pl.agg_trade_event(self.m, a, now) for a in self.m.aggs_after(self.cursor)]
        if out:
            self.cursor = out[-1]["a"]
        return out


class BookTickerFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m
        self.cursor = m.update_id
        self.top: tuple[int, int, int, int] | None = None

    def poll(self, now: int) -> list[Any]:
        out = []
        for u in self.m.updates_after(self.cursor):
            top = (u.bid, u.bid_qty, u.ask, u.ask_qty)
            if top != self.top:
                self.top = top
                out.append(pl.book_ticker_event(self.m, u, now))
            self.cursor = u.id
        return out


class DepthFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m
        self.cursor = m.update_id   # last update id sent (the next event's pu)

    def poll(self, now: int) -> list[Any]:
        if not self.due(now):
            return []
        changes: dict[tuple[int, int], int] = {}
        first = last = None
        update_time = now
        for u in self.m.updates_after(self.cursor):
            if first is None:
                first = u.id
            last, update_time = u.id, u.time
            for side, price, qty in u.changes:
                changes[(side, price)] = qty
        if first is None or last is None:
            return []
        event = pl.depth_event(self.m, first, last, self.cursor, changes, now, update_time)
        self.cursor = last
        return [event]


class PartialDepthFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m

    def poll(self, now: int) -> list[Any]:
        return [pl.partial_depth_event(self.m, self.spec.levels, now)] if self.due(now) else []


class KlineFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m
        self.series = m.klines[spec.interval]
        self.watermark = self.series.current.open_time   # first kline not yet closed out

    def poll(self, now: int) -> list[Any]:
        out = []
        klines = self.series.klines
        interval = self.spec.interval
        # Every kline whose close time has passed goes out once, final. That
        # is all but the last, except when a halt began inside the last one.
        for k in klines[self.series.index_at(self.watermark):]:
            if k.close_time >= now:
                break
            out.append(pl.kline_event(self.m, interval, k, True, now))
            self.watermark = k.close_time + 1
        current = klines[-1]
        if self.due(now) and current.close_time >= now and not (self.m.halts and self.m.halted_at(now)):
            out.append(pl.kline_event(self.m, interval, current, False, now))
        return out


class TickerFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m
        self.build = pl.mini_ticker_event if spec.kind == "miniTicker" else pl.ticker_event

    def poll(self, now: int) -> list[Any]:
        return [self.build(self.m, self.m.rolling(now), now)] if self.due(now) else []


class MarkPriceFeed(Feed):
    def __init__(self, spec: StreamSpec, now: int, m: SymbolMarket) -> None:
        super().__init__(spec, now)
        self.m = m

    def poll(self, now: int) -> list[Any]:
        return [pl.mark_price_event(self.m, now)] if self.due(now) else []


class AllMarketFeed(Feed):
    """``!miniTicker@arr``, ``!ticker@arr``, ``!markPrice@arr``: one array per period."""

    def __init__(self, spec: StreamSpec, now: int, markets: list[SymbolMarket]) -> None:
        super().__init__(spec, now)
        self.markets = markets

    def poll(self, now: int) -> list[Any]:
        if not self.due(now):
            return []
        kind = self.spec.kind
        if kind == "allMarkPrice":
            return [[pl.mark_price_event(m, now) for m in self.markets]]
        build = pl.mini_ticker_event if kind == "allMiniTicker" else pl.ticker_event
        return [[build(m, m.rolling(now), now) for m in self.markets]]


class AllBookTickerFeed(Feed):
    """Futures ``!bookTicker``: every symbol's bookTicker events, one by one."""

    def __init__(self, spec: StreamSpec, now: int, markets: list[SymbolMarket]) -> None:
        super().__init__(spec, now)
        self.parts = [BookTickerFeed(spec, now, m) for m in markets]

    def poll(self, now: int) -> list[Any]:
        out: list[Any] = []
        for part in self.parts:
            out.extend(part.poll(now))
        return out


_SYMBOL_FEEDS = {
    "trade": TradeFeed, "aggTrade": AggTradeFeed, "bookTicker": BookTickerFeed, "depth": DepthFeed,
    "partialDepth": PartialDepthFeed, "kline": KlineFeed, "miniTicker": TickerFeed, "ticker": TickerFeed,
    "markPrice": MarkPriceFeed,
}


def make_feed(spec: StreamSpec, now: int, markets: dict[str, SymbolMarket]) -> Feed:
    """Build the feed for ``spec`` from the markets of its market type, by symbol."""
    if spec.symbol is not None:
        return _SYMBOL_FEEDS[spec.kind](spec, now, markets[spec.symbol])
    everything = list(markets.values())
    if spec.kind == "allBookTicker":
        return AllBookTickerFeed(spec, now, everything)
    return AllMarketFeed(spec, now, everything)

from .feeds_usdm import ContinuousKlineFeed  # noqa: E402  (USD-M continuousKline; h7)
_SYMBOL_FEEDS["continuousKline"] = ContinuousKlineFeed
