"""The depth worker's decisions without sockets: what it sends, and when it
asks for snapshots.

``Books`` is fed diffs and snapshot results directly, with a fake runtime
that records the uplink in order and a fake fetcher that records requests.
``Announcer`` and ``snapshot_retry_delay`` are pure and take ``now``.
"""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace

import msgpack
import pytest

from feedsup.ipc import frames
from feedsup.procs import wait_for
from feedsup.workers.threads import Threads
from feedsup.workers import depth, rest


class FakeUplink:
    def __init__(self) -> None:
        self.sent: list[tuple] = []        # ("D"|"G", topic, body) or ("C", type)

    def send(self, record: bytes) -> None:
        for kind, topic, _, _, _, body in frames.iter_records(record):
            self.sent.append((chr(kind), topic.decode(), msgpack.unpackb(body)))

    def flush(self) -> None:
        pass

    def control(self, kind: str, **fields) -> bool:
        self.sent.append(("C", kind))
        return True


class FakeRuntime:
    def __init__(self, symbols: list[str], market: str = "spot") -> None:
        self.spec = SimpleNamespace(stream=SimpleNamespace(
            symbols=tuple(symbols), market=market, depth_levels=3, topic_prefix=""))
        self.name = "book"
        self.extra_stats: dict = {}
        self.uplink = FakeUplink()

    def streaming(self) -> None:
        self.uplink.control("streaming")


class FakeFetcher:
    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.requests: list[tuple[str, float]] = []

    def request(self, symbol: str, delay: float = 0.0) -> None:
        if symbol not in self.pending:
            self.pending.add(symbol)
            self.requests.append((symbol, delay))


def diff(symbol: str, first: int, last: int, price: str = "100") -> dict:
    return {"symbol": symbol, "event_time": 1_000 + last, "first_update_id": first, "last_update_id": last,
            "bids": [[price, str(last)]], "asks": [["200", "1"]]}


def snapshot(last_update_id: int) -> dict:
    return {"lastUpdateId": last_update_id, "bids": [["99", "1"]], "asks": [["201", "1"]]}


def shape(sent: list[tuple]) -> list[str]:
    """The uplink as short tags: D (book), C:type, G+ (open gap), G- (closing)."""
    tags = []
    for entry in sent:
        if entry[0] == "C":
            tags.append(f"C:{entry[1]}")
        elif entry[0] == "G":
            tags.append("G+" if entry[2]["gap"]["to_ms"] is None else "G-")
        else:
            tags.append(f"D:{entry[2]['data']['update_id']}")
    return tags


@pytest.fixture
def one_book():
    rt, fetcher = FakeRuntime(["BTCUSDT"]), FakeFetcher()
    return rt, fetcher, depth.Books(rt, fetcher, random.Random(7))


def sync(books: depth.Books, symbol: str, first: int, last: int, snap: int) -> None:
    books.on_diff(symbol, diff(symbol, first, last), time.time_ns())
    books.on_snapshot(symbol, snapshot(snap), "")


def test_streaming_follows_the_first_synced_book_not_the_first_diff(one_book):
    rt, fetcher, books = one_book
    books.on_diff("BTCUSDT", diff("BTCUSDT", 1, 10), 1)
    books.on_diff("BTCUSDT", diff("BTCUSDT", 11, 12), 2)
    assert rt.uplink.sent == [] and books.published == 0, "buffered diffs: nothing to say yet"
    assert fetcher.requests == [("BTCUSDT", 0.0)]
    books.on_snapshot("BTCUSDT", snapshot(11), "")
    assert shape(rt.uplink.sent) == ["D:12", "C:streaming"]
    books.on_diff("BTCUSDT", diff("BTCUSDT", 13, 13), 3)
    assert shape(rt.uplink.sent) == ["D:12", "C:streaming", "D:13"] and books.published == 2


def test_a_break_is_announced_at_once_and_once_however_many_snapshots_fail(one_book):
    rt, fetcher, books = one_book
    sync(books, "BTCUSDT", 1, 10, 5)
    books.on_diff("BTCUSDT", diff("BTCUSDT", 11, 11), 1_700_000_000_000_000_000)
    fetcher.pending.clear()
    books.on_diff("BTCUSDT", diff("BTCUSDT", 20, 21), 1_700_000_001_000_000_000)   # 12..19 lost
    assert shape(rt.uplink.sent) == ["D:10", "C:streaming", "D:11", "G+"], "announced before any snapshot"
    opened = rt.uplink.sent[-1][2]
    assert opened["topic"] == "depth.BTCUSDT" and opened["data"] is None
    assert opened["gap"] == {"from_ms": 1_700_000_000_000, "to_ms": None, "reason": depth.BREAK_REASON}
    for _ in range(4):
        books.on_snapshot("BTCUSDT", None, "HTTP 503")
    books.on_diff("BTCUSDT", diff("BTCUSDT", 22, 23), 5)
    assert shape(rt.uplink.sent)[-1] == "G+" and shape(rt.uplink.sent).count("G+") == 1
    books.on_snapshot("BTCUSDT", snapshot(22), "")
    assert shape(rt.uplink.sent)[3:] == ["G+", "G-", "D:23"]
    closing, book = rt.uplink.sent[-2][2]["gap"], rt.uplink.sent[-1][2]
    assert closing["from_ms"] == opened["gap"]["from_ms"] and closing["reason"] == depth.BREAK_REASON
    assert closing["to_ms"] == book["recv_ns"] // 1_000_000
    assert books.stats["resyncs"] == 1 and books.stats["snapshot_errors"] == 4 and books.stats["gaps"] == 1


def test_failed_snapshots_are_asked_for_again_after_a_growing_delay(one_book):
    rt, fetcher, books = one_book
    books.on_diff("BTCUSDT", diff("BTCUSDT", 1, 10), 1)
    for _ in range(12):
        books.on_snapshot("BTCUSDT", None, "HTTP 503")
    assert fetcher.requests[0] == ("BTCUSDT", 0.0), "the first snapshot is asked for at once"
    delays = [d for _, d in fetcher.requests[1:]]
    assert len(delays) == 12 and min(delays) >= depth.RETRY_INITIAL_S / 2
    assert delays[:6] == sorted(delays[:6]), delays
    assert max(delays) <= depth.RETRY_MAX_S and delays[-1] >= depth.RETRY_MAX_S / 2
    # A malformed or stale snapshot counts as a failure too.
    books.on_snapshot("BTCUSDT", {"lastUpdateId": 11}, "")
    assert fetcher.requests[-1][1] >= depth.RETRY_MAX_S / 2
    # Once synced, a later break asks at once again.
    books.on_snapshot("BTCUSDT", snapshot(9), "")
    assert books.syncs["BTCUSDT"].synced
    fetcher.pending.clear()
    books.on_diff("BTCUSDT", diff("BTCUSDT", 30, 31), 2)
    assert fetcher.requests[-1] == ("BTCUSDT", 0.0)


def test_a_stale_snapshot_is_asked_for_again_after_a_delay(one_book):
    rt, fetcher, books = one_book
    books.on_diff("BTCUSDT", diff("BTCUSDT", 10, 12), 1)
    books.on_snapshot("BTCUSDT", snapshot(5), "")          # older than the first buffered U
    assert rt.uplink.sent == []
    assert fetcher.requests[-1][1] >= depth.RETRY_INITIAL_S / 2


def test_handover_waits_for_every_book_or_the_grace():
    rt, fetcher = FakeRuntime(["BTCUSDT", "ETHUSDT"]), FakeFetcher()
    books = depth.Books(rt, fetcher, random.Random(1))
    books.on_diff("ETHUSDT", diff("ETHUSDT", 1, 3), 1)       # ETH is buffering
    sync(books, "BTCUSDT", 1, 10, 5)
    assert shape(rt.uplink.sent) == ["D:10"], "the other book is not synced yet: no handover"
    books.tick(time.monotonic())
    assert shape(rt.uplink.sent) == ["D:10"]
    books.tick(time.monotonic() + depth.HANDOVER_GRACE_S + 1)
    assert shape(rt.uplink.sent) == ["D:10", "C:streaming", "G+"]
    gap = rt.uplink.sent[-1]
    assert gap[1] == "depth.ETHUSDT" and gap[2]["gap"]["reason"] == depth.NOT_SYNCED_REASON
    books.on_snapshot("ETHUSDT", snapshot(2), "")
    assert shape(rt.uplink.sent)[3:] == ["G-", "D:3"]
    books.tick(time.monotonic() + 100)
    assert shape(rt.uplink.sent).count("C:streaming") == 1


def test_every_book_synced_hands_over_at_once():
    rt, fetcher = FakeRuntime(["BTCUSDT", "ETHUSDT"]), FakeFetcher()
    books = depth.Books(rt, fetcher)
    books.on_diff("ETHUSDT", diff("ETHUSDT", 1, 3), 1)
    sync(books, "BTCUSDT", 1, 10, 5)
    books.on_snapshot("ETHUSDT", snapshot(2), "")
    assert shape(rt.uplink.sent) == ["D:10", "D:3", "C:streaming"]


# -- Announcer (pure) ------------------------------------------------------------

def test_announcer_says_nothing_for_a_book_it_never_served():
    a = depth.Announcer(["A", "B"], grace=5)
    assert a.lost("A", None, "x") is None, "not streaming, never published: the old worker serves it"
    assert a.start_streaming(100.0) is None, "no synced book: no handover"
    assert a.synced("A", 1_000, now=100.0) is None
    assert a.lost("A", 1_000, "break") == depth.Gap("A", 1_000, None, "break"), "published here: announce"
    assert a.lost("A", 1_000, "again") is None, "announced once"
    assert a.synced("A", 2_000, now=101.0) == depth.Gap("A", 1_000, 2_000, "break")
    assert a.start_streaming(104.9) is None
    assert a.start_streaming(105.0) == [depth.Gap("B", None, None, depth.NOT_SYNCED_REASON)]
    assert a.streaming and a.start_streaming(200.0) is None


def test_announcer_streams_at_once_when_every_book_is_synced():
    a = depth.Announcer(["A", "B"], grace=5)
    a.synced("A", 1, now=0.0)
    assert a.start_streaming(0.0) is None
    a.synced("B", 2, now=0.1)
    assert a.start_streaming(0.1) == [] and a.streaming
    assert a.lost("B", 2, "break") == depth.Gap("B", 2, None, "break")


@pytest.mark.parametrize("failures, low, high", [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0),
                                                 (7, 15.0, 30.0), (1000, 15.0, 30.0)])
def test_snapshot_retry_delay(failures, low, high):
    assert depth.snapshot_retry_delay(failures, 0.0) == low
    assert low <= depth.snapshot_retry_delay(failures, 0.5) <= high
    assert depth.snapshot_retry_delay(failures, 0.999999) == pytest.approx(high, rel=1e-5)


# -- SnapshotFetcher: the thin thread around the requests ------------------------------

class FakeClient:
    def __init__(self, fail: int) -> None:
        self.calls: list[tuple[str, float]] = []
        self.fail = fail

    def fetch(self, path, params, deadline):
        self.calls.append((params["symbol"], time.monotonic()))
        if len(self.calls) <= self.fail:
            raise rest.RestFailed("HTTP 503")
        return snapshot(1)


def test_fetcher_asks_each_symbol_when_it_is_due():
    client = FakeClient(fail=1)
    fetcher = depth.SnapshotFetcher("spot", client, threading.Event())
    fetcher.start(Threads())
    try:
        t0 = time.monotonic()
        fetcher.request("LATE", 0.3)
        fetcher.request("LATE", 0.0)      # already on its way: not asked twice
        fetcher.request("NOW")
        wait_for(lambda: len(fetcher.results) == 2, 5, "both snapshots")
        assert [r[0] for r in fetcher.results] == ["NOW", "LATE"]
        assert fetcher.results[0][1] is None and fetcher.results[1][1] == snapshot(1)
        assert [c[0] for c in client.calls] == ["NOW", "LATE"]
        assert client.calls[1][1] - t0 >= 0.3
    finally:
        fetcher.close()
        fetcher._thread.join(5)
    assert not fetcher._thread.is_alive()


def test_a_snapshot_the_buffered_diffs_cannot_follow_is_retried_after_a_delay(one_book):
    """Diffs lost while buffering: every snapshot reveals a break, which must
    not turn into a stream of immediate snapshot requests."""
    rt, fetcher, books = one_book
    books.on_diff("BTCUSDT", diff("BTCUSDT", 1, 10), 1)
    books.on_diff("BTCUSDT", diff("BTCUSDT", 20, 21), 2)      # 11..19 never arrived
    books.on_snapshot("BTCUSDT", snapshot(5), "")
    assert not books.syncs["BTCUSDT"].synced and books.stats["resyncs"] == 1
    assert fetcher.requests[-1][1] >= depth.RETRY_INITIAL_S / 2
    assert rt.uplink.sent == [], "never synced, never served: nothing to announce"
