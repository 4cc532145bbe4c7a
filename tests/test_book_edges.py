"""Edges of the order-book sync that mutation testing showed no test pinned
down: a zero price, the messages of each refusal, the futures bridging diff
ending exactly at the snapshot, and the buffer bound after a resync and for
every way of making a sync."""

from __future__ import annotations

import pytest

from feedsup.binance.book import (
    BadLevel, BookStateError, FuturesBookSync, OrderBook, SpotBookSync, Verdict, make_book_sync,
)
from feedsup.binance.normalise import MalformedEvent
from test_book import SNAP_ASKS, SNAP_BIDS, diff


def test_a_zero_price_is_a_bad_level_and_says_why():
    book = OrderBook()
    with pytest.raises(BadLevel, match=r"^bad price level in .*: not a positive price with a finite qty$"):
        book.update([["0", "1"]], [])
    assert len(book) == 0


def test_top_refuses_a_negative_n_saying_so():
    with pytest.raises(ValueError, match="^top\\(n\\) needs n >= 0, got -1$"):
        OrderBook().top(-1)


def test_refusals_say_what_was_wrong():
    with pytest.raises(MalformedEvent, match="^futures depth diff without prev_update_id$"):
        FuturesBookSync().on_diff(diff(1, 2))
    with pytest.raises(BookStateError, match="^snapshot arrived but none was requested$"):
        SpotBookSync().on_snapshot(1, [], [])
    with pytest.raises(ValueError, match="^unknown market 'coinm'$"):
        make_book_sync("coinm")


def test_futures_bridging_diff_may_end_exactly_at_the_snapshot():
    """Binance: the first diff applied has U <= lastUpdateId <= u; u equal to
    lastUpdateId bridges, even with newer diffs buffered behind it."""
    sync = FuturesBookSync()
    sync.on_diff(diff(95, 100, prev=90, bids=[("9.0", "7")]))
    sync.on_diff(diff(101, 105, prev=100, bids=[("9.0", "8")]))
    assert sync.on_snapshot(100, SNAP_BIDS, SNAP_ASKS) is Verdict.SYNCED
    assert sync.update_id == 105 and ["9.0", "8"] in sync.top()[0]


@pytest.mark.parametrize("make", [
    lambda n: SpotBookSync(max_buffer=n),
    lambda n: FuturesBookSync(max_buffer=n),
    lambda n: make_book_sync("spot", max_buffer=n),
    lambda n: make_book_sync("usdm", max_buffer=n),
], ids=["spot", "futures", "make spot", "make usdm"])
def test_the_buffer_stays_bounded_before_and_after_a_resync(make):
    sync = make(3)
    chained = isinstance(sync, FuturesBookSync)

    def d(first, last):
        return diff(first, last, prev=first - 1 if chained else None)
    for i in range(1, 8):
        sync.on_diff(d(i, i))
    assert sync.buffered == 3
    assert sync.on_snapshot(6, [], []) is Verdict.SYNCED
    assert sync.on_diff(d(20, 20)) is Verdict.RESYNC        # a gap: buffering again
    for i in range(21, 30):
        sync.on_diff(d(i, i))
    assert sync.buffered == 3, "the bound holds after a resync too"
