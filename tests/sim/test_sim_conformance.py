"""Every stream and REST payload against Binance's documented field lists and types."""

from __future__ import annotations

import re

import pytest

from simhelpers import collect, get

INT, BOOL, STR = "int", "bool", "str"
SPOT_DEC = re.compile(r"-?\d+\.\d{8}")
FUT_PRICE = re.compile(r"-?\d+\.\d{2}")       # BTCUSDT pricePrecision 2
FUT_QTY = re.compile(r"-?\d+\.\d{3}")         # BTCUSDT quantityPrecision 3
DEC = re.compile(r"-?\d+(\.\d+)?")


def check(obj, schema, where=""):
    """``schema`` maps field -> INT | BOOL | STR | regex | nested schema | ('levels', regex)."""
    assert isinstance(obj, dict), where
    assert set(obj) == set(schema), f"{where}: fields {sorted(obj)} != {sorted(schema)}"
    for key, kind in schema.items():
        value, at = obj[key], f"{where}.{key}"
        if kind == INT:
            assert isinstance(value, int) and not isinstance(value, bool), at
        elif kind == BOOL:
            assert isinstance(value, bool), at
        elif kind == STR:
            assert isinstance(value, str), at
        elif isinstance(kind, re.Pattern):
            assert isinstance(value, str) and kind.fullmatch(value), f"{at}={value!r}"
        elif isinstance(kind, tuple):
            assert isinstance(value, list), at
            for level in value:
                price_re, qty_re = kind[1], kind[-1]
                assert len(level) == 2 and all(isinstance(x, str) for x in level), at
                assert price_re.fullmatch(level[0]) and qty_re.fullmatch(level[1]), f"{at}={level}"
        elif isinstance(kind, dict):
            check(value, kind, at)
        else:
            assert value == kind, f"{at}={value!r}"


def kline_schema(dec):
    return {"e": "kline", "E": INT, "s": STR, "k": {
        "t": INT, "T": INT, "s": STR, "i": STR, "f": INT, "L": INT, "o": dec, "c": dec, "h": dec, "l": dec,
        "v": dec, "n": INT, "x": BOOL, "q": dec, "V": dec, "Q": dec, "B": "0"}}


D = SPOT_DEC
SPOT_STREAMS = {
    "btcusdt@trade": {"e": "trade", "E": INT, "s": STR, "t": INT, "p": D, "q": D, "T": INT, "m": BOOL, "M": BOOL},
    "btcusdt@aggTrade": {"e": "aggTrade", "E": INT, "s": STR, "a": INT, "p": D, "q": D, "f": INT, "l": INT,
                         "T": INT, "m": BOOL, "M": BOOL},
    "btcusdt@bookTicker": {"u": INT, "s": STR, "b": D, "B": D, "a": D, "A": D},
    "btcusdt@miniTicker": {"e": "24hrMiniTicker", "E": INT, "s": STR, "c": D, "o": D, "h": D, "l": D, "v": D, "q": D},
    "btcusdt@ticker": {"e": "24hrTicker", "E": INT, "s": STR, "p": D, "P": DEC, "w": D, "x": D, "c": D, "Q": D,
                       "b": D, "B": D, "a": D, "A": D, "o": D, "h": D, "l": D, "v": D, "q": D, "O": INT, "C": INT,
                       "F": INT, "L": INT, "n": INT},
    "btcusdt@kline_1s": kline_schema(D),
    "btcusdt@kline_1m": kline_schema(D),
    "btcusdt@depth": {"e": "depthUpdate", "E": INT, "s": STR, "U": INT, "u": INT, "b": ("levels", D),
                      "a": ("levels", D)},
    "btcusdt@depth@100ms": {"e": "depthUpdate", "E": INT, "s": STR, "U": INT, "u": INT, "b": ("levels", D),
                            "a": ("levels", D)},
    "btcusdt@depth5@100ms": {"lastUpdateId": INT, "bids": ("levels", D), "asks": ("levels", D)},
}

P, Q = FUT_PRICE, FUT_QTY
FUTURES_MARKET = {
    "btcusdt@aggTrade": {"e": "aggTrade", "E": INT, "s": STR, "a": INT, "p": P, "q": Q, "f": INT, "l": INT,
                         "T": INT, "m": BOOL},
    "btcusdt@kline_1m": kline_schema(DEC),
    "btcusdt@markPrice@1s": {"e": "markPriceUpdate", "E": INT, "s": STR, "p": D, "i": D, "P": D, "r": D, "T": INT},
    "btcusdt@markPrice": {"e": "markPriceUpdate", "E": INT, "s": STR, "p": D, "i": D, "P": D, "r": D, "T": INT},
    "btcusdt@miniTicker": {"e": "24hrMiniTicker", "E": INT, "s": STR, "c": P, "o": P, "h": P, "l": P, "v": Q,
                           "q": DEC},
    "btcusdt@ticker": {"e": "24hrTicker", "E": INT, "s": STR, "p": P, "P": DEC, "w": P, "c": P, "Q": Q, "o": P,
                       "h": P, "l": P, "v": Q, "q": DEC, "O": INT, "C": INT, "F": INT, "L": INT, "n": INT},
}
FUT_BOOK = {"e": "bookTicker", "u": INT, "E": INT, "T": INT, "s": STR, "b": P, "B": Q, "a": P, "A": Q}
FUTURES_PUBLIC = {
    "btcusdt@bookTicker": FUT_BOOK,
    "!bookTicker": FUT_BOOK,
    "btcusdt@depth@100ms": {"e": "depthUpdate", "E": INT, "T": INT, "s": STR, "U": INT, "u": INT, "pu": INT,
                            "b": ("levels", P, Q), "a": ("levels", P, Q)},
    "btcusdt@depth": {"e": "depthUpdate", "E": INT, "T": INT, "s": STR, "U": INT, "u": INT, "pu": INT,
                      "b": ("levels", P, Q), "a": ("levels", P, Q)},
}


def sample_streams(ws_factory, url, names, timeout=8.0):
    ws = ws_factory(url + "?streams=" + "/".join(names))
    msgs = collect(ws, lambda m: {x["stream"] for x in m} >= set(names), timeout)
    by_stream = {}
    for m in msgs:
        by_stream.setdefault(m["stream"], []).append(m["data"])
    return by_stream


def test_spot_stream_payloads(sim, ws_factory):
    names = list(SPOT_STREAMS) + ["!miniTicker@arr"]
    got = sample_streams(ws_factory, sim.ws_url + "/stream", names)
    for name, schema in SPOT_STREAMS.items():
        for event in got[name]:
            check(event, schema, name)
    for arr in got["!miniTicker@arr"]:
        assert {e["s"] for e in arr} == {"BTCUSDT", "ETHUSDT"}
        for e in arr:
            check(e, SPOT_STREAMS["btcusdt@miniTicker"], "!miniTicker@arr")
    assert all(e["k"]["i"] == "1s" and e["s"] == "BTCUSDT" for e in got["btcusdt@kline_1s"])


def test_spot_raw_stream_is_unwrapped(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    events = collect(ws, lambda m: len(m) >= 3)
    for e in events:
        check(e, SPOT_STREAMS["btcusdt@aggTrade"], "raw")


def test_futures_market_route_payloads(sim, ws_factory):
    got = sample_streams(ws_factory, sim.ws_url + "/market/stream", list(FUTURES_MARKET) + ["!miniTicker@arr"])
    for name, schema in FUTURES_MARKET.items():
        for event in got[name]:
            check(event, schema, name)
    for arr in got["!miniTicker@arr"]:
        assert {e["s"] for e in arr} == {"BTCUSDT", "ETHUSDT"}
        for e in arr:
            check(e, FUTURES_MARKET["btcusdt@miniTicker"], "!miniTicker@arr")


def test_futures_public_route_payloads(sim, ws_factory):
    got = sample_streams(ws_factory, sim.ws_url + "/public/stream", list(FUTURES_PUBLIC))
    for name, schema in FUTURES_PUBLIC.items():
        for event in got[name]:
            check(event, schema, name)
    assert {e["s"] for e in got["!bookTicker"]} <= {"BTCUSDT", "ETHUSDT"}


KLINE_ROW = [INT, D, D, D, D, D, INT, D, INT, D, D, "0"]


def check_row(row, layout):
    assert len(row) == len(layout)
    for value, kind in zip(row, layout):
        check({"x": value}, {"x": kind})


def test_spot_rest_payloads(sim):
    base = sim.base_url + "/api/v3"
    assert get(base + "/ping").body == {}
    check(get(base + "/time").body, {"serverTime": INT})
    rows = get(base + "/klines", symbol="BTCUSDT", interval="1m").body
    assert rows
    for row in rows:
        check_row(row, KLINE_ROW)
    for agg in get(base + "/aggTrades", symbol="BTCUSDT", limit=20).body:
        check(agg, {"a": INT, "p": D, "q": D, "f": INT, "l": INT, "T": INT, "m": BOOL, "M": BOOL})
    for trade in get(base + "/trades", symbol="BTCUSDT", limit=20).body:
        check(trade, {"id": INT, "price": D, "qty": D, "quoteQty": D, "time": INT, "isBuyerMaker": BOOL,
                      "isBestMatch": BOOL})
    check(get(base + "/depth", symbol="BTCUSDT", limit=10).body,
          {"lastUpdateId": INT, "bids": ("levels", D), "asks": ("levels", D)})
    check(get(base + "/ticker/24hr", symbol="BTCUSDT").body, {
        "symbol": STR, "priceChange": D, "priceChangePercent": DEC, "weightedAvgPrice": D, "prevClosePrice": D,
        "lastPrice": D, "lastQty": D, "bidPrice": D, "bidQty": D, "askPrice": D, "askQty": D, "openPrice": D,
        "highPrice": D, "lowPrice": D, "volume": D, "quoteVolume": D, "openTime": INT, "closeTime": INT,
        "firstId": INT, "lastId": INT, "count": INT})


def test_spot_exchange_info(sim):
    base = sim.base_url + "/api/v3/exchangeInfo"
    info = get(base).body
    assert set(info) == {"timezone", "serverTime", "rateLimits", "exchangeFilters", "symbols"}
    assert {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000} in info["rateLimits"]
    btc = get(base, symbol="BTCUSDT").body["symbols"]
    assert [s["symbol"] for s in btc] == ["BTCUSDT"]
    sym = btc[0]
    for key in ("status", "baseAsset", "quoteAsset", "baseAssetPrecision", "quoteAssetPrecision", "orderTypes",
                "filters", "permissionSets", "isSpotTradingAllowed"):
        assert key in sym
    assert (sym["baseAsset"], sym["quoteAsset"], sym["status"]) == ("BTC", "USDT", "TRADING")
    price_filter = next(f for f in sym["filters"] if f["filterType"] == "PRICE_FILTER")
    assert price_filter["tickSize"] == "0.01000000"
    both = get(base, symbols='["BTCUSDT","ETHUSDT"]').body["symbols"]
    assert [s["symbol"] for s in both] == ["BTCUSDT", "ETHUSDT"]


@pytest.mark.parametrize("path,params,status,code", [
    ("/api/v3/exchangeInfo", {"symbol": "NOPEUSDT"}, 400, -1121),
    ("/api/v3/klines", {"symbol": "NOPEUSDT", "interval": "1m"}, 400, -1121),
    ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "7m"}, 400, -1120),
    ("/api/v3/klines", {"symbol": "BTCUSDT"}, 400, -1102),
    ("/api/v3/aggTrades", {}, 400, -1102),
    ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": "x"}, 400, -1100),
    ("/api/v3/depth", {"symbol": "nope"}, 400, -1121),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 7}, 400, -1130),
])
def test_rest_errors(sim, path, params, status, code):
    reply = get(sim.base_url + path, **params)
    assert reply.status == status
    assert reply.body["code"] == code and isinstance(reply.body["msg"], str)
    if code == -1121:
        assert reply.body == {"code": -1121, "msg": "Invalid symbol."}


def test_futures_rest_payloads(sim):
    base = sim.base_url + "/fapi/v1"
    assert get(base + "/ping").body == {}
    check(get(base + "/time").body, {"serverTime": INT})
    rows = get(base + "/klines", symbol="BTCUSDT", interval="1m").body
    for row in rows:
        check_row(row, [INT, P, P, P, P, Q, INT, DEC, INT, Q, DEC, "0"])
    for agg in get(base + "/aggTrades", symbol="BTCUSDT", limit=20).body:
        check(agg, {"a": INT, "p": P, "q": Q, "f": INT, "l": INT, "T": INT, "m": BOOL})
    for trade in get(base + "/trades", symbol="BTCUSDT", limit=5).body:
        check(trade, {"id": INT, "price": P, "qty": Q, "quoteQty": DEC, "time": INT, "isBuyerMaker": BOOL})
    check(get(base + "/depth", symbol="BTCUSDT", limit=5).body,
          {"lastUpdateId": INT, "E": INT, "T": INT, "bids": ("levels", P, Q), "asks": ("levels", P, Q)})
    check(get(base + "/premiumIndex", symbol="BTCUSDT").body, {
        "symbol": STR, "markPrice": D, "indexPrice": D, "estimatedSettlePrice": D, "lastFundingRate": D,
        "interestRate": D, "nextFundingTime": INT, "time": INT})
    info = get(base + "/exchangeInfo").body
    assert info["futuresType"] == "U_MARGINED"
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    assert (btc["contractType"], btc["pricePrecision"], btc["quantityPrecision"]) == ("PERPETUAL", 2, 3)


def test_every_kline_interval_streams(sim, ws_factory):
    from feedsup.sim.intervals import INTERVALS
    names = [f"btcusdt@kline_{i}" for i in INTERVALS]
    got = sample_streams(ws_factory, sim.ws_url + "/stream", names)
    for interval, name in zip(INTERVALS, names):
        for event in got[name]:
            check(event, kline_schema(D), name)
            assert event["k"]["i"] == interval and event["k"]["t"] <= event["E"]


def test_all_market_and_partial_futures_streams(sim, ws_factory):
    got = sample_streams(ws_factory, sim.ws_url + "/market/stream", ["!markPrice@arr@1s", "!ticker@arr"])
    for arr in got["!markPrice@arr@1s"]:
        for e in arr:
            check(e, FUTURES_MARKET["btcusdt@markPrice"], "!markPrice@arr")
    for arr in got["!ticker@arr"]:
        assert {e["s"] for e in arr} == {"BTCUSDT", "ETHUSDT"}
    partial = sample_streams(ws_factory, sim.ws_url + "/public/stream", ["btcusdt@depth5@100ms"])
    for e in partial["btcusdt@depth5@100ms"]:
        check(e, FUTURES_PUBLIC["btcusdt@depth"], "depth5")
        assert len(e["b"]) == len(e["a"]) == 5


def test_ticker_rest_payloads(sim):
    for base, fut in ((sim.base_url + "/api/v3", False), (sim.base_url + "/fapi/v1", True)):
        price = get(base + "/ticker/price", symbol="BTCUSDT").body
        assert set(price) == ({"symbol", "price", "time"} if fut else {"symbol", "price"})
        book = get(base + "/ticker/bookTicker").body
        assert {b["symbol"] for b in book} == {"BTCUSDT", "ETHUSDT"}
        assert all(set(b) >= {"symbol", "bidPrice", "bidQty", "askPrice", "askQty"} for b in book)
        day = get(base + "/ticker/24hr").body
        assert len(day) == 2 and all(isinstance(r["count"], int) and isinstance(r["lastPrice"], str) for r in day)
