"""Public market-data REST endpoints (spot /api/v3, futures /fapi/v1).

Each endpoint is a pure-ish function of (hub, market, query) returning
(status, body); ``weight_of`` gives Binance's request weight for the query.
Rate limiting and fault injection wrap these in ``server.py``.
"""

from __future__ import annotations

from functools import partial

from typing import Any, Callable, Mapping

import orjson

from . import payloads as pl
from .exchange_info import futures_exchange_info, spot_exchange_info
from .hub import Hub
from .intervals import INTERVALS
from .market import SymbolMarket
from .streams import SPOT, USDM


class RestError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def mandatory(name: str) -> RestError:
    return RestError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _int(q: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    text = q.get(name)
    if text is None or text == "":
        return default
    if not text.lstrip("-").isdigit():
        raise RestError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(text)


def _limit(q: Mapping[str, str], default: int, maximum: int) -> int:
    limit = _int(q, "limit", default)
    assert limit is not None
    if limit <= 0:
        raise RestError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
    return min(limit, maximum)


def _symbol(hub: Hub, market: str, q: Mapping[str, str]) -> SymbolMarket:
    symbol = q.get("symbol")
    if not symbol:
        raise mandatory("symbol")
    m = hub.market(market, symbol)
    if m is None:
        raise RestError(400, -1121, "Invalid symbol.")
    return m


Handler = Callable[[Hub, str, Mapping[str, str]], Any]


def ping(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    return {}


def server_time(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    return {"serverTime": hub.advance()}


def exchange_info(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    now = hub.advance()
    # Delisted symbols stay listed, with status BREAK (the ``delist`` fault).
    delisted = hub.delisted[market]
    markets = sorted([*hub.markets[market].values(), *delisted.values()], key=lambda m: m.spec.symbol)
    wanted = _wanted_symbols(q)
    if wanted is not None:
        chosen = []
        for s in wanted:
            m = hub.market(market, s) or delisted.get(s.upper())
            if m is None:
                raise RestError(400, -1121, "Invalid symbol.")
            chosen.append(m)
        markets = chosen
    broken = frozenset(delisted)
    if market == SPOT:
        return spot_exchange_info(hub.options, markets, now, broken)
    return futures_exchange_info(hub.options, markets, now, broken)


def _wanted_symbols(q: Mapping[str, str]) -> list[str] | None:
    if q.get("symbol"):
        return [q["symbol"]]
    if q.get("symbols"):
        text = q["symbols"].strip()
        try:
            names = orjson.loads(text)
        except ValueError:
            raise RestError(400, -1100, "Illegal characters found in parameter 'symbols'.") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RestError(400, -1100, "Illegal characters found in parameter 'symbols'.")
        return names
    return None


def klines(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    m = _symbol(hub, market, q)
    interval = q.get("interval")
    if not interval:
        raise mandatory("interval")
    if interval not in INTERVALS:
        raise RestError(400, -1120, "Invalid interval.")
    limit = _limit(q, 500, 1000 if market == SPOT else 1500)
    now = hub.advance()
    end = _int(q, "endTime")
    seen = _rest_view(hub, now)
    if seen is not None:
        end = seen if end is None else min(end, seen)
    rows = m.klines_in(interval, _int(q, "startTime"), end, limit)
    if seen is not None and rows:
        rows[-1] = m.kline_as_of(interval, rows[-1], seen)
    return [pl.kline_row(m, k) for k in rows]


def _rest_view(hub: Hub, now: int) -> int | None:
    """The simulated time REST serves while it lags the streams (the
    ``rest_lag`` fault): nothing newer than this exists for REST yet."""
    return now - hub.rest_lag_ms if hub.rest_lag_ms > 0 else None


def agg_trades(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    m = _symbol(hub, market, q)
    limit = _limit(q, 500, 1000)
    start, end, from_id = _int(q, "startTime"), _int(q, "endTime"), _int(q, "fromId")
    # The one-hour span limit is USD-M's only; spot dropped it (spot CHANGELOG).
    if market != SPOT and start is not None and end is not None and end - start > 3_600_000:
        raise RestError(400, -1127, "More than 1 hours between startTime and endTime.")
    seen = _rest_view(hub, hub.advance())
    if seen is not None:
        end = seen if end is None else min(end, seen)
    return [pl.agg_trade_row(m, a) for a in m.aggs_in(start, end, from_id, limit)]


def trades(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    m = _symbol(hub, market, q)
    limit = _limit(q, 500, 1000)
    seen = _rest_view(hub, hub.advance())
    recent = [t for t in m.trades if seen is None or t.time <= seen][-limit:]
    return [pl.trade_row(m, t) for t in recent]


SPOT_DEPTH_LIMITS = 5000
FUTURES_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)


def depth(hub: Hub, market: str, q: Mapping[str, str]) -> Any:
    m = _symbol(hub, market, q)
    limit = _int(q, "limit", 100)
    assert limit is not None
    if market == SPOT:
        limit = max(1, min(limit, SPOT_DEPTH_LIMITS))
    elif limit not in FUTURES_DEPTH_LIMITS:
        raise RestError(400, -1130, "Invalid data sent for a parameter.")
    now = hub.advance()
    return pl.depth_snapshot(m, limit, now)


def _one_or_all(hub: Hub, market: str, q: Mapping[str, str],
                row: Callable[[SymbolMarket, int], dict[str, Any]]) -> Any:
    """Binance's ticker shape: one object for ``?symbol=``, else a list of all."""
    now = hub.advance()
    if q.get("symbol"):
        return row(_symbol(hub, market, q), now)
    return [row(m, now) for m in hub.markets[market].values()]


def _ticker_row(m: SymbolMarket, now: int) -> dict[str, Any]:
    ev = pl.ticker_event(m, m.rolling(now), now)
    row = {"symbol": ev["s"], "priceChange": ev["p"], "priceChangePercent": ev["P"], "weightedAvgPrice": ev["w"]}
    if m.market == SPOT:
        row["prevClosePrice"] = ev["x"]
    row.update({"lastPrice": ev["c"], "lastQty": ev["Q"]})
    if m.market == SPOT:
        row.update({"bidPrice": ev["b"], "bidQty": ev["B"], "askPrice": ev["a"], "askQty": ev["A"]})
    row.update({"openPrice": ev["o"], "highPrice": ev["h"], "lowPrice": ev["l"], "volume": ev["v"],
                "quoteVolume": ev["q"], "openTime": ev["O"], "closeTime": ev["C"], "firstId": ev["F"],
                "lastId": ev["L"], "count": ev["n"]})
    return row


def _book_row(m: SymbolMarket, now: int) -> dict[str, Any]:
    f = pl.fmt_of(m)
    bid, ask = m.center - 1, m.center + 1
    return _stamped(m, now, {"symbol": m.spec.symbol, "bidPrice": f.p(bid), "bidQty": f.q(m.bids[bid]),
                             "askPrice": f.p(ask), "askQty": f.q(m.asks[ask])})


def _price_row(m: SymbolMarket, now: int) -> dict[str, Any]:
    return _stamped(m, now, {"symbol": m.spec.symbol, "price": pl.fmt_of(m).p(m.last_price)})


def _stamped(m: SymbolMarket, now: int, row: dict[str, Any]) -> dict[str, Any]:
    """USD-M's ticker rows carry the time; spot's do not."""
    if m.market == USDM:
        row["time"] = now
    return row


def _premium_row(m: SymbolMarket, now: int) -> dict[str, Any]:
    ev = pl.mark_price_event(m, now)
    return {"symbol": ev["s"], "markPrice": ev["p"], "indexPrice": ev["i"], "estimatedSettlePrice": ev["P"],
            "lastFundingRate": ev["r"], "interestRate": "0.00010000", "nextFundingTime": ev["T"],
            "time": now}


# The ticker endpoints: one row shape each, one object for ?symbol= or the list.
ticker_24hr = partial(_one_or_all, row=_ticker_row)
book_ticker = partial(_one_or_all, row=_book_row)
ticker_price = partial(_one_or_all, row=_price_row)
premium_index = partial(_one_or_all, row=_premium_row)


# -- weights ----------------------------------------------------------------------


def spot_depth_weight(q: Mapping[str, str]) -> int:
    limit = _safe_int(q.get("limit"), 100)
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def futures_depth_weight(q: Mapping[str, str]) -> int:
    limit = _safe_int(q.get("limit"), 100)
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


def futures_klines_weight(q: Mapping[str, str]) -> int:
    limit = _safe_int(q.get("limit"), 500)
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def _safe_int(text: str | None, default: int) -> int:
    return int(text) if text and text.isdigit() else default


def _by_symbol(one: int, many: int) -> Callable[[Mapping[str, str]], int]:
    return lambda q: one if q.get("symbol") else many


def _fixed(weight: int) -> Callable[[Mapping[str, str]], int]:
    return lambda q: weight


Route = tuple[Handler, Callable[[Mapping[str, str]], int]]

SPOT_ROUTES: dict[str, Route] = {
    "/api/v3/ping": (ping, _fixed(1)),
    "/api/v3/time": (server_time, _fixed(1)),
    "/api/v3/exchangeInfo": (exchange_info, _fixed(20)),
    "/api/v3/klines": (klines, _fixed(2)),
    "/api/v3/uiKlines": (klines, _fixed(2)),
    "/api/v3/aggTrades": (agg_trades, _fixed(4)),
    "/api/v3/trades": (trades, _fixed(25)),
    "/api/v3/depth": (depth, spot_depth_weight),
    "/api/v3/ticker/24hr": (ticker_24hr, _by_symbol(2, 80)),
    "/api/v3/ticker/bookTicker": (book_ticker, _by_symbol(2, 4)),
    "/api/v3/ticker/price": (ticker_price, _by_symbol(2, 4)),
}

FUTURES_ROUTES: dict[str, Route] = {
    "/fapi/v1/ping": (ping, _fixed(1)),
    "/fapi/v1/time": (server_time, _fixed(1)),
    "/fapi/v1/exchangeInfo": (exchange_info, _fixed(1)),
    "/fapi/v1/klines": (klines, futures_klines_weight),
    "/fapi/v1/aggTrades": (agg_trades, _fixed(20)),
    "/fapi/v1/trades": (trades, _fixed(5)),
    "/fapi/v1/depth": (depth, futures_depth_weight),
    "/fapi/v1/ticker/24hr": (ticker_24hr, _by_symbol(1, 40)),
    "/fapi/v1/ticker/bookTicker": (book_ticker, _by_symbol(2, 5)),
    "/fapi/v1/ticker/price": (ticker_price, _by_symbol(1, 2)),
    "/fapi/v1/premiumIndex": (premium_index, _fixed(1)),
}

# Spot REST details (kline startTime/timeZone, aggTrades span, ticker symbols/type): rest_more.py (h7).
from .rest_more import FUTURES_OVERRIDES, SPOT_OVERRIDES  # noqa: E402
SPOT_ROUTES.update(SPOT_OVERRIDES)
FUTURES_ROUTES.update(FUTURES_OVERRIDES)
