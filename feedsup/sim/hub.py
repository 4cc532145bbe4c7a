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
