"""What was streamed matches REST and the simulator's own book for the same period."""

from __future__ import annotations

from decimal import Decimal

from simhelpers import collect, get, wait_until

from feedsup.sim.market import SymbolMarket
from feedsup.sim.payloads import fmt_of
from feedsup.sim.symbols import spec_for


def test_agg_trades_stream_matches_rest(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    streamed = collect(ws, lambda m: len(m) >= 40)
    ids = [e["a"] for e in streamed]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    for prev, cur in zip(streamed, streamed[1:]):
        assert cur["f"] == prev["l"] + 1
    rows = get(sim.base_url + "/api/v3/aggTrades", symbol="BTCUSDT", fromId=ids[0], limit=len(ids)).body
    assert rows == [{k: e[k] for k in ("a", "p", "q", "f", "l", "T", "m", "M")} for e in streamed]
    # startTime/endTime select the same rows.
    by_time = get(sim.base_url + "/api/v3/aggTrades", symbol="BTCUSDT", startTime=streamed[0]["T"],
                  endTime=streamed[-1]["T"], limit=1000).body
    assert [r["a"] for r in by_time if ids[0] <= r["a"] <= ids[-1]] == ids


def test_trade_stream_matches_rest_and_agg_ranges(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade")
    msgs = collect(ws, lambda m: sum(x["stream"] == "btcusdt@aggTrade" for x in m) >= 20)
    trades = [m["data"] for m in msgs if m["stream"] == "btcusdt@trade"]
    aggs = [m["data"] for m in msgs if m["stream"] == "btcusdt@aggTrade"]
    tids = [t["t"] for t in trades]
    assert tids == list(range(tids[0], tids[0] + len(tids)))
    covered = [i for a in aggs for i in range(a["f"], a["l"] + 1)]
    assert set(covered) <= set(tids) | set(range(tids[-1] + 1, tids[-1] + 10))
    recent = {r["id"]: r for r in get(sim.base_url + "/api/v3/trades", symbol="BTCUSDT", limit=1000).body}
    for t in trades:
        row = recent[t["t"]]
        assert (row["price"], row["qty"], row["time"], row["isBuyerMaker"]) == (t["p"], t["q"], t["T"], t["m"])


def _closed_klines_match(sim, ws_factory, route, rest_path, interval, count):
    ws = ws_factory(f"{sim.ws_url}{route}/ws/btcusdt@kline_{interval}")
    events = collect(ws, lambda m: sum(e["k"]["x"] for e in m) >= count, timeout=8)
    closed = [e["k"] for e in events if e["k"]["x"]]
    opens = [k["t"] for k in closed]
    assert opens == sorted(set(opens))
    for prev, cur in zip(closed, closed[1:]):
        assert cur["t"] == prev["T"] + 1  # one final kline per interval, none skipped
    rows = get(sim.base_url + rest_path, symbol="BTCUSDT", interval=interval, startTime=opens[0],
               limit=len(opens)).body
    assert [r[0] for r in rows] == opens
    for row, k in zip(rows, closed):
        assert row == [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], "0"]
    for e in events:
        assert e["E"] >= e["k"]["t"]
    # An open kline's last update agrees with the final one on the fields it
    # had: once it holds a trade, the same open and first trade, and a range
    # and volumes the final one holds. (Before its first trade an open kline
    # shows the previous close as its price.)
    finals = {k["t"]: k for k in closed}
    last_open = {e["k"]["t"]: e["k"] for e in events if not e["k"]["x"] and e["k"]["t"] in finals}
    assert any(k["n"] for k in last_open.values()), "an open update with trades precedes some final kline"
    for t, k in last_open.items():
        final = finals[t]
        assert (k["i"], k["T"]) == (final["i"], final["T"]), (k, final)
        if k["n"]:
            assert (k["o"], k["f"]) == (final["o"], final["f"]) and k["L"] <= final["L"], (k, final)
            assert Decimal(final["l"]) <= Decimal(k["l"]) <= Decimal(k["h"]) <= Decimal(final["h"]), (k, final)
        assert k["n"] <= final["n"] and Decimal(k["v"]) <= Decimal(final["v"]), (k, final)
        assert Decimal(k["q"]) <= Decimal(final["q"]) and Decimal(k["V"]) <= Decimal(final["V"]), (k, final)


def test_spot_closed_klines_match_rest(sim, ws_factory):
    _closed_klines_match(sim, ws_factory, "", "/api/v3/klines", "1s", 5)


def test_spot_minute_klines_match_rest(make_sim, ws_factory):
    fast = make_sim(speed=600.0, trade_rate=2.0, book_rate=1.0)
    _closed_klines_match(fast, ws_factory, "", "/api/v3/klines", "1m", 3)


def test_futures_closed_klines_match_rest(sim, ws_factory):
    _closed_klines_match(sim, ws_factory, "/market", "/fapi/v1/klines", "1s", 4)


def test_klines_rest_windows(sim):
    base = sim.base_url + "/api/v3/klines"
    rows = wait_until(lambda: [r for r in [get(base, symbol="BTCUSDT", interval="1s", limit=1000).body]
                               if len(r) >= 5], what="five 1s klines")[0]
    assert len(rows) <= 1000
    last = rows[-1][0]
    tail = get(base, symbol="BTCUSDT", interval="1s", endTime=last, limit=3).body
    assert [r[0] for r in tail] == [r[0] for r in rows[-3:]]
    assert len(get(base, symbol="BTCUSDT", interval="1s", limit=2).body) == 2


def _replayed_book(sim, market, update_id):
    """Replay the seeded market in-process to ``update_id``: the simulator's own book."""
    o = sim.options
    m = SymbolMarket(spec_for("BTCUSDT"), market, o.seed, o.start_ms, o.trade_rate, o.book_rate,
                     o.book_levels, o.history)
    m.advance_to_update(update_id)
    assert m.update_id == update_id
    f = fmt_of(m)
    return ({f.p(p): f.q(q) for p, q in m.bids.items()}, {f.p(p): f.q(q) for p, q in m.asks.items()})


def _apply(book, levels):
    for price, qty in levels:
        if float(qty) == 0:
            book.pop(price, None)
        else:
            book[price] = qty


def test_spot_depth_chain_rebuilds_the_book(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@depth@100ms")
    buffered = collect(ws, lambda m: len(m) >= 1)
    first_u = buffered[0]["U"]
    snap = get(sim.base_url + "/api/v3/depth", symbol="BTCUSDT", limit=5000).body
    while snap["lastUpdateId"] < first_u:
        snap = get(sim.base_url + "/api/v3/depth", symbol="BTCUSDT", limit=5000).body
    bids, asks = dict(snap["bids"]), dict(snap["asks"])
    book_id = snap["lastUpdateId"]
    buffered += collect(ws, lambda m: len(m) >= 30)
    applied = 0
    for event in buffered:
        if event["u"] <= book_id:
            continue
        assert event["U"] <= book_id + 1, "gap in the depth chain"
        _apply(bids, event["b"])
        _apply(asks, event["a"])
        book_id = event["u"]
        applied += 1
    assert applied >= 10
    assert (bids, asks) == _replayed_book(sim, "spot", book_id)
    best_bid = max(float(p) for p in bids)
    assert best_bid < min(float(p) for p in asks)


def test_futures_depth_chain_with_pu(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/public/ws/btcusdt@depth@100ms")
    buffered = collect(ws, lambda m: len(m) >= 1)
    snap = get(sim.base_url + "/fapi/v1/depth", symbol="BTCUSDT", limit=1000).body
    bids, asks = dict(snap["bids"]), dict(snap["asks"])
    last = snap["lastUpdateId"]
    buffered += collect(ws, lambda m: len(m) >= 30)
    events = [e for e in buffered if e["u"] >= last]
    first = events[0]
    assert first["U"] <= last <= first["u"]
    prev_u = None
    for event in events:
        if prev_u is not None:
            assert event["pu"] == prev_u
        _apply(bids, event["b"])
        _apply(asks, event["a"])
        prev_u = event["u"]
    assert (bids, asks) == _replayed_book(sim, "usdm", prev_u)


def test_book_ticker_agrees_with_depth_ids(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/stream?streams=btcusdt@bookTicker/btcusdt@depth@100ms")
    msgs = collect(ws, lambda m: sum(x["stream"] == "btcusdt@bookTicker" for x in m) >= 20)
    us = [m["data"]["u"] for m in msgs if m["stream"] == "btcusdt@bookTicker"]
    assert us == sorted(us) and len(set(us)) == len(us)
    for m in msgs:
        if m["stream"] == "btcusdt@bookTicker":
            assert float(m["data"]["b"]) < float(m["data"]["a"])


def test_market_does_not_depend_on_clients(make_sim, ws_factory):
    busy, idle = make_sim(seed=5, speed=120.0), make_sim(seed=5, speed=120.0)
    ws = ws_factory(busy.ws_url + "/stream?streams=btcusdt@depth@100ms/btcusdt@kline_1s/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 50)

    def first_aggs(sim):
        return get(sim.base_url + "/api/v3/aggTrades", symbol="BTCUSDT", startTime=sim.options.start_ms, limit=40).body

    wait_until(lambda: len(first_aggs(busy)) == 40 and len(first_aggs(idle)) == 40, what="40 trades on both")
    assert first_aggs(busy) == first_aggs(idle)
