"""Pure parts of the simulator: market model, formatting, limits, live requests, faults."""

from __future__ import annotations

import pytest

from feedsup.sim.decimals import fmt_units, parse_units
from feedsup.sim.faults import FaultError, FaultRegistry, effects_for, validate
from feedsup.sim.intervals import INTERVALS, next_open, open_time
from feedsup.sim.limits import AttemptCounter, SlidingWindow, WeightLimiter
from feedsup.sim.live import LiveState, handle_request
from feedsup.sim.market import SymbolMarket
from feedsup.sim.options import DEFAULT_START_MS
from feedsup.sim.streams import deliverable, parse_stream
from feedsup.sim.symbols import spec_for

T0 = DEFAULT_START_MS
HOUR = 3_600_000


def market(seed: int = 7, kind: str = "spot", rate: float = 5.0) -> SymbolMarket:
    return SymbolMarket(spec_for("BTCUSDT"), kind, seed, T0, rate, rate, 50, 100_000)


def test_same_seed_same_market_however_it_is_advanced():
    one_go, in_steps = market(), market()
    one_go.advance(T0 + HOUR // 4)
    for t in range(T0, T0 + HOUR // 4, 997):
        in_steps.advance(t)
    in_steps.advance(T0 + HOUR // 4)
    assert list(one_go.trades) == list(in_steps.trades)
    assert list(one_go.aggs) == list(in_steps.aggs)
    assert one_go.bids == in_steps.bids and one_go.asks == in_steps.asks
    assert len(one_go.trades) > 1000


def test_different_seeds_differ_and_markets_are_independent():
    a, b, fut = market(1), market(2), market(1, "usdm")
    for m in (a, b, fut):
        m.advance(T0 + 60_000)
    assert [t.time for t in a.trades] != [t.time for t in b.trades]
    assert [t.time for t in a.trades] != [t.time for t in fut.trades]


def test_ids_are_consecutive_and_aggs_cover_trades():
    m = market()
    m.advance(T0 + 600_000)
    trade_ids = [t.id for t in m.trades]
    assert trade_ids == list(range(trade_ids[0], trade_ids[0] + len(trade_ids)))
    aggs = list(m.aggs)
    assert [a.id for a in aggs] == list(range(aggs[0].id, aggs[0].id + len(aggs)))
    by_id = {t.id: t for t in m.trades}
    for prev, agg in zip(aggs, aggs[1:]):
        assert agg.first == prev.last + 1
    for agg in aggs:
        covered = [by_id[i] for i in range(agg.first, agg.last + 1)]
        assert sum(t.qty for t in covered) == agg.qty
        assert {(t.price, t.time, t.buyer_maker) for t in covered} == {(agg.price, agg.time, agg.buyer_maker)}
    times = [t.time for t in m.trades]
    assert times == sorted(times) and times[-1] <= m.now_ms


def test_klines_are_built_from_the_trades():
    m = market()
    m.advance(T0 + 10 * 60_000 + 5)
    for k in m.klines["1m"].klines[:-1]:
        inside = [t for t in m.trades if k.open_time <= t.time <= k.close_time]
        assert k.trades == len(inside)
        if inside:
            assert (k.first_id, k.last_id) == (inside[0].id, inside[-1].id)
            assert k.open == inside[0].price and k.close == inside[-1].price
            assert k.high == max(t.price for t in inside) and k.low == min(t.price for t in inside)
            assert k.volume == sum(t.qty for t in inside)
            assert k.taker_volume == sum(t.qty for t in inside if not t.buyer_maker)
    five = m.klines["5m"].klines[0]
    ones = m.klines["1m"].klines[:5]
    assert five.volume == sum(k.volume for k in ones) and five.trades == sum(k.trades for k in ones)


def test_quiet_intervals_get_empty_klines_at_the_last_close():
    m = market(rate=0.0)
    m.advance(T0 + 3 * 60_000 + 1)
    rows = m.klines["1m"].klines
    assert [k.open_time for k in rows] == [T0, T0 + 60_000, T0 + 120_000, T0 + 180_000]
    assert all(k.trades == 0 and k.first_id == -1 and k.open == k.close == rows[0].close for k in rows)


def test_book_stays_uncrossed_and_updates_replay_to_the_book():
    m = market()
    start_bids, start_asks, start_id = dict(m.bids), dict(m.asks), m.update_id
    m.advance(T0 + 120_000)
    bids, asks = start_bids, start_asks
    expected_id = start_id
    for u in m.updates:
        assert u.id == expected_id + 1
        expected_id = u.id
        for side, price, qty in u.changes:
            book = bids if side == 0 else asks
            if qty:
                book[price] = qty
            else:
                book.pop(price, None)
        assert max(bids) < min(asks)
        assert (u.bid, u.ask) == (max(bids), min(asks))
    assert bids == m.bids and asks == m.asks


@pytest.mark.parametrize("interval", INTERVALS)
def test_interval_alignment(interval):
    t = T0 + 123_456_789
    start = open_time(interval, t)
    end = next_open(interval, start)
    assert start <= t < end
    assert open_time(interval, end) == end and open_time(interval, end - 1) == start


def test_week_opens_on_monday_and_month_on_the_first():
    assert open_time("1w", T0) == 1_766_966_400_000  # Monday 2025-12-29
    assert next_open("1M", T0) == 1_769_904_000_000  # 2026-02-01


def test_decimal_formatting_is_exact():
    assert fmt_units(9_000_012, 2, 8) == "90000.12000000"
    assert fmt_units(123_456_789, 10, 8) == "0.01234567"
    assert fmt_units(-150, 2, 3) == "-1.500"
    assert parse_units("0.00001000", 5) == 1
    with pytest.raises(ValueError):
        parse_units("0.000001", 5)


def test_stream_parsing_and_routes():
    syms = frozenset({"BTCUSDT"})
    spot_kline = parse_stream("btcusdt@kline_1s", "spot", syms)
    assert spot_kline is not None and (spot_kline.kind, spot_kline.interval, spot_kline.period_ms) == ("kline", "1s", 1000)
    assert parse_stream("btcusdt@kline_2s", "spot", syms) is None
    assert parse_stream("xrpusdt@trade", "spot", syms) is None
    assert parse_stream("btcusdt@depth@100ms", "spot", syms).period_ms == 100
    agg = parse_stream("btcusdt@aggTrade", "usdm", syms)
    assert deliverable(agg, "usdm", "market") and not deliverable(agg, "usdm", "public")
    book = parse_stream("btcusdt@bookTicker", "usdm", syms)
    assert deliverable(book, "usdm", "public") and not deliverable(book, "usdm", "market")
    assert parse_stream("btcusdt@trade", "usdm", syms) is None
    assert deliverable(parse_stream("btcusdt@markPrice@1s", "usdm", syms), "usdm", "market")


def test_sliding_window_and_attempts():
    win = SlidingWindow(5, 1.0)
    assert all(win.hit(0.1 * i) for i in range(5))
    assert not win.hit(0.5)
    assert win.hit(1.45)  # the first hits have left the window
    attempts = AttemptCounter(2, 300.0)
    assert attempts.attempt("a", 0) and attempts.attempt("a", 1) and not attempts.attempt("a", 2)
    assert attempts.attempt("b", 2)
    assert attempts.attempt("a", 301.5)


def test_weight_limiter_429_then_418_then_recovers():
    lim = WeightLimiter(limit=10, window=60.0, ban_after=2, ban_seconds=120.0)
    assert lim.charge("ip", 6, 0.0).status == 200
    over = lim.charge("ip", 6, 1.0)
    assert (over.status, over.retry_after) == (429, 59)
    assert lim.charge("ip", 1, 2.0).status == 429       # first strike
    banned = lim.charge("ip", 1, 3.0)
    assert (banned.status, banned.retry_after) == (418, 120)
    assert lim.charge("ip", 1, 100.0).status == 418
    assert lim.charge("ip", 1, 124.0).status == 200
    assert lim.charge("other", 10, 1.0).status == 200


def live(text, streams=(), combined=False, max_streams=3):
    return handle_request(text, LiveState(list(streams), combined, max_streams))


def test_live_requests():
    out = live('{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@trade"],"id":1}')
    assert out.reply == {"result": None, "id": 1} and out.subscribe == ["btcusdt@trade"]
    assert live('{"method":"LIST_SUBSCRIPTIONS","id":"x"}', ["a"]).reply == {"result": ["a"], "id": "x"}
    assert live('{"method":"SET_PROPERTY","params":["combined",true],"id":2}').combined is True
    assert live('{"method":"GET_PROPERTY","params":["combined"],"id":3}', combined=True).reply["result"] is True
    assert live('{"method":"SET_PROPERTY","params":["combined","yes"],"id":4}').reply["error"]["code"] == 1
    assert live('{"method":"GET_PROPERTY","params":["nope"],"id":5}').reply["error"]["code"] == 0
    assert live('{"method":"FOO","id":6}').reply["error"]["code"] == 2
    assert live('{"method":"SUBSCRIBE","params":"x","id":7}').reply["error"]["code"] == 2
    # Request ids are 64-bit signed integers (web-socket-streams.md "Live Subscribing").
    assert live('{"method":"LIST_SUBSCRIPTIONS","id":-9223372036854775808}').reply["id"] == -2**63
    assert live('{"method":"LIST_SUBSCRIPTIONS","id":9223372036854775808}').reply["error"]["code"] == 2
    assert live('{"method":').reply == {"error": {"code": 3, "msg": live('{"method":').reply["error"]["msg"]},
                                        "id": None}
    too_many = live('{"method":"SUBSCRIBE","params":["a","b"],"id":8}', ["c", "d"])
    assert too_many.reply["error"]["code"] == 2 and not too_many.subscribe


def test_fault_validation_and_effects():
    with pytest.raises(FaultError):
        validate("explode", {}, {})
    with pytest.raises(FaultError):
        validate("close", {"conn": "one"}, {})
    with pytest.raises(FaultError):
        validate("malformed", {}, {"variant": "weird"})
    assert validate("close", {}, {})["code"] == 1001
    reg = FaultRegistry()
    reg.create("stall", {"conn": 2}, {"duration": 5}, now=0.0)
    reg.create("data_stall", {"stream": "s"}, {}, now=0.0)
    reg.create("latency", {}, {"ms": 250}, now=0.0)
    eff = effects_for(reg.active, 2, ["s"], 1.0)
    assert eff.stalled and eff.stalled_streams == {"s"} and eff.latency == 0.25
    assert not effects_for(reg.active, 3, [], 1.0).stalled
    reg.expire(6.0)
    assert [f.kind for f in reg.active] == ["data_stall", "latency"]
    err = reg.create("rest_error", {}, {"status": 500, "count": 2}, now=0.0)
    assert reg.take_rest_error(1.0) is err and reg.take_rest_error(1.0) is err and reg.take_rest_error(1.0) is None
    reg.expire(1.0)  # the used-up rest_error leaves
    assert reg.clear() == 2


def test_a_halt_cleared_early_resumes_klines_where_trading_resumes():
    from feedsup.sim.market import SymbolMarket
    from feedsup.sim.symbols import spec_for
    m = SymbolMarket(spec_for("BTCUSDT"), "spot", 3, 1_767_225_600_000, 20.0, 5.0, 20, 100_000)
    t = 1_767_225_600_000
    m.advance(t + 30_000)
    m.halt(t + 30_001, t + 600_000)            # ten minutes planned ...
    m.advance(t + 150_000)
    m.end_halts(t + 150_000)                   # ... cleared after two
    m.advance(t + 400_000)
    series = m.klines["1m"].klines
    trades_by_minute: dict[int, int] = {}
    for tr in m.trades:
        trades_by_minute[tr.time // 60_000 * 60_000] = trades_by_minute.get(tr.time // 60_000 * 60_000, 0) + 1
    assert {k.open_time: k.trades for k in series if k.trades} == trades_by_minute
    assert t + 60_000 not in {k.open_time for k in series}, "the wholly halted minute has no kline"
