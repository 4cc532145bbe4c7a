from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedsup.binance.book import (
    BadLevel, BookStateError, FuturesBookSync, OrderBook, SpotBookSync, Verdict,
    make_book_sync,
)
from feedsup.binance.normalise import MalformedEvent


def diff(first, last, bids=(), asks=(), prev=None):
    d = {"first_update_id": first, "last_update_id": last,
         "bids": [list(b) for b in bids], "asks": [list(a) for a in asks]}
    if prev is not None:
        d["prev_update_id"] = prev
    return d


SNAP_BIDS = [["10.0", "1"], ["9.5", "2"], ["9.0", "3"]]
SNAP_ASKS = [["10.5", "1"], ["11.0", "2"]]


# --- OrderBook -------------------------------------------------------------

def test_top_sorts_numerically_best_first():
    book = OrderBook()
    book.load([["9.5", "1"], ["10.0", "2"], ["100.0", "3"]], [["10.5", "1"], ["9.9", "2"]])
    bids, asks = book.top()
    assert bids == [["100.0", "3"], ["10.0", "2"], ["9.5", "1"]]
    assert asks == [["9.9", "2"], ["10.5", "1"]]


def test_top_n_limits_each_side():
    book = OrderBook()
    book.load(SNAP_BIDS, SNAP_ASKS)
    assert book.top(2) == ([["10.0", "1"], ["9.5", "2"]], [["10.5", "1"], ["11.0", "2"]])
    assert book.top(10) == book.top()
    assert book.top(0) == ([], [])
    with pytest.raises(ValueError):
        book.top(-1)


def test_zero_quantity_deletes_and_unknown_delete_is_harmless():
    book = OrderBook()
    book.load(SNAP_BIDS, SNAP_ASKS)
    book.update([["9.5", "0.00000000"], ["8.0", "0"]], [["10.5", "0"], ["12.0", "4"]])
    assert book.top() == ([["10.0", "1"], ["9.0", "3"]], [["11.0", "2"], ["12.0", "4"]])
    assert len(book) == 4


def test_equal_prices_in_other_notation_are_one_level():
    book = OrderBook()
    book.load([["10.0", "1"]], [])
    book.update([["10.00", "5"]], [])
    assert book.top() == ([["10.00", "5"]], [])
    book.update([["1E+1", "0"]], [])
    assert book.top() == ([], [])


def test_load_replaces_the_book():
    book = OrderBook()
    book.load(SNAP_BIDS, SNAP_ASKS)
    book.load([["1", "1"]], [["2", "1"]])
    assert book.top() == ([["1", "1"]], [["2", "1"]])


@pytest.mark.parametrize("level", [
    ["x", "1"], ["1", "y"], ["1"], ["1", "1", "1"], [1.5, "1"], ["1", 2],
    ["NaN", "1"], ["-1", "1"], ["1", "-1"], ["1", "inf"], None,
])
def test_bad_level_changes_nothing(level):
    book = OrderBook()
    book.load(SNAP_BIDS, SNAP_ASKS)
    before = book.top()
    with pytest.raises(BadLevel):
        book.update([["9.75", "1"], level], [])
    assert book.top() == before
    assert issubclass(BadLevel, MalformedEvent)


# --- spot sync -------------------------------------------------------------

def synced_spot(last_update_id=100):
    sync = SpotBookSync()
    assert sync.on_diff(diff(last_update_id - 5, last_update_id - 2)) is Verdict.NEED_SNAPSHOT
    assert sync.on_snapshot(last_update_id, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    return sync


def test_spot_buffers_until_snapshot_then_drops_covered_diffs():
    sync = SpotBookSync()
    assert sync.on_diff(diff(95, 98, bids=[("9.0", "30")])) is Verdict.NEED_SNAPSHOT
    assert sync.on_diff(diff(99, 100, bids=[("9.0", "31")])) is Verdict.BUFFERED
    assert sync.on_diff(diff(101, 103, bids=[("9.5", "0")], asks=[("10.5", "7")])) is Verdict.BUFFERED
    assert not sync.synced and sync.buffered == 3
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    # Diffs with u <= 100 were already in the snapshot: the 9.0 bid stays at 3.
    assert sync.synced and sync.update_id == 103 and sync.buffered == 0
    assert sync.top() == ([["10.0", "1"], ["9.0", "3"]], [["10.5", "7"], ["11.0", "2"]])


def test_spot_snapshot_older_than_first_buffered_event_is_fetched_again():
    sync = SpotBookSync()
    sync.on_diff(diff(101, 105))
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.STALE_SNAPSHOT
    assert Verdict.STALE_SNAPSHOT.fetch_snapshot
    assert not sync.synced and sync.buffered == 1
    assert sync.on_snapshot(101, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    assert sync.update_id == 105


def test_spot_applies_live_diffs_in_order():
    sync = synced_spot(100)
    assert sync.on_diff(diff(101, 101, bids=[("10.0", "5")])) is Verdict.APPLIED
    assert sync.on_diff(diff(102, 110, asks=[("10.5", "0")])) is Verdict.APPLIED
    assert sync.update_id == 110
    assert sync.top(1) == ([["10.0", "5"]], [["11.0", "2"]])
    assert Verdict.APPLIED.book_changed and not Verdict.APPLIED.fetch_snapshot


def test_spot_overlapping_diff_is_applied_and_older_one_skipped():
    sync = synced_spot(100)
    assert sync.on_diff(diff(95, 104, bids=[("9.0", "8")])) is Verdict.APPLIED
    assert sync.on_diff(diff(90, 99, bids=[("9.0", "1")])) is Verdict.SKIPPED
    assert sync.update_id == 104
    assert ["9.0", "8"] in sync.top()[0]


def test_spot_gap_discards_book_and_keeps_the_breaking_diff():
    sync = synced_spot(100)
    assert sync.on_diff(diff(102, 103, bids=[("1", "1")])) is Verdict.RESYNC
    assert not sync.synced and sync.top() == ([], []) and sync.buffered == 1
    assert sync.on_diff(diff(104, 104)) is Verdict.BUFFERED
    assert sync.on_snapshot(102, [["5", "5"]], []) is Verdict.SYNCED
    # The kept diff (102..103) bridges the new snapshot and is applied.
    assert sync.update_id == 104
    assert sync.top() == ([["5", "5"], ["1", "1"]], [])


def test_spot_gap_inside_the_buffer_resyncs_from_the_break():
    sync = SpotBookSync()
    sync.on_diff(diff(99, 101))
    sync.on_diff(diff(102, 103))
    sync.on_diff(diff(110, 111))      # 104..109 lost
    sync.on_diff(diff(112, 112))
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.RESYNC
    assert not sync.synced and sync.buffered == 2
    assert sync.on_snapshot(109, SNAP_BIDS, SNAP_ASKS) is Verdict.STALE_SNAPSHOT
    assert sync.on_snapshot(110, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    assert sync.update_id == 112


def test_snapshot_without_request_is_a_state_error():
    with pytest.raises(BookStateError):
        SpotBookSync().on_snapshot(1, [], [])
    sync = synced_spot()
    with pytest.raises(BookStateError):
        sync.on_snapshot(200, [], [])


def test_bad_live_diff_is_dropped_and_the_next_one_resyncs():
    sync = synced_spot(100)
    before = sync.top()
    with pytest.raises(BadLevel):
        sync.on_diff(diff(101, 102, bids=[("10.0", "9"), ("bad", "1")]))
    assert sync.synced and sync.update_id == 100 and sync.top() == before
    assert sync.on_diff(diff(103, 104)) is Verdict.RESYNC


def test_bad_first_diff_is_not_buffered():
    sync = SpotBookSync()
    with pytest.raises(BadLevel):
        sync.on_diff(diff(1, 2, asks=[("1", None)]))
    assert sync.buffered == 0
    assert sync.on_diff(diff(3, 4)) is Verdict.NEED_SNAPSHOT


def test_bad_snapshot_changes_nothing():
    sync = SpotBookSync()
    sync.on_diff(diff(99, 101))
    with pytest.raises(BadLevel):
        sync.on_snapshot(100, [["1", "x"]], [])
    assert not sync.synced and sync.buffered == 1
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED


def test_buffer_overflow_drops_oldest_and_staleness_follows_the_buffer():
    sync = SpotBookSync(max_buffer=2)
    sync.on_diff(diff(1, 1))
    sync.on_diff(diff(2, 2))
    sync.on_diff(diff(3, 3))
    assert sync.buffered == 2
    # Snapshot at 1 predates the oldest kept diff (2): not usable.
    assert sync.on_snapshot(1, [], []) is Verdict.STALE_SNAPSHOT
    assert sync.on_snapshot(2, [], []) is Verdict.SYNCED and sync.update_id == 3


# --- futures sync ----------------------------------------------------------

def test_futures_first_applied_diff_must_bridge_the_snapshot():
    sync = FuturesBookSync()
    assert sync.on_diff(diff(90, 95, prev=80, bids=[("9.0", "30")])) is Verdict.NEED_SNAPSHOT
    sync.on_diff(diff(98, 104, prev=95, bids=[("9.0", "31")]))
    sync.on_diff(diff(107, 110, prev=104, asks=[("11.0", "0")]))
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    assert sync.update_id == 110
    assert sync.top() == ([["10.0", "1"], ["9.5", "2"], ["9.0", "31"]], [["10.5", "1"]])


def test_futures_diff_ending_at_snapshot_id_is_kept():
    sync = FuturesBookSync()
    sync.on_diff(diff(95, 100, prev=90, bids=[("9.0", "7")]))
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    assert sync.update_id == 100 and ["9.0", "7"] in sync.top()[0]


def test_futures_snapshot_not_bridged_by_buffer_is_stale():
    sync = FuturesBookSync()
    sync.on_diff(diff(101, 105, prev=99))
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.STALE_SNAPSHOT
    assert sync.on_snapshot(103, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED


def test_futures_snapshot_newer_than_buffer_waits_for_the_bridging_diff():
    sync = FuturesBookSync()
    sync.on_diff(diff(90, 95, prev=80))
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    assert sync.update_id == 100
    assert sync.on_diff(diff(96, 99, prev=95)) is Verdict.SKIPPED
    assert sync.on_diff(diff(99, 102, prev=98, asks=[("12", "1")])) is Verdict.APPLIED
    assert sync.update_id == 102


def test_futures_non_bridging_live_diff_resyncs():
    sync = FuturesBookSync()
    sync.on_diff(diff(90, 95, prev=80))
    sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS)
    assert sync.on_diff(diff(101, 104, prev=99)) is Verdict.RESYNC
    assert not sync.synced and sync.top() == ([], [])


def test_futures_pu_chain():
    sync = FuturesBookSync()
    sync.on_diff(diff(98, 104, prev=95))
    sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS)
    assert sync.on_diff(diff(109, 112, prev=104, bids=[("9.0", "0")])) is Verdict.APPLIED
    assert sync.on_diff(diff(120, 121, prev=112)) is Verdict.APPLIED
    assert sync.update_id == 121
    # pu 119 != 121: a diff between was lost.
    assert sync.on_diff(diff(125, 130, prev=123)) is Verdict.RESYNC
    assert sync.buffered == 1
    assert sync.on_snapshot(127, [["1", "1"]], []) is Verdict.SYNCED
    assert sync.update_id == 130 and sync.top() == ([["1", "1"]], [])


def test_futures_diff_needs_prev_update_id():
    with pytest.raises(MalformedEvent, match="prev_update_id"):
        FuturesBookSync().on_diff(diff(1, 2))


def test_make_book_sync():
    assert isinstance(make_book_sync("spot"), SpotBookSync)
    assert isinstance(make_book_sync("usdm"), FuturesBookSync)
    with pytest.raises(ValueError):
        make_book_sync("coinm")


# --- randomized: a random exchange history, lossy delivery, lagging REST --

PRICES = [f"{p / 10:.1f}" for p in range(90, 112)]   # 9.0 .. 11.1: "10.0" < "9.9" as text


def generate_history(data, futures):
    """Diffs of a random exchange history and the true book after every id."""
    book = {"bids": {}, "asks": {}}
    states = [({}, {})]          # states[id] = (bids, asks) after every update <= id
    diffs = []
    prev_u = 0
    for _ in range(data.draw(st.integers(1, 25), label="events")):
        # Futures ids are not contiguous per symbol: holes between diffs.
        hole = data.draw(st.integers(0, 3)) if futures else 0
        states.extend([states[-1]] * hole)
        first = prev_u + 1 + hole
        touched = {}
        for _ in range(data.draw(st.integers(1, 4))):
            side = data.draw(st.sampled_from(["bids", "asks"]))
            price = data.draw(st.sampled_from(PRICES))
            qty = data.draw(st.sampled_from(["0", "0.000", "1", "2.50", "3"]))
            if float(qty) == 0:
                book[side].pop(Decimal(price), None)
            else:
                book[side][Decimal(price)] = [price, qty]
            touched[side, price] = qty
            states.append((dict(book["bids"]), dict(book["asks"])))
        last = len(states) - 1
        bids = [[p, q] for (s, p), q in touched.items() if s == "bids"]
        asks = [[p, q] for (s, p), q in touched.items() if s == "asks"]
        diffs.append(diff(first, last, bids, asks, prev=prev_u if futures else None))
        prev_u = last
    return diffs, states


def levels(state):
    bids, asks = state
    return ([bids[p] for p in sorted(bids, reverse=True)], [asks[p] for p in sorted(asks)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), futures=st.booleans())
def test_synced_book_always_equals_the_truth(data, futures):
    diffs, states = generate_history(data, futures)
    sync = FuturesBookSync() if futures else SpotBookSync()
    joined = data.draw(st.integers(0, len(diffs) - 1), label="joined at")
    pending = None        # diffs until the requested snapshot arrives
    latest = 0            # newest id the exchange has produced so far

    def act(verdict):
        nonlocal pending
        if verdict.fetch_snapshot:
            assert not sync.synced
            pending = data.draw(st.integers(0, 3), label="snapshot delay")
        if sync.synced:
            assert sync.top() == levels(states[sync.update_id])

    final_lost = False
    for i, d in enumerate(diffs):
        latest = d["last_update_id"]
        final_lost = i < joined or data.draw(st.integers(0, 9), label="loss") == 0
        if not final_lost:
            act(sync.on_diff(d))
        if pending is not None:
            if pending == 0:
                pending = None
                lag = data.draw(st.integers(0, 8), label="REST lag")
                snapshot_id = max(0, latest - lag)
                act(sync.on_snapshot(snapshot_id, *levels(states[snapshot_id])))
            else:
                pending -= 1

    if not sync.synced and sync.buffered:
        # A current snapshot always syncs: nothing buffered is newer than it.
        assert sync.on_snapshot(latest, *levels(states[latest])) is Verdict.SYNCED
    if not final_lost:
        assert sync.synced and sync.update_id == latest
    if sync.synced:
        assert sync.top() == levels(states[sync.update_id])


# --- against the simulator's own book (its payloads, its REST snapshot) ----

@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_book_matches_the_simulator_book(market):
    from feedsup.config import Stream
    from feedsup.sim.feeds import DepthFeed
    from feedsup.sim.market import SymbolMarket
    from feedsup.sim.options import DEFAULT_START_MS as T0
    from feedsup.sim.payloads import depth_snapshot
    from feedsup.sim.streams import StreamSpec
    from feedsup.sim.symbols import spec_for
    from feedsup.binance.normalise import make_normaliser

    m = SymbolMarket(spec_for("BTCUSDT"), market, 11, T0, 20.0, 50.0, 50, 100_000)
    feed = DepthFeed(StreamSpec("btcusdt@depth@100ms", "depth", "BTCUSDT", period_ms=100), T0, m)
    normalise = make_normaliser(Stream(name="d", market=market, channel="depth", symbols=("BTCUSDT",)))
    sync = make_book_sync(market)
    want_snapshot, resyncs, checked = False, 0, 0
    for step in range(1, 300):
        now = T0 + step * 100
        m.advance(now)
        for event in feed.poll(now):
            if step == 150:
                continue          # lost on the wire: the next diff must resync
            verdict = sync.on_diff(normalise(event)[1])
            resyncs += verdict is Verdict.RESYNC
            want_snapshot = want_snapshot or verdict.fetch_snapshot
        if want_snapshot and step % 7 == 0:    # REST answers a little later
            snap = depth_snapshot(m, 5000, now)
            verdict = sync.on_snapshot(snap["lastUpdateId"], snap["bids"], snap["asks"])
            want_snapshot = verdict.fetch_snapshot
        if sync.synced and step != 150:   # at 150 the book lags until the next diff
            snap = depth_snapshot(m, 5000, now)
            assert sync.update_id == snap["lastUpdateId"]
            assert sync.top() == (snap["bids"], snap["asks"])
            checked += 1
    assert resyncs == 1 and checked > 250
