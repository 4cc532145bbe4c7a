"""Last-value cache and explicit gaps, end to end (issue 4)."""

from __future__ import annotations

import os
import signal
import time

import msgpack
import pytest

from feedsup.ipc.client import Subscriber, request
from harness import Collector, Feedsup, wait_for, write_config

BOOK = {"name": "book", "market": "spot", "channel": "bookTicker", "symbols": ["BTCUSDT", "ETHUSDT"]}
PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT", "ETHUSDT"]}


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4)


@pytest.fixture
def feedsup(sim, tmp_path):
    fs = Feedsup(write_config(tmp_path, sim, [BOOK, PRICE]), tmp_path)
    col = Collector(fs.pub)
    try:
        yield fs, col
    finally:
        col.close()
        fs.close()


def test_late_consumer_gets_snapshot_then_live_without_hole(feedsup, timing):
    fs, col = feedsup
    col.wait_count(40, timeout=20)
    prefixes = ("bookTicker.", "aggTrade.")
    with Subscriber(fs.pub, prefixes) as sub:
        t0 = time.monotonic()
        snapshot = sub.catch_up(fs.control, prefixes)
        timing("catch_up: hello + snapshot", time.monotonic() - t0)
        topics = {f["topic"] for f in snapshot}
        assert topics == {"bookTicker.BTCUSDT", "bookTicker.ETHUSDT", "aggTrade.BTCUSDT", "aggTrade.ETHUSDT"}
        snap_seq = {f["topic"]: f["seq"] for f in snapshot}
        first_live: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while len(first_live) < len(topics) and time.monotonic() < deadline:
            frame = sub.recv(timeout=1)
            if frame is not None:
                first_live.setdefault(frame["topic"], frame["seq"])
        assert first_live == {t: s + 1 for t, s in snap_seq.items()}, "live must continue right after the snapshot"
        assert sub.gaps == []


def test_lost_book_ticker_source_is_announced_as_a_gap(feedsup, timing):
    fs, col = feedsup
    col.wait_count(10, timeout=20, topic_prefix="bookTicker.BTCUSDT")
    pid = fs.wait_running("book")["pid"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    opened = wait_for(lambda: _gap_frames(col, "bookTicker.BTCUSDT", closed=False), 10, "an open gap notice")
    closed = wait_for(lambda: _gap_frames(col, "bookTicker.BTCUSDT", closed=True), 15, "the gap to close")
    timing("bookTicker source lost -> gap opened -> closed by fresh data", time.monotonic() - t0)
    gap_open, gap_closed = opened[0]["gap"], closed[0]["gap"]
    assert gap_open["from_ms"] is not None and gap_open["to_ms"] is None
    assert gap_closed["from_ms"] == gap_open["from_ms"] and gap_closed["to_ms"] > gap_closed["from_ms"]
    assert "SIGKILL" in gap_open["reason"]
    frames = [f for f in list(col.frames) if f["topic"] == "bookTicker.BTCUSDT"]
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap notices are numbered like any frame"
    i = frames.index(closed[0])
    assert frames[i + 1]["data"] is not None, "the closing notice comes right before the fresh frame"
    # Once fresh data flows, the cache hands a late consumer a value, not the notice.
    cached = msgpack.unpackb(request(fs.control, "last", prefix="bookTicker.BTCUSDT")["frames"][0])
    assert cached["data"] is not None and cached["seq"] > closed[0]["seq"]
    # aggTrade (history served over REST) gets no gap notice from the parent.
    assert not [f for f in list(col.frames) if f["topic"].startswith("aggTrade.") and f.get("gap")]


def _gap_frames(col: Collector, topic: str, closed: bool) -> list[dict]:
    return [f for f in list(col.frames) if f["topic"] == topic and f.get("gap")
            and (f["gap"]["to_ms"] is not None) == closed]


NO_HISTORY = [
    ("spot", "bookTicker", {}),
    ("spot", "miniTicker", {}),
    ("spot", "ticker", {}),
    ("usdm", "markPrice", {}),
    ("spot", "depth", {"depth_levels": 5}),
]


@pytest.mark.parametrize("market, channel, extra", NO_HISTORY, ids=[c for _, c, _ in NO_HISTORY])
def test_every_channel_without_history_announces_a_lost_source(start_sim, start_feedsup, market, channel, extra):
    """No REST history can fill what a dead worker missed on these channels:
    each topic hears a gap notice naming the cause, closed by fresh data."""
    sim = start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=4, book_rate=4)
    stream = {"name": "s", "market": market, "channel": channel, "symbols": ["BTCUSDT"], **extra}
    topic = f"{channel}.BTCUSDT"
    fs, col = start_feedsup(sim, [stream], collect=lambda fs: Collector(fs.pub, (topic,)))
    wait_for(lambda: [f for f in list(col.frames) if f["data"] is not None], 20, f"data on {topic}")
    pid = fs.wait_running("s")["pid"]
    os.kill(pid, signal.SIGKILL)
    opened = wait_for(lambda: [f for f in _gap_frames(col, topic, closed=False) if "SIGKILL" in f["gap"]["reason"]],
                      10, "an open gap notice naming the SIGKILL")
    gap = opened[0]["gap"]
    assert gap["from_ms"] is not None
    closed = wait_for(lambda: [f for f in _gap_frames(col, topic, closed=True) if f["seq"] > opened[0]["seq"]],
                      20, "the gap to close")
    assert closed[0]["gap"]["from_ms"] == gap["from_ms"] and closed[0]["gap"]["to_ms"] >= gap["from_ms"]


def test_a_slow_subscriber_past_pub_hwm_loses_frames_as_seq_gaps(start_sim, start_feedsup):
    """``pub_hwm`` bounds what the parent queues for one subscriber: one that
    does not read loses frames, and sees each loss as a ``seq`` gap; a
    subscriber that keeps up loses nothing."""
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=100)
    fs, fast = start_feedsup(sim, [PRICE], feedsup={"pub_hwm": 2000})
    slow = Subscriber(fs.pub, ("aggTrade.",), rcvhwm=10)
    try:
        fast.wait_count(1, 20, "aggTrade.")
        base = fast.count("aggTrade.")
        # The slow one reads nothing while the kernel's socket buffers and
        # both high-water marks fill up many times over.
        fast.wait_count(base + 5000, 30, "aggTrade.")
        newest = max(f["seq"] for f in list(fast.frames) if f["topic"] == "aggTrade.BTCUSDT")

        def caught_up() -> bool:
            while (f := slow.recv(timeout=0.1)) is not None:
                if f["topic"] == "aggTrade.BTCUSDT" and f["seq"] > newest:
                    return True
            return False
        wait_for(caught_up, 30, "the slow subscriber to read past the fast one's newest frame")
        assert slow.gaps and not any(g.restart for g in slow.gaps), slow.gaps
        assert sum(g.missed for g in slow.gaps) > 0
        assert fast.gaps == [], "a subscriber that keeps up loses nothing"
    finally:
        slow.close()
