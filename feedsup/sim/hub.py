"""The hub: markets, live feeds and the fan-out of their events.

Every tick it advances every market to the simulated now, polls the feeds
that have subscribers, serialises each event once and pushes the bytes to
each subscribed connection (raw and combined forms are built once too).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from .clock import SimClock
from .conn import Connection
from .feeds import Feed, make_feed
from .market import SymbolMarket
from .options import SimOptions
from .streams import SPOT, USDM, canonical_name, deliverable, parse_stream
from .symbols import spec_for


class Hub:
    def __init__(self, options: SimOptions, clock: SimClock) -> None:
        self.options = options
        self.clock = clock
        self.symbols = frozenset(s.upper() for s in options.symbols)
        self.markets: dict[str, dict[str, SymbolMarket]] = {
            market: {
                s: SymbolMarket(spec_for(s), market, options.seed, options.start_ms, options.trade_rate,
                                options.book_rate, options.book_levels, options.history)
                for s in sorted(self.symbols)
            }
            for market in (SPOT, USDM)
        }
        # Delisted markets (the ``delist`` fault): out of ``markets`` (no
        # trading, no streams, REST "Invalid symbol"), listed by exchangeInfo
        # with status BREAK, as Binance does after a delisting.
        self.delisted: dict[str, dict[str, SymbolMarket]] = {SPOT: {}, USDM: {}}
        self.feeds: dict[tuple[str, str], Feed] = {}
        self.subscribers: dict[tuple[str, str], set[Connection]] = defaultdict(set)
        self.connections: dict[int, Connection] = {}
        self.now_ms = options.start_ms
        # REST trails the streams by this many simulated ms (the ``rest_lag``
        # fault; set per request by the server).
        self.rest_lag_ms = 0

    def advance(self) -> int:
        """Bring every market to the simulated now; returns it."""
        now = max(self.now_ms, self.clock.now_ms())
        for by_symbol in self.markets.values():
            for m in by_symbol.values():
                m.advance(now)
        self.now_ms = now
        return now

    def market(self, market: str, symbol: str) -> SymbolMarket | None:
        return self.markets[market].get(symbol.upper())

    # -- listings and delistings (the ``list`` and ``delist`` faults) ----------------

    def list_symbol(self, symbol: str) -> bool:
        """A new listing (or a delisted symbol back to TRADING), on spot and
        USD-M: exchangeInfo lists it, streams and REST serve it from now on.
        False if it is listed already."""
        symbol = symbol.upper()
        if symbol in self.symbols:
            return False
        now = self.advance()
        o = self.options
        for market in (SPOT, USDM):
            m = self.delisted[market].pop(symbol, None)
            if m is None:
                m = SymbolMarket(spec_for(symbol), market, o.seed, now, o.trade_rate, o.book_rate,
                                 o.book_levels, o.history)
            m.advance(now)
            self.markets[market][symbol] = m
        self.symbols = self.symbols | {symbol}
        return True

    def delist_symbol(self, symbol: str) -> list[str]:
        """A delisting, on spot and USD-M: exchangeInfo shows status BREAK,
        the symbol's streams stop (connections stay open and subscribed,
        silent on them, as on Binance), REST answers "Invalid symbol".
        Returns the stopped streams' names."""
        symbol = symbol.upper()
        if symbol not in self.symbols:
            return []
        self.advance()
        self.symbols = self.symbols - {symbol}
        for market in (SPOT, USDM):
            self.delisted[market][symbol] = self.markets[market].pop(symbol)
        stopped = []
        for key in list(self.feeds):
            spec = parse_stream(key[1], key[0], frozenset({symbol}))
            if spec is not None and spec.symbol == symbol:
                del self.feeds[key]
                stopped.append(key[1])
        return sorted(stopped)

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, conn: Connection, names: list[str]) -> None:
        now = self.advance()
        for name in names:
            name = canonical_name(name)
            if name in conn.streams:
                continue
            conn.streams.append(name)
            spec = parse_stream(name, conn.market, self.symbols)
            if not deliverable(spec, conn.market, conn.route):
                continue  # acknowledged, never delivers (as on Binance)
            assert spec is not None
            if conn.blast and spec.kind in ("trade", "aggTrade"):
                continue  # the blast task feeds these

            key = (conn.market, name)
            if key not in self.feeds:
                self.feeds[key] = make_feed(spec, now, self.markets[conn.market])
            self.subscribers[key].add(conn)

    def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        for name in names:
            name = canonical_name(name)
            if name in conn.streams:
                conn.streams.remove(name)
            key = (conn.market, name)
            subs = self.subscribers.get(key)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.subscribers[key]
                    self.feeds.pop(key, None)

    def register(self, conn: Connection) -> None:
        self.connections[conn.id] = conn

    def unregister(self, conn: Connection) -> None:
        self.unsubscribe(conn, list(conn.streams))
        self.connections.pop(conn.id, None)

    # -- the tick -------------------------------------------------------------------

    def tick(self) -> int:
        now = self.advance()
        for key, feed in list(self.feeds.items()):
            subs = self.subscribers.get(key)
            if not subs:
                continue
            events = feed.poll(now)
            if events:
                self._fan_out(key[1], events, subs)
        return now

    @staticmethod
    def _fan_out(name: str, events: list[Any], subs: set[Connection]) -> None:
        prefix = b'{"stream":"' + name.encode() + b'","data":'
        for event in events:
            raw = orjson.dumps(event)
            combined = prefix + raw + b"}"
            for conn in subs:
                conn.push(name, raw, combined)
