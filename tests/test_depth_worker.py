"""The depth worker against the simulator's own book.

A published top-N frame must equal a REST snapshot taken at the same update
id: we poll the simulator's ``depth`` endpoint until its ``lastUpdateId``
matches frames the worker published, at several points, on spot (U/u rules)
and USD-M (pu chaining), two symbols on one connection each. A stalled depth
stream loses diffs; the worker must notice the sequence break, resync by
itself and publish a correct book again.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from feedsup.sim import SimServer
from harness import Collector, Feedsup, wait_for, write_config

LEVELS = 20
# Topics do not name the market (depth.BTCUSDT on spot and USD-M would be
# one topic), so each market gets its own symbols here.
SYMBOLS = {"book": ["BTCUSDT", "ETHUSDT"], "fbook": ["BNBUSDT", "SOLUSDT"]}
STREAMS = [
    {"name": name, "market": market, "channel": "depth", "symbols": SYMBOLS[name], "depth_levels": LEVELS}
    for name, market in (("book", "spot"), ("fbook", "usdm"))
]
PATHS = {"book": "/api/v3/depth", "fbook": "/fapi/v1/depth"}


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=2, symbols=tuple(SYMBOLS["book"] + SYMBOLS["fbook"]), trade_rate=2, book_rate=4, ping_interval=1, pong_timeout=3)


@pytest.fixture
def running(sim, tmp_path):
    fs = Feedsup(write_config(tmp_path, sim, STREAMS), tmp_path)
    col = Collector(fs.pub, ("depth.",))
    try:
        yield fs, col
    finally:
        col.close()
        fs.close()


def snapshot(sim: SimServer, path: str, symbol: str) -> dict:
    url = f"{sim.base_url}{path}?{urllib.parse.urlencode({'symbol': symbol, 'limit': 100})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def books(col: Collector, stream: str, symbol: str) -> list[dict]:
    """The published books of ``symbol`` (gap notices left out)."""
    return [f for f in list(col.frames)
            if f["stream"] == stream and f["topic"] == f"depth.{symbol}" and f["data"] is not None]


def notices(col: Collector, topic: str) -> list[dict]:
    return [f["gap"] for f in list(col.frames) if f["topic"] == topic and "gap" in f]


def published(col: Collector, stream: str, symbol: str) -> dict[int, dict]:
    return {f["data"]["update_id"]: f["data"] for f in books(col, stream, symbol)}


def matches(sim: SimServer, col: Collector, stream: str, symbol: str, wanted: int, timeout: float) -> int:
    """Take snapshots until ``wanted`` of them match a published frame with
    the same update id; every such frame must equal the snapshot's top N."""
    snaps: dict[int, dict] = {}
    checked: set[int] = set()

    def compare() -> bool:
        snap = snapshot(sim, PATHS[stream], symbol)
        snaps[snap["lastUpdateId"]] = snap
        frames = published(col, stream, symbol)
        for uid in set(snaps) & set(frames) - checked:
            frame, truth = frames[uid], snaps[uid]
            assert frame["bids"] == truth["bids"][:LEVELS], f"{stream} {symbol} bids at {uid}"
            assert frame["asks"] == truth["asks"][:LEVELS], f"{stream} {symbol} asks at {uid}"
            assert frame["symbol"] == symbol and frame["event_time"] > 0
            checked.add(uid)
        return len(checked) >= wanted

    wait_for(compare, timeout, f"{wanted} {stream} {symbol} frames matching a snapshot", poll=0.1)
    return len(checked)


def update_ids(col: Collector, stream: str, symbol: str) -> list[int]:
    return [f["data"]["update_id"] for f in books(col, stream, symbol)]


def test_published_books_equal_the_simulators_book(sim, running, timing):
    fs, col = running
    t0 = time.monotonic()
    for stream in PATHS:
        fs.wait_running(stream)
        for symbol in SYMBOLS[stream]:
            col.wait_count(1, 15, f"depth.{symbol}")
    timing("start -> first synced book frames", time.monotonic() - t0)
    for stream in PATHS:
        for symbol in SYMBOLS[stream]:
            matches(sim, col, stream, symbol, wanted=3, timeout=15)
            ids = update_ids(col, stream, symbol)
            assert ids == sorted(set(ids)), "update ids only grow, each published once"
    assert col.gaps == []


def test_a_sequence_break_resyncs_the_book_in_place(sim, running, timing):
    fs, col = running
    fs.wait_running("book")
    col.wait_count(5, 15, "depth.BTCUSDT")
    pid = fs.stream("book")["pid"]
    matches(sim, col, "book", "BTCUSDT", wanted=1, timeout=15)
    t0 = time.monotonic()
    # The simulator drops the BTCUSDT diffs for a moment: the next diff does
    # not chain on the book, which must be thrown away and rebuilt.
    sim.inject("data_stall", target={"stream": "btcusdt@depth@100ms"}, duration=0.5)
    wait_for(lambda: fs.stream("book")["stats"].get("resyncs", 0) >= 1, 10,
             f"a resync ({fs.stream('book')})")
    before = max(update_ids(col, "book", "BTCUSDT"))
    wait_for(lambda: max(update_ids(col, "book", "BTCUSDT")) > before, 10, "frames after the resync")
    timing("depth sequence break -> resynced book published", time.monotonic() - t0)
    # Consumers were told: an open gap notice, then a closing one before the new book.
    opened, closed = wait_for(lambda: len(notices(col, "depth.BTCUSDT")) >= 2 and notices(col, "depth.BTCUSDT"),
                              5, "the gap notices of the resync")[:2]
    assert opened["to_ms"] is None and closed["to_ms"] is not None and closed["from_ms"] == opened["from_ms"]
    matches(sim, col, "book", "BTCUSDT", wanted=2, timeout=15)
    assert fs.stream("book")["pid"] == pid, f"resynced in place, not by a restart: {fs.stream('book')}"
    # One snapshot per symbol at start, one more for the resync. The counter
    # travels in liveness pings, which may trail the frames by a ping period.
    wait_for(lambda: fs.stream("book")["stats"].get("snapshots", 0) >= 3, 5, "the resync snapshot counted")
    matches(sim, col, "book", "ETHUSDT", wanted=1, timeout=15)   # the other book never stopped


ONE_BOOK = [{"name": "book", "market": "spot", "channel": "depth", "symbols": ["BTCUSDT"], "depth_levels": LEVELS}]


def test_a_rotation_waits_for_the_successors_synced_book(sim, start_feedsup, timing):
    """Make before break: a successor whose snapshots fail must not take
    over; the old worker keeps publishing until the successor has a book."""
    fs, col = start_feedsup(sim, ONE_BOOK, collect=lambda fs: Collector(fs.pub, ("depth.",)),
                            connection={"stale_after": 10})
    fs.wait_running("book")
    col.wait_count(3, 15, "depth.BTCUSDT")
    old = fs.stream("book")["pid"]
    sim.inject("rest_error", status=503, duration=60)
    sim.inject("server_shutdown", delay=60)          # the old connection stays up meanwhile
    wait_for(lambda: fs.stream("book")["successor"] is not None, 10, "a successor")
    t0 = time.monotonic()
    # The successor is buffering diffs it cannot turn into a book: the old
    # worker must still be the one publishing, seconds later.
    wait_for(lambda: [f for f in books(col, "book", "BTCUSDT") if f["_t"] > t0 + 3], 10,
             "books published by the old worker while the successor has none")
    row = fs.stream("book")
    assert row["pid"] == old and row["successor"] is not None and row["rotations"] == 0, row
    assert notices(col, "depth.BTCUSDT") == []
    sim.clear_faults()
    wait_for(lambda: fs.stream("book")["rotations"] == 1, 20, "the handover once the successor has a book")
    timing("REST back -> depth rotation handed over", time.monotonic() - t0 - 3)
    assert fs.stream("book")["pid"] != old
    before = max(update_ids(col, "book", "BTCUSDT"))
    wait_for(lambda: max(update_ids(col, "book", "BTCUSDT")) > before, 10, "books from the successor")
    assert notices(col, "depth.BTCUSDT") == [], "make before break: no gap"
    matches(sim, col, "book", "BTCUSDT", wanted=1, timeout=15)


def test_a_book_that_cannot_resync_is_announced_and_goes_stale(sim, start_feedsup, timing):
    """Diffs keep coming but no snapshot does: the topic gets a gap notice at
    once, and the parent restarts the worker as stale (stale_after = 3 s)."""
    fs, col = start_feedsup(sim, ONE_BOOK, collect=lambda fs: Collector(fs.pub, ("depth.",)))
    fs.wait_running("book")
    col.wait_count(3, 15, "depth.BTCUSDT")
    sim.inject("rest_error", status=503, duration=60)
    t0 = time.monotonic()
    sim.inject("data_stall", target={"stream": "btcusdt@depth@100ms"}, duration=0.5)
    wait_for(lambda: notices(col, "depth.BTCUSDT"), 10, "a gap notice")
    timing("depth sequence break -> gap notice published", time.monotonic() - t0)
    announced = next(f for f in list(col.frames) if "gap" in f)
    first = announced["gap"]
    assert first["to_ms"] is None and "sequence" in first["reason"], first
    wait_for(lambda: fs.stream("book")["restarts"] >= 1, 15, "a stale restart")
    timing("depth sequence break -> stale restart", time.monotonic() - t0)
    assert fs.stream("book")["last_reason"].startswith("stale"), fs.stream("book")
    assert not [f for f in books(col, "book", "BTCUSDT") if f["seq"] > announced["seq"]], "no book while REST fails"
