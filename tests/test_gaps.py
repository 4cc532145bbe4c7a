"""The parent's gap decisions (feedsup/supervisor/gaps.py), without a parent."""

from __future__ import annotations

from feedsup.supervisor.gaps import Announce, closed, on_loss

TOPICS = ["bookTicker.BTCUSDT", "bookTicker.ETHUSDT"]


def last_ms(topic: bytes) -> int | None:
    return 1_000 if topic == b"bookTicker.BTCUSDT" else None


def test_a_channel_with_history_announces_nothing_unless_fatal():
    assert on_loss("kline", ["kline.1m.BTCUSDT"], {}, last_ms, "ping timeout", False) == []
    assert on_loss("kline", ["kline.1m.BTCUSDT"], {}, last_ms, "invalid symbol", True) == [
        Announce("kline.1m.BTCUSDT", {"from_ms": None, "to_ms": None, "reason": "invalid symbol"}, False)]


def test_a_channel_without_history_opens_a_gap_per_topic_once():
    first = on_loss("bookTicker", TOPICS, {}, last_ms, "ping timeout", False)
    assert first == [
        Announce("bookTicker.BTCUSDT", {"from_ms": 1_000, "to_ms": None, "reason": "ping timeout"}, True),
        Announce("bookTicker.ETHUSDT", {"from_ms": None, "to_ms": None, "reason": "ping timeout"}, True),
    ]
    open_gaps = {a.topic.encode(): a.gap for a in first}
    assert on_loss("bookTicker", TOPICS, open_gaps, last_ms, "again", False) == []
    # FATAL: heard again, with the FATAL reason, from where the gap began.
    again = on_loss("bookTicker", TOPICS, open_gaps, last_ms, "fatal: credentials", True)
    assert [a.gap for a in again] == [{"from_ms": 1_000, "to_ms": None, "reason": "fatal: credentials"},
                                      {"from_ms": None, "to_ms": None, "reason": "fatal: credentials"}]


def test_a_gap_closes_at_the_next_frame():
    assert closed({"from_ms": 1_000, "to_ms": None, "reason": "x"}, 5_000_123_456) == {
        "from_ms": 1_000, "to_ms": 5_000, "reason": "x"}
