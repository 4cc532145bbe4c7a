"""Spot REST details that replace the base handlers in ``rest.py`` (registered
at the end of its route table): kline ``startTime`` and ``timeZone``,
``symbols=[...]`` and ``type`` on the tickers with their weights. (Spot
``aggTrades`` without the one-hour window is ``rest.agg_trades``.) Source: rest-api.md "Market data endpoints".
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from . import payloads as pl
from . import rest
from .hub import Hub
from .intervals import INTERVALS, next_open, open_time
from .market import Kline, SymbolMarket
from .rest import RestError
from .streams import SPOT

_TZ = re.compile(r"^([+-]?)(\d{1,2})(?::(\d{2}))?$")


def time_zone_ms(text: str | None) -> int:
    """``timeZone``: "hours and minutes (e.g. -1:00, 05:45), only hours (e.g. 0, 8, 4)",
    within [-12:00, +14:00]; the offset in ms."""
    if not text:
        return 0
    match = _TZ.match(text)
    if match is None:
        raise RestError(400, -1100, "Illegal characters found in parameter 'timeZone'.")
    sign = -1 if match.group(1) == "-" else 1
    minutes = int(match.group(2)) * 60 + int(match.group(3) or 0)
    offset = sign * minutes
    if not -12 * 60 <= offset <= 14 * 60 or int(match.group(3) or 0) >= 60:
        raise RestError(400, -1130, "Invalid data sent for a parameter.")
    return offset * 60_000


def klines(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    """Candles that open at or after ``startTime`` (never the one containing it);
    with ``timeZone`` the intervals are cut in that zone, startTime/endTime stay UTC."""
    m = rest._symbol(hub, market, q)
    interval = q.get("interval")
    if not interval:
        raise rest.mandatory("interval")
    if interval not in INTERVALS:
        raise RestError(400, -1120, "Invalid interval.")
    limit = rest._limit(q, 500, 1000 if market == SPOT else 1500)
    offset = time_zone_ms(q.get("timeZone")) if market == SPOT else 0   # timeZone is spot's
    start, end = rest._int(q, "startTime"), rest._int(q, "endTime")
    seen = rest._rest_view(hub, hub.advance())     # the rest_lag fault: REST trails the streams
    if seen is not None:
        end = seen if end is None else min(end, seen)
    series = m.klines[interval].klines if not offset or _unshifted(interval, offset) else _shifted(m, interval,
                                                                                                    offset)
    rows = window(series, start, end, limit)
    if seen is not None and rows and not offset:
        rows[-1] = m.kline_as_of(interval, rows[-1], seen)
    return [pl.kline_row(m, k) for k in rows]


def window(series: list[Kline], start: int | None, end: int | None, limit: int) -> list[Kline]:
    """rest-api.md: with startTime the oldest from it, else the newest up to endTime."""
    rows = [k for k in series if (start is None or k.open_time >= start) and (end is None or k.open_time <= end)]
    return rows[:limit] if start is not None else rows[-limit:]


def _unshifted(interval: str, offset: int) -> bool:
    # Intervals that divide the offset are cut the same in every zone.
    fixed = {"1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
             "1h": 3_600_000}
    return interval in fixed and offset % fixed[interval] == 0


def _shifted(m: SymbolMarket, interval: str, offset: int) -> list[Kline]:
    """Rebuild ``interval`` candles cut in the zone from the 1m candles kept."""
    out: list[Kline] = []
    for k in m.klines["1m"].klines:
        local_open = open_time(interval, k.open_time + offset)
        start = local_open - offset
        if not out or out[-1].open_time != start:
            out.append(Kline(start, next_open(interval, local_open) - offset - 1, k.open, k.high, k.low, k.close))
        cur = out[-1]
        if k.trades:
            if cur.trades == 0:
                cur.open, cur.high, cur.low, cur.first_id = k.open, k.high, k.low, k.first_id
            cur.high, cur.low = max(cur.high, k.high), min(cur.low, k.low)
            cur.last_id = k.last_id
        cur.close = k.close
        cur.volume += k.volume
        cur.quote_volume += k.quote_volume
        cur.trades += k.trades
        cur.taker_volume += k.taker_volume
        cur.taker_quote_volume += k.taker_quote_volume
    return out


# -- tickers: symbol=, symbols=[...], or all; type=FULL|MINI ------------------------------------


def _chosen(hub: Hub, market: str, q: Mapping[str, str]) -> list[SymbolMarket] | SymbolMarket:
    if q.get("symbol") and q.get("symbols"):
        raise RestError(400, -1106, "Parameter 'symbols' sent when not required.")
    if q.get("symbol"):
        return rest._symbol(hub, market, q)
    names = rest._wanted_symbols(q)
    if names is None:
        return list(hub.markets[market].values())
    chosen = []
    for name in names:
        m = hub.market(market, name)
        if m is None or name != name.upper():
            raise RestError(400, -1121, "Invalid symbol.")
        chosen.append(m)
    return chosen


def _tickers(row: Callable[[SymbolMarket, int], dict[str, Any]]) -> Callable[[Hub, str, Mapping[str, str]], Any]:
    def handler(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
        chosen = _chosen(hub, market, q)
        now = hub.advance()
        if isinstance(chosen, list):
            return [row(m, now) for m in chosen]
        return row(chosen, now)
    return handler


def ticker_24hr(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    kind = q.get("type") or "FULL"
    if kind not in ("FULL", "MINI"):
        raise RestError(400, -1100, "Illegal characters found in parameter 'type'; legal range is 'FULL, MINI'.")
    return _tickers(rest._ticker_row if kind == "FULL" else _mini_row)(hub, market, q)


_MINI = ("symbol", "openPrice", "highPrice", "lowPrice", "lastPrice", "volume", "quoteVolume", "openTime",
         "closeTime", "firstId", "lastId", "count")


def _mini_row(m: SymbolMarket, now: int) -> dict[str, Any]:
    full = rest._ticker_row(m, now)
    return {k: full[k] for k in _MINI}


def _count(q: Mapping[str, str]) -> int | None:
    try:
        names = rest._wanted_symbols(q)
    except RestError:
        return 1
    return None if names is None else len(names)


def ticker_24hr_weight(q: Mapping[str, str]) -> int:
    """symbol 2; symbols 1-20: 2, 21-100: 40, 101+: 80; none: 80."""
    if q.get("symbol"):
        return 2
    n = _count(q)
    return 80 if n is None else 2 if n <= 20 else 40 if n <= 100 else 80


def price_weight(q: Mapping[str, str]) -> int:
    """ticker/price and ticker/bookTicker: symbol 2, symbols or none 4."""
    return 2 if q.get("symbol") else 4


# USD-M klines, too, start at or after startTime.
FUTURES_OVERRIDES: dict[str, rest.Route] = {
    "/fapi/v1/klines": (klines, rest.futures_klines_weight),
}

SPOT_OVERRIDES: dict[str, rest.Route] = {
    "/api/v3/klines": (klines, rest._fixed(2)),
    "/api/v3/uiKlines": (klines, rest._fixed(2)),
    "/api/v3/ticker/24hr": (ticker_24hr, ticker_24hr_weight),
    "/api/v3/ticker/price": (_tickers(rest._price_row), price_weight),
    "/api/v3/ticker/bookTicker": (_tickers(rest._book_row), price_weight),
}
