"""Backfill planning, paging and merging (pure, no I/O).

REST is played by small fakes that answer like Binance: aggTrades from an
id, klines from a start time (the newest kline still open), recent trades.
"""

from __future__ import annotations

import pytest

from feedsup.binance import backfill
from feedsup.binance.backfill import PAGE, Gap, Item, Plan, Step, merge
from feedsup.binance.rest import classify, request_weight

M = 60_000
T = 1_767_225_600_000   # a minute boundary


def agg_row(a: int) -> dict:
    return {"a": a, "p": "1.0", "q": "2.0", "f": a * 2, "l": a * 2 + 1, "T": 1000 + a, "m": False, "M": True}


def aggs_from(first_existing: int, last_existing: int):
    def answer(params: dict) -> list[dict]:
        start = max(params["fromId"], first_existing)
        return [agg_row(a) for a in range(start, min(last_existing, start + params["limit"] - 1) + 1)]
    return answer


def kline_row(t: int) -> list:
    return [t, "1", "2", "0.5", "1.5", "10", t + M - 1, "15", 3, "4", "6", "0"]


def klines_until(open_now: int):
    """Binance: klines opening at or after startTime, the last one open."""
    def answer(params: dict) -> list[list]:
        start = -(-params["startTime"] // M) * M
        return [kline_row(t) for t in range(start, open_now + 1, M)][: params["limit"]]
    return answer


def run(plan: Plan, answer, max_pages: int = 50) -> list[dict]:
    asked = []
    while (params := plan.request()) is not None and len(asked) < max_pages:
        asked.append(params)
        step = plan.on_page(answer(params))
        if step is Step.LAGGING:
            break
    return asked


def items(entries) -> list[Item]:
    return [e for e in entries if isinstance(e, Item)]


def gaps(entries) -> list[Gap]:
    return [e for e in entries if isinstance(e, Gap)]


# -- aggTrade ------------------------------------------------------------------

def test_agg_pages_of_1000_until_the_first_live_id():
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=100)
    plan.first_live = 2601
    asked = run(plan, aggs_from(1, 3000))
    assert [p["fromId"] for p in asked] == [101, 1101, 2101]
    assert all(p["limit"] == PAGE for p in asked)
    out = merge(plan, 2601)
    assert [it.major for it in items(out)] == list(range(101, 2601))
    assert gaps(out) == []
    first = items(out)[0].data
    assert first == {"symbol": "BTCUSDT", "agg_id": 101, "price": "1.0", "qty": "2.0", "first_trade_id": 202,
                     "last_trade_id": 203, "time": 1101, "buyer_maker": False, "event_time": None}


def test_agg_resume_exactly_before_the_first_live_id_needs_nothing():
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=500)
    plan.first_live = 501
    run(plan, aggs_from(1, 800))
    assert merge(plan, 501) == []


def test_agg_overlap_with_the_live_stream_is_cut_at_the_first_live_id():
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    run(plan, aggs_from(1, 40))        # no live event known yet: REST to the present
    assert plan.step is Step.DONE
    out = merge(plan, first_live=31)    # live frames start at 31, REST went to 40
    assert [it.major for it in items(out)] == list(range(11, 31))
    assert gaps(out) == []


def test_agg_empty_range_when_nothing_happened():
    plan = Plan("usdm", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=40)
    run(plan, aggs_from(1, 40))
    assert plan.path == "/fapi/v1/aggTrades"
    assert merge(plan, None) == []


def test_agg_rest_lagging_behind_live_asks_again_then_reports_a_gap():
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    plan.first_live = 60
    run(plan, aggs_from(1, 40))
    assert plan.step is Step.LAGGING
    assert plan.request() == {"symbol": "BTCUSDT", "fromId": 41, "limit": PAGE}
    out = merge(plan, 60, failure="backfill failed: deadline")
    assert [it.major for it in items(out)][-1] == 40
    assert gaps(out) == [Gap("backfill failed: deadline", 41, 59, 1040, None)]
    assert out[-1] == gaps(out)[0]      # the gap sits where the hole is


def test_agg_ids_rest_no_longer_serves_are_a_gap_in_place():
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    run(plan, aggs_from(21, 30))       # history starts at 21
    out = merge(plan, first_live=31)
    assert out[0] == Gap("not served by REST", 11, 20, None, 1021)
    assert [it.major for it in items(out)] == list(range(21, 31))


def test_agg_rest_failure_with_no_live_event_leaves_an_open_ended_gap():
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    assert merge(plan, None, failure="banned") == [Gap("banned", 11, None, None, None)]


# -- kline ---------------------------------------------------------------------

def test_kline_resume_after_a_closed_kline_fetches_the_closed_ones_only():
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    plan.first_live = T + 5 * M                   # the first live update is the open kline
    asked = run(plan, klines_until(T + 5 * M))
    assert asked[0] == {"symbol": "BTCUSDT", "interval": "1m", "startTime": T + 1, "limit": PAGE}
    out = merge(plan, T + 5 * M)
    assert [it.major for it in items(out)] == [T + M, T + 2 * M, T + 3 * M, T + 4 * M]
    assert gaps(out) == []
    it = items(out)[0]
    assert (it.minor, it.data["closed"], it.data["close_time"]) == (T + 2 * M - 1, True, T + 2 * M - 1)
    assert set(it.data) == {"symbol", "interval", "open_time", "close_time", "open", "high", "low", "close",
                            "volume", "quote_volume", "trades", "closed", "event_time", "first_trade_id",
                            "last_trade_id", "taker_buy_volume", "taker_buy_quote_volume"}


def test_kline_resume_at_an_open_kline_refetches_that_kline_closed():
    # The parent's mark for a topic whose newest frame was open kline T is T - 1.
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T - 1, interval="1m")
    assert backfill.first_open_after(T - 1, "1m") == T
    plan.first_live = T + 2 * M
    run(plan, klines_until(T + 2 * M))
    out = merge(plan, T + 2 * M)
    assert [it.major for it in items(out)] == [T, T + M]
    assert gaps(out) == []


def test_kline_the_newest_rest_row_is_open_and_never_backfilled():
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    run(plan, klines_until(T + 3 * M))            # no live event yet
    assert plan.step is Step.DONE
    assert [it.major for it in items(merge(plan, None))] == [T + M, T + 2 * M]


def test_kline_more_than_1000_pages_by_start_time():
    plan = Plan("usdm", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    live = T + 2500 * M
    plan.first_live = live
    asked = run(plan, klines_until(live))
    # each page starts at the previous page's newest row, which REST must show closed
    assert [p["startTime"] for p in asked] == [T + 1, T + 1000 * M, T + 1999 * M]
    got = [it.major for it in items(merge(plan, live))]
    assert got == list(range(T + M, live, M))


def test_kline_missing_minutes_are_no_candles_not_a_gap():
    # REST is the exchange's record: a minute it skips between two rows it
    # serves had no trades to make a kline (a trading halt). A fact, not a loss.
    def answer(params: dict) -> list[list]:
        return [kline_row(t) for t in (T + M, T + 4 * M, T + 5 * M) if t >= params["startTime"] - M + 1]
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    plan.first_live = T + 5 * M
    run(plan, answer)
    out = merge(plan, first_live=T + 5 * M)
    assert gaps(out) == []
    assert [it.major for it in items(out)] == [T + M, T + 4 * M]
    assert backfill.covered_through(plan, out) == T + 5 * M - 1


def test_kline_halt_no_rest_rows_up_to_the_first_live_kline_ends_the_backfill():
    # Halted from T + M until T + 10 M: REST has nothing between the resume
    # mark and the live kline, and shows the live kline itself. The backfill
    # is complete; it must not be planned again with the same inputs.
    def answer(params: dict) -> list[list]:
        return [kline_row(t) for t in (T, T + 10 * M) if t >= params["startTime"]]
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    plan.first_live = T + 10 * M
    run(plan, answer)
    assert plan.step is Step.DONE
    out = merge(plan, first_live=T + 10 * M)
    assert out == []
    mark = backfill.covered_through(plan, out)
    assert backfill.Continuity.follows(mark, T + 10 * M), "the live kline joins: no new hole, no loop"


def test_kline_halt_during_the_backfill_with_no_live_kline_yet():
    # Connected during the halt: nothing live, REST's newest row is the kline
    # the halt began in. Not published yet (nothing proves REST's copy final),
    # and the mark lets the first live kline after the halt trigger one more
    # fetch, which then ends.
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T - 1, interval="1m")
    run(plan, lambda p: [kline_row(T)] if p["startTime"] <= T else [])
    out = merge(plan, None)
    assert plan.step is Step.DONE and out == []
    mark = backfill.covered_through(plan, out)
    assert mark == T - 1
    again = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=mark, interval="1m")
    again.first_live = T + 10 * M
    run(again, lambda p: [kline_row(t) for t in (T, T + 10 * M) if t >= p["startTime"]])
    out = merge(again, T + 10 * M)
    assert [it.major for it in items(out)] == [T] and gaps(out) == []
    assert backfill.Continuity.follows(backfill.covered_through(again, out), T + 10 * M)


def test_kline_row_still_open_at_rest_is_refetched_final():
    # REST lags: its newest row (T + 3 M) is still being updated there though
    # the stream has moved on to T + 4 M. Only a later row proves it closed,
    # and then its final values are the ones published.
    partial = kline_row(T + 3 * M)
    partial[4], partial[8] = "1.1", 1
    final = kline_row(T + 3 * M)
    pages = [[kline_row(T + M), kline_row(T + 2 * M), partial], [final, kline_row(T + 4 * M)]]
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    plan.first_live = T + 4 * M
    assert plan.on_page(pages[0]) is Step.LAGGING
    assert plan.request()["startTime"] == T + 3 * M, "ask again from the unproven row"
    assert plan.on_page(pages[1]) is Step.DONE
    out = merge(plan, T + 4 * M)
    assert [it.major for it in items(out)] == [T + M, T + 2 * M, T + 3 * M]
    assert items(out)[-1].data == backfill.kline_data("BTCUSDT", "1m", final)


def test_kline_failure_gap_spans_to_the_first_live_kline():
    plan = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    out = merge(plan, T + 3 * M, failure="backfill failed: HTTP 503")
    assert out == [Gap("backfill failed: HTTP 503", from_ms=T + M, to_ms=T + 3 * M - 1)]


# -- trade ---------------------------------------------------------------------

def test_trades_older_than_the_recent_window_are_a_gap():
    rows = [{"id": i, "price": "1", "qty": "1", "quoteQty": "1", "time": i, "isBuyerMaker": True}
            for i in range(500, 1500)]
    plan = Plan("spot", "trade", "BTCUSDT", "trade.BTCUSDT", resume=100)
    assert plan.request() == {"symbol": "BTCUSDT", "limit": PAGE}
    assert plan.on_page(rows) is Step.DONE
    out = merge(plan, first_live=1400)
    assert out[0] == Gap("older than the recent-trades window", 101, 499, None, 500)
    assert [it.major for it in items(out)] == list(range(500, 1400))
    assert items(out)[0].data["trade_id"] == 500


def test_no_history_plan_for_other_channels():
    with pytest.raises(ValueError):
        Plan("spot", "bookTicker", "BTCUSDT", "bookTicker.BTCUSDT", resume=1)


# -- REST helpers --------------------------------------------------------------

@pytest.mark.parametrize("status, outcome", [(200, "ok"), (429, "limited"), (418, "limited"), (503, "retry"),
                                             (500, "retry"), (400, "fatal"), (404, "fatal")])
def test_classify(status, outcome):
    assert classify(status) == outcome


def test_request_weights():
    assert request_weight("spot", "/api/v3/klines", {"limit": 1000}) == 2
    assert request_weight("spot", "/api/v3/aggTrades", {"limit": 1000}) == 4
    assert request_weight("spot", "/api/v3/depth", {"limit": 5000}) == 250
    assert request_weight("spot", "/api/v3/depth", {"limit": 1000}) == 50
    assert request_weight("usdm", "/fapi/v1/klines", {"limit": 1000}) == 5
    assert request_weight("usdm", "/fapi/v1/depth", {"limit": 1000}) == 20


# -- holes inside one live stream ------------------------------------------------------

def test_continuity_ids_consecutive_and_repeats_ignored():
    c = backfill.Continuity("aggTrade")
    assert [c.check("a", i, True, {}) for i in (5, 6, 7)] == [None, None, None]
    assert c.check("a", 7, True, {}) is None           # a repeat is the parent's business
    assert c.check("a", 10, True, {}) == 7              # 8 and 9 are missing: resume after 7
    assert c.check("a", 11, True, {}) is None
    assert c.check("b", 100, True, {}) is None          # topics are independent


def kl(t: int, closed: bool) -> tuple:
    return t, closed, {"close_time": t + M - 1}


def test_continuity_klines_every_earlier_kline_seen_closed():
    c = backfill.Continuity("kline")
    for t, closed, data in (kl(T, False), kl(T, False), kl(T, True), kl(T + M, False), kl(T + M, True)):
        assert c.check("k", t, closed, data) is None
    # T + 2M never closed on this connection; an update of T + 3M shows it.
    assert c.check("k", *kl(T + 3 * M, False)) == T + 2 * M - 1
    plan = Plan("spot", "kline", "BTCUSDT", "k", T + 2 * M - 1, "1m")
    assert plan.request()["startTime"] == T + 2 * M
    assert c.check("k", *kl(T + 3 * M, False)) is None  # the hole is reported once
    assert c.check("k", *kl(T + 3 * M, True)) is None


def test_continuity_first_kline_frame_closed_and_missing_close_at_start():
    c = backfill.Continuity("kline")
    assert c.check("k", *kl(T, False)) is None          # first frame: backfill covered what came before
    assert c.check("k", *kl(T + M, False)) == T - 1      # T's close never came


def test_rest_asked_before_the_live_event_came_is_no_gap_but_a_resume_mark():
    # REST ran to its present (id 40); the first live event then came at 61:
    # the server lost 41..60 in between. That is not announced as lost but
    # handed back as the mark to fetch from.
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    run(plan, aggs_from(1, 40))
    out = merge(plan, first_live=61)
    assert gaps(out) == [] and items(out)[-1].major == 40
    assert backfill.covered_through(plan, out) == 40
    assert not backfill.Continuity.follows(40, 61) and backfill.Continuity.follows(40, 41)


def test_covered_through_without_items_and_after_gaps():
    agg = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    assert backfill.covered_through(agg, []) == 10
    assert backfill.covered_through(agg, merge(agg, 30, failure="banned")) == 29
    assert backfill.covered_through(agg, merge(agg, None, failure="banned")) is None
    k = Plan("spot", "kline", "BTCUSDT", "k", T, "1m")       # resume after closed kline T
    assert backfill.covered_through(k, []) == T + M - 1
    k_open = Plan("spot", "kline", "BTCUSDT", "k", T - 1, "1m")   # open kline T was the last
    assert backfill.covered_through(k_open, []) == T - 1
    assert backfill.covered_through(Plan("spot", "kline", "BTCUSDT", "k", T, "1M"), []) is None


def test_seed_checks_the_next_live_event_against_the_backfill():
    c = backfill.Continuity("aggTrade")
    c.seed("a", 40)
    assert c.check("a", 45, True, {}) == 40
    c2 = backfill.Continuity("kline")
    c2.seed("k", T + M - 1)                             # klines up to T accounted for
    assert c2.check("k", *kl(T + M, False)) is None
    assert c2.check("k", *kl(T + 3 * M, False)) == T + M - 1


# -- implausible jumps are malformed, not holes ---------------------------------------

def agg(a: int, t: int) -> tuple:
    return a, True, {"time": t}


def test_an_id_jump_the_exchange_could_not_have_made_is_malformed():
    c = backfill.Continuity("aggTrade")
    assert c.check("a", *agg(100, T)) is None
    assert c.check("a", *agg(101, T + 5)) is None
    assert c.check("a", *agg(101 + 2**62, T + 10)) == backfill.MALFORMED
    assert c.check("a", *agg(102, T + 12)) is None, "the hostile frame left no trace"
    # time itself jumping past a connection's lifetime is hostile too
    assert c.check("a", *agg(104, T + 2 * 86_400_000)) == backfill.MALFORMED
    # a real hole (a data stall of 90 s, 400 ids) is still a hole
    assert c.check("a", *agg(500, T + 90_000)) == 102
    assert c.check("a", *agg(501, T + 90_001)) is None


def test_a_kline_open_time_far_beyond_the_previous_is_malformed():
    c = backfill.Continuity("kline")
    assert c.check("k", T, False, {"close_time": T + M - 1, "interval": "1m"}) is None
    far = T + 400 * 86_400_000
    assert c.check("k", far, False, {"close_time": far + M - 1, "interval": "1m"}) == backfill.MALFORMED
    assert c.check("k", T, True, {"close_time": T + M - 1, "interval": "1m"}) is None
    # a two-hour trading halt is a plausible jump (backfill finds no klines there)
    later = T + 120 * M
    assert c.check("k", later, False, {"close_time": later + M - 1, "interval": "1m"}) == T + M - 1


# -- progress of a long backfill ---------------------------------------------------------

def test_progress_counts_rows_and_the_span_left_to_the_first_live_event():
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    assert plan.progress() == {"topic": "aggTrade.BTCUSDT", "rows": 0, "done": 0, "remaining": None, "unit": "ids"}
    plan.first_live = 3011
    plan.on_page([agg_row(a) for a in range(11, 1011)])
    assert plan.progress() == {"topic": "aggTrade.BTCUSDT", "rows": 1000, "done": 1000, "remaining": 2000,
                               "unit": "ids"}
    k = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    k.first_live = T + 100 * M
    k.on_page([kline_row(T + i * M) for i in range(1, 11)])
    p = k.progress()
    assert (p["rows"], p["unit"], p["remaining"]) == (10, "ms", 90 * M)


def test_eta_from_progress_and_elapsed_time():
    assert backfill.eta_s(done=1000, remaining=3000, elapsed_s=2.0) == pytest.approx(6.0)
    assert backfill.eta_s(done=0, remaining=3000, elapsed_s=2.0) is None
    assert backfill.eta_s(done=10, remaining=None, elapsed_s=2.0) is None


def test_a_trade_gap_beyond_the_recent_window_names_the_exact_ids_on_the_wire():
    # Binance serves the last 1000 trades to a key-less client: a longer
    # outage loses the older ones, and the notice says exactly which.
    from types import SimpleNamespace

    import msgpack

    from feedsup.ipc import frames
    from feedsup.workers.market import gap_frame
    rows = [{"id": i, "price": "1", "qty": "1", "quoteQty": "1", "time": i, "isBuyerMaker": True}
            for i in range(5000, 6000)]
    plan = Plan("spot", "trade", "BTCUSDT", "trade.BTCUSDT", resume=1234)
    plan.on_page(rows)
    out = merge(plan, first_live=5800)
    gap = gaps(out)[0]
    assert (gap.from_id, gap.to_id) == (1235, 4999)
    assert [it.major for it in items(out)] == list(range(5000, 5800))
    record = gap_frame(SimpleNamespace(name="trades"), "trade.BTCUSDT", b"trade.BTCUSDT", gap)
    (_, topic, _, _, _, body), = frames.iter_records(record)
    notice = msgpack.unpackb(body)
    assert notice["data"] is None and notice["gap"]["from_id"] == 1235 and notice["gap"]["to_id"] == 4999
    assert "recent-trades" in notice["gap"]["reason"]


def test_a_jump_the_next_frame_confirms_is_a_real_hole_after_all():
    # Misjudging a real jump must not kill the topic: when the frame after a
    # rejected one continues from it, the jump was real and is backfilled.
    c = backfill.Continuity("aggTrade")
    assert c.check("a", *agg(100, T)) is None
    far = 100 + 10**12
    assert c.check("a", *agg(far, T + 3 * 86_400_000)) == backfill.MALFORMED
    assert c.check("a", *agg(far + 1, T + 3 * 86_400_000 + 1)) == 100
    assert c.check("a", *agg(far + 2, T + 3 * 86_400_000 + 2)) is None
    k = backfill.Continuity("kline")
    assert k.check("k", T, False, {"close_time": T + M - 1, "interval": "1m"}) is None
    later = T + 400 * 86_400_000
    assert k.check("k", later, False, {"close_time": later + M - 1, "interval": "1m"}) == backfill.MALFORMED
    assert k.check("k", later, False, {"close_time": later + M - 1, "interval": "1m"}) == T - 1


def test_a_first_live_event_far_beyond_what_rest_shows_is_implausible():
    # The first live frame of a topic after a reconnect is not checked by
    # Continuity (nothing before it on this connection); REST's present is
    # the reference instead, by exchange ids and times.
    plan = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    plan.first_live, plan.first_live_time = 2**62, 1000 + 600
    assert plan.on_page([agg_row(a) for a in range(11, 501)]) is Step.DONE
    assert plan.implausible_live
    lagging = Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=10)
    lagging.first_live, lagging.first_live_time = 600, 1000 + 600      # REST merely behind
    assert lagging.on_page([agg_row(a) for a in range(11, 501)]) is Step.LAGGING
    assert not lagging.implausible_live
    k = Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT.1m", resume=T, interval="1m")
    k.first_live = T + 400 * 86_400_000
    assert k.on_page([kline_row(T + i * M) for i in range(1, 4)]) is Step.DONE and k.implausible_live
