"""Backfill edges that mutation testing found unpinned (docs/mutation.md):
the REST row -> field mapping, the exact bounds of the plausibility checks,
the failure gaps of klines, paging counters, and the continuity of one live
stream after a hole. Pure, like tests/test_backfill.py, whose fakes it uses.
"""

from __future__ import annotations

import pytest

from feedsup.binance import backfill
from feedsup.binance.backfill import (LIFETIME_MS, MAX_IDS_PER_MS, PAGE, SLACK_MS, Continuity, Gap, Plan,
                                      Step, covered_through, merge)
from feedsup.binance.normalise import make_normaliser
from feedsup.config import Stream
from test_backfill import M, T, agg_row, gaps, items, kline_row, run

W = 7 * 86_400_000      # 1w: a calendar interval, no fixed grid (interval_ms is None)


def agg_plan(resume: int = 0) -> Plan:
    return Plan("spot", "aggTrade", "BTCUSDT", "aggTrade.BTCUSDT", resume=resume)


def trade_plan(resume: int = 0) -> Plan:
    return Plan("spot", "trade", "BTCUSDT", "trade.BTCUSDT", resume=resume)


def kline_plan(resume: int, interval: str = "1m") -> Plan:
    return Plan("spot", "kline", "BTCUSDT", "kline.BTCUSDT." + interval, resume=resume, interval=interval)


def agg_at(a: int, t: int) -> dict:
    return {**agg_row(a), "T": t}


def trade_row(t: int, time_ms: int = 5_000) -> dict:
    return {"id": t, "price": "1.5", "qty": "2.5", "quoteQty": "3.75", "time": time_ms + t,
            "isBuyerMaker": True, "isBestMatch": True}


# -- REST rows -> the live normaliser's fields ------------------------------------

def normaliser(channel: str):
    return make_normaliser(Stream(name="s", market="spot", channel=channel, symbols=("BTCUSDT",)))


def test_a_rest_kline_row_maps_every_column_to_its_field():
    row = [T, "1.1", "2.2", "0.3", "1.4", "5.5", T + M - 1, "6.6", 77, "8.8", "9.9", "0"]
    assert backfill.kline_data("BTCUSDT", "1m", row) == {
        "symbol": "BTCUSDT", "interval": "1m", "open_time": T, "close_time": T + M - 1,
        "open": "1.1", "high": "2.2", "low": "0.3", "close": "1.4", "volume": "5.5",
        "quote_volume": "6.6", "trades": 77, "closed": True, "event_time": None,
        "first_trade_id": None, "last_trade_id": None, "taker_buy_volume": "8.8",
        "taker_buy_quote_volume": "9.9"}


def test_a_rest_trade_has_the_live_trades_fields_with_no_event_time():
    live = {"e": "trade", "E": 99, "s": "BTCUSDT", "t": 7, "p": "1.5", "q": "2.5", "T": 5_007, "m": True}
    _, live_data, major, minor, final = normaliser("trade")(live)
    plan = trade_plan(resume=6)
    plan.on_page([trade_row(7)])
    (item,) = plan.items
    assert item.data == {**live_data, "event_time": None}
    assert (item.major, item.minor, item.end, item.time) == (major, minor, 7, 5_007)


def test_backfilled_aggtrades_carry_the_ordering_key_of_the_live_frame():
    live = {"e": "aggTrade", "E": 99, "s": "BTCUSDT", **{k: v for k, v in agg_row(3).items() if k != "M"}}
    _, _, major, minor, final = normaliser("aggTrade")(live)
    plan = agg_plan(resume=2)
    plan.on_page([agg_row(3)])
    assert (plan.items[0].major, plan.items[0].minor) == (major, minor)


# -- kline grid ----------------------------------------------------------------------

def test_the_first_kline_after_a_mark_is_an_integer_open_time_on_the_grid():
    for resume, first in ((T, T + M), (T - 1, T), (T + 5, T + M)):
        got = backfill.first_open_after(resume, "1m")
        assert got == first and type(got) is int


def test_refusals_name_the_market_and_channel():
    with pytest.raises(ValueError, match="no REST history for spot bookTicker"):
        Plan("spot", "bookTicker", "BTCUSDT", "bookTicker.BTCUSDT", resume=1)
    with pytest.raises(ValueError, match="no continuity rule for depth"):
        Continuity("depth")


# -- paging ----------------------------------------------------------------------------

def test_pages_and_rows_add_up_over_pages():
    plan = agg_plan()
    plan.on_page([agg_row(a) for a in range(1, PAGE + 1)])
    plan.on_page([agg_row(a) for a in range(PAGE + 1, PAGE + 6)])
    assert (plan.pages, plan.rows) == (2, PAGE + 5)
    assert plan.progress()["done"] == PAGE + 5


def test_a_rest_that_repeats_a_full_page_does_not_page_forever():
    plan = agg_plan()
    page = [agg_row(a) for a in range(1, PAGE + 1)]
    assert plan.on_page(page) is Step.MORE
    assert plan.on_page(page) is Step.DONE     # nothing new: that is REST's present


def test_a_full_page_that_brings_a_single_new_row_still_pages_on():
    plan = agg_plan()
    plan.on_page([agg_row(a) for a in range(1, PAGE + 1)])
    assert plan.on_page([agg_row(a) for a in range(2, PAGE + 2)]) is Step.MORE
    assert plan.items[-1].major == PAGE + 1


def test_reaching_the_first_live_id_exactly_ends_the_backfill():
    plan = agg_plan()
    plan.first_live = 4
    assert plan.on_page([agg_row(a) for a in (1, 2, 3)]) is Step.DONE
    assert plan.covered(4) and not plan.covered(5)
    assert plan.progress()["remaining"] == 0


def test_trades_reaching_the_first_live_trade_are_covered_and_plausible():
    plan = trade_plan(resume=0)
    plan.first_live, plan.first_live_time = 4, 5_004
    assert plan.on_page([trade_row(t) for t in (1, 2, 3)]) is Step.DONE
    assert not plan.implausible_live
    assert plan.progress()["done"] == 3 and plan.progress()["remaining"] == 0


def test_trades_short_of_a_plausible_first_live_trade_are_not_implausible():
    plan = trade_plan(resume=0)
    plan.first_live, plan.first_live_time = 50, 5_050
    plan.on_page([trade_row(t) for t in (1, 2, 3)])
    assert not plan.implausible_live and not plan.covered(50)


def test_a_first_live_trade_beyond_what_the_exchange_could_reach_is_implausible():
    plan = trade_plan(resume=0)
    plan.first_live = 3 + MAX_IDS_PER_MS * SLACK_MS + 1     # no time elapsed since trade 3
    plan.first_live_time = 5_003
    plan.on_page([trade_row(t) for t in (1, 2, 3)])
    assert plan.implausible_live


def test_the_covered_trades_and_their_resume_mark():
    plan = trade_plan(resume=0)
    run(plan, lambda params: [trade_row(t) for t in (1, 2, 3)])
    out = merge(plan, first_live=None)
    assert [it.major for it in items(out)] == [1, 2, 3]
    assert covered_through(plan, out) == 3


# -- klines across pages ------------------------------------------------------------

def test_rows_before_the_start_are_skipped_not_the_end_of_the_page():
    plan = kline_plan(T - 1)
    plan.on_page([kline_row(T), kline_row(T + M)])             # T proven closed; T + M the tail
    plan.on_page([kline_row(T), kline_row(T + M), kline_row(T + 2 * M)])
    assert [it.major for it in plan.items] == [T, T + M]
    assert plan.tail.major == T + 2 * M and plan.tail.time == T + 2 * M


def test_the_newest_kline_of_a_page_becomes_an_item_when_the_next_page_starts_past_it():
    plan = kline_plan(T - 1)
    plan.on_page([kline_row(T)])
    plan.on_page([kline_row(T + 2 * M)])     # T + M had no trades: no kline
    assert [it.major for it in plan.items] == [T]


def test_a_kline_first_live_before_any_rest_row_is_waited_for():
    plan = kline_plan(T - 1)
    plan.first_live = T + 5 * M
    assert plan.on_page([]) is Step.LAGGING and not plan.implausible_live


@pytest.mark.parametrize("beyond, plausible", [(0, True), (M, False)])
def test_a_kline_first_live_is_plausible_up_to_a_lifetime_and_two_intervals_past_rest(beyond, plausible):
    plan = kline_plan(T - 1)
    plan.first_live = T + LIFETIME_MS + 2 * M + beyond
    step = plan.on_page([kline_row(T)])
    assert (step is Step.LAGGING) == plausible and plan.implausible_live != plausible


# -- the ids a live aggTrade could have reached from REST's newest row -----------------

def agg_live(last_time: int, live_time: int, live: int) -> Plan:
    """REST served ids 1..3 (3 at ``last_time``); the first live event is
    ``live`` at ``live_time``. REST is out of rows: LAGGING or implausible."""
    plan = agg_plan()
    plan.first_live, plan.first_live_time = live, live_time
    plan.on_page([agg_at(1, 10), agg_at(2, 20), agg_at(3, last_time)])
    return plan


@pytest.mark.parametrize("elapsed, beyond, implausible", [
    (0, 0, False), (0, 1, True),                     # no time elapsed: the slack alone
    (1_000, 0, False), (1_000, 1, True),             # measured from the last row, not an earlier one
    (LIFETIME_MS + SLACK_MS, 0, False),              # the longest span one connection covers
])
def test_the_live_id_bound_is_ids_per_ms_over_the_elapsed_time_plus_slack(elapsed, beyond, implausible):
    last_time = 1_000_000
    live = 3 + MAX_IDS_PER_MS * (elapsed + SLACK_MS) + beyond
    assert agg_live(last_time, last_time + elapsed, live).implausible_live == implausible


def test_a_live_event_longer_after_rest_than_a_connection_lives_is_implausible():
    assert agg_live(1_000, 1_000 + LIFETIME_MS + SLACK_MS + 1, 4 + 1).implausible_live


# -- progress -------------------------------------------------------------------------

@pytest.mark.parametrize("done, remaining, elapsed, eta", [
    (1, 10, 2.0, 20.0), (10, 10, 0.5, 0.5), (10, 10, 0.0, None), (0, 10, 2.0, None), (5, None, 2.0, None)])
def test_eta_is_the_pace_so_far_once_there_is_one(done, remaining, elapsed, eta):
    assert backfill.eta_s(done, remaining, elapsed) == eta


# -- gaps -------------------------------------------------------------------------------

def test_an_id_gap_carries_the_time_of_the_event_before_it():
    plan = agg_plan()
    plan.on_page([agg_at(1, 100), agg_at(5, 500)])
    assert gaps(merge(plan, first_live=None)) == [Gap("not served by REST", 2, 4, 100, 500)]


def test_a_failure_right_before_the_first_live_id_is_no_gap():
    plan = agg_plan()
    plan.on_page([agg_row(a) for a in (1, 2, 3)])
    assert gaps(merge(plan, first_live=4, failure="banned")) == []
    assert gaps(merge(plan, first_live=5, failure="banned")) == [Gap("banned", 4, 4, agg_row(3)["T"], None)]


def test_a_kline_failure_gap_starts_after_the_last_kline_rest_proved_closed():
    plan = kline_plan(T - 1)
    plan.on_page([kline_row(T), kline_row(T + M)])
    out = merge(plan, first_live=None, failure="banned")
    assert [it.major for it in items(out)] == [T]
    assert gaps(out) == [Gap("banned", from_ms=T + M)]


def test_a_kline_failure_when_rest_showed_only_the_open_kline_starts_at_that_kline():
    plan = kline_plan(T - 1)
    plan.on_page([kline_row(T + 3 * M)])          # T .. T + 2M had no trades
    out = merge(plan, first_live=T + 5 * M, failure="banned")
    assert out == [Gap("banned", from_ms=T + 3 * M, to_ms=T + 5 * M - 1)]
    assert covered_through(plan, out) == T + 5 * M - 1


def test_a_kline_failure_without_a_grid_starts_after_the_mark_or_rests_newest_row():
    plan = kline_plan(T - 1, "1w")
    assert merge(plan, first_live=None, failure="banned") == [Gap("banned", from_ms=T)]
    plan.on_page([kline_row(T + W)])
    assert merge(plan, first_live=None, failure="banned") == [Gap("banned", from_ms=T + W)]


def test_a_kline_failure_with_the_first_live_kline_next_is_no_gap():
    plan = kline_plan(T - 1)
    assert merge(plan, first_live=T, failure="banned") == []
    assert merge(plan, first_live=T + M, failure="banned") == [Gap("banned", from_ms=T, to_ms=T + M - 1)]


def test_kline_resume_mark_stops_before_a_live_kline_rest_has_already_passed():
    plan = kline_plan(T - 1)
    plan.first_live = T + 2 * M
    plan.on_page([kline_row(T + t * M) for t in range(5)])   # REST ahead of the live stream
    out = merge(plan, first_live=T + 2 * M)
    assert covered_through(plan, out) == T + 2 * M - 1


# -- continuity of one live stream ----------------------------------------------------

def test_after_a_hole_the_next_jump_is_a_hole_again():
    c = Continuity("aggTrade")
    assert c.check("a", 5, True, {}) is None
    assert c.check("a", 8, True, {}) == 5
    assert c.check("a", 9, True, {}) is None
    assert c.check("a", 12, True, {}) == 9


def test_an_event_follows_a_mark_only_right_after_it():
    assert Continuity.follows(10, 11) and Continuity.follows(10, 3)
    assert not Continuity.follows(10, 12)


def test_an_implausible_id_is_confirmed_only_by_the_id_right_after_it():
    c = Continuity("aggTrade")
    far = 1 + MAX_IDS_PER_MS * (LIFETIME_MS + SLACK_MS) + 1
    c.check("a", 1, True, {})
    assert c.check("a", far, True, {}) == backfill.MALFORMED
    assert c.check("a", far + 2, True, {}) == backfill.MALFORMED
    assert c.check("a", far + 3, True, {}) == 1          # far + 2 confirmed: resume after 1


def test_a_confirmed_jump_becomes_the_anchor_with_its_time():
    c = Continuity("aggTrade")
    far = 1 + MAX_IDS_PER_MS * (LIFETIME_MS + SLACK_MS) + 1
    c.check("a", 1, True, {"time": 1_000})
    c.check("a", far, True, {"time": 2_000})
    assert c.check("a", far + 1, True, {"time": 2_000}) == 1      # confirmed
    assert c.anchor["a"] == (far + 1, 2_000)
    # From that anchor, at the same exchange time, only the slack is possible.
    assert c.check("a", far + 3 + MAX_IDS_PER_MS * SLACK_MS, True, {"time": 2_000}) == backfill.MALFORMED


def test_a_kline_jump_is_confirmed_by_the_next_kline_only():
    c = Continuity("kline")
    far = T + LIFETIME_MS + 3 * M
    assert c.check("k", *kl(T, True)) is None
    assert c.check("k", *kl(far, False)) == backfill.MALFORMED
    assert c.check("k", *kl(far + 2 * M, False)) == backfill.MALFORMED    # two intervals on: not the next
    assert c.check("k", *kl(far + 3 * M, False)) == T + M - 1             # the next one: real after all
    assert c.anchor["k"] == (far + 3 * M, None)
    assert c.check("k", *kl(far + 3 * M + LIFETIME_MS + 3 * M, False)) == backfill.MALFORMED


@pytest.mark.parametrize("beyond, ok", [(2 * M, True), (3 * M, False)])
def test_a_kline_jump_is_plausible_up_to_a_lifetime_and_two_intervals(beyond, ok):
    c = Continuity("kline")
    c.check("k", *kl(T, True))
    assert (c.check("k", *kl(T + LIFETIME_MS + beyond, False)) != backfill.MALFORMED) == ok


def kl(t: int, closed: bool) -> tuple:
    return t, closed, {"close_time": t + M - 1, "interval": "1m"}


def seeded(first_time: int | None) -> Continuity:
    """A topic whose backfill ended at id 10 before any live event; the first
    live event (id 20) is a hole and becomes the anchor."""
    c = Continuity("aggTrade")
    c.seed("a", 10)
    assert c.check("a", 20, True, {} if first_time is None else {"time": first_time}) == 10
    return c


def test_the_first_live_event_after_a_seed_anchors_with_its_time():
    c = seeded(1_000)
    assert c.anchor["a"] == (20, 1_000)
    assert c.check("a", 22 + MAX_IDS_PER_MS * SLACK_MS, True, {"time": 1_000}) == backfill.MALFORMED


@pytest.mark.parametrize("dt, ok", [
    (0, True), (-SLACK_MS, True), (-SLACK_MS - 1, False),
    (LIFETIME_MS, True), (LIFETIME_MS + SLACK_MS, True), (LIFETIME_MS + SLACK_MS + 1, False)])
def test_a_jump_is_judged_on_exchange_time_since_the_anchor(dt, ok):
    c = seeded(100_000_000)
    assert (c.check("a", 22, True, {"time": 100_000_000 + dt}) != backfill.MALFORMED) == ok


@pytest.mark.parametrize("dt, beyond, ok", [(0, 0, True), (0, 1, False), (5_000, 0, True), (5_000, 1, False)])
def test_ids_grow_at_most_at_the_trade_rate_over_time_plus_slack(dt, beyond, ok):
    c = seeded(100_000_000)
    major = 20 + MAX_IDS_PER_MS * (dt + SLACK_MS) + beyond
    assert (c.check("a", major, True, {"time": 100_000_000 + dt}) != backfill.MALFORMED) == ok


@pytest.mark.parametrize("first_time, time", [(None, 5_000), (1_000, None), (None, None)])
def test_without_both_times_the_bound_is_a_lifetime_of_ids(first_time, time):
    bound = MAX_IDS_PER_MS * (LIFETIME_MS + SLACK_MS)
    data = {} if time is None else {"time": time}
    assert seeded(first_time).check("a", 20 + bound, True, data) == 20
    assert seeded(first_time).check("a", 20 + bound + 1, True, data) == backfill.MALFORMED


def test_a_first_kline_frame_closed_marks_its_close_time():
    c = Continuity("kline")
    assert c.check("k", *kl(T, True)) is None
    assert c.check("k", *kl(T + M, False)) is None
    c2 = Continuity("kline")
    c2.check("k", *kl(T, True))
    assert c2.check("k", *kl(T + 2 * M, False)) == T + M - 1


def test_after_a_kline_hole_at_an_open_kline_that_kline_is_the_mark():
    c = Continuity("kline")
    c.check("k", *kl(T, True))
    assert c.check("k", *kl(T + 2 * M, False)) == T + M - 1
    assert c.check("k", *kl(T + 2 * M, True)) is None
    assert c.check("k", *kl(T + 3 * M, False)) is None
    c2 = Continuity("kline")
    c2.check("k", *kl(T, True))
    c2.check("k", *kl(T + 2 * M, False))
    assert c2.check("k", *kl(T + 3 * M, False)) == T + 2 * M - 1   # T + 2M never closed
