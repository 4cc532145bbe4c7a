"""Account resync in-process, with a fake connection and a fake session
(docs/mutation.md): the e2e tests drive it through a real worker process,
which mutation testing cannot map to the code it runs, and whose checks
are only as strict as the simulator's timing allows.

What is pinned here: events read while the snapshot is in flight come out
after it, every one of them, flagged ``backfill: true`` and keyed newer
than anything the connection delivered; ``as_of`` moves up to the newest
change they report; live events whose change happened at or before
``as_of`` are flagged too; malformed and ignored messages are counted and
skipped; the snapshot thread's error reaches the reader.
"""

from __future__ import annotations

import os
import socket
import threading
import types
from collections import deque
from typing import Any

import msgpack
import orjson
import pytest
import websocket

from feedsup.workers.threads import Threads
from feedsup.binance.account_normalise import REPLAY_MINOR, EventOrder
from feedsup.binance.normalise import MalformedEvent
from feedsup.ipc import frames
from feedsup.procs import wait_for
from feedsup.workers import account
from feedsup.workers.keepalive import Pinger
from feedsup.workers.runtime import ConnectionEnded, Counters

SNAPSHOT = {"market": "spot", "update_time": 1, "balances": [{"asset": "BTC", "free": "1", "locked": "0"}],
            "open_orders": [], "time": 5_000, "as_of": 3_000}


class FakeUplink:
    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.flushes = 0

    def send(self, record: bytes) -> None:
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1

    def sent(self) -> list[tuple[str, int, int, bool, dict]]:
        return [(topic.decode(), major, minor, final, msgpack.unpackb(body))
                for record in self.records for _, topic, major, minor, final, body in frames.iter_records(record)]


class FakeWS:
    """Frames queued by the test; one byte on a socketpair per frame, so
    select and ``wait_readable`` see them as a real socket's."""

    def __init__(self) -> None:
        self.sock, self._peer = socket.socketpair()
        self.frames: deque[tuple[int, bytes]] = deque()
        self.frame_buffer = types.SimpleNamespace(recv_strict=lambda n: b"")

    def push(self, msg: Any, opcode: int = websocket.ABNF.OPCODE_TEXT) -> None:
        self.frames.append((opcode, msg if isinstance(msg, bytes) else orjson.dumps(msg)))
        self._peer.send(b"x")

    def hang_up(self) -> None:
        self._peer.close()

    def recv_data(self, control_frame: bool = False) -> tuple[int, bytes]:
        if self.sock is None or not self.sock.recv(1):
            raise websocket.WebSocketConnectionClosedException("closed")
        return self.frames.popleft()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self._peer.close()


def event(name: str, e: int, change: int | None = None, **extra: Any) -> dict:
    """A message the fake session turns into ``account.<name>``; ``change``
    is the event's change time (balanceUpdate's clear_time)."""
    data = {"clear_time": change} if change is not None else {}
    return {"e": name, "E": e, "data": {**data, **extra}}


class FakeSession:
    def __init__(self, ws: FakeWS, snapshot: dict | None = None, before=lambda: None) -> None:
        self.ws = ws
        self.snap = dict(snapshot or SNAPSHOT)
        self.before = before          # runs on the snapshot thread before it answers
        self.closed = False
        self.error: BaseException | None = None

    def open(self) -> FakeWS:
        return self.ws

    def snapshot(self) -> dict:
        self.before()
        if self.error is not None:
            raise self.error
        return dict(self.snap)

    def event_of(self, msg: Any) -> dict | None:
        return msg if isinstance(msg, dict) and "e" in msg else None

    def handle(self, ev: dict) -> tuple[str, dict, int] | None:
        if ev["e"] == "bad":
            raise MalformedEvent("bad")
        if ev["e"] == "ignored":
            return None
        return f"account.{ev['e']}", ev["data"], ev["E"]

    def close(self) -> None:
        self.closed = True


def make_rt(market: str = "spot") -> types.SimpleNamespace:
    rt = types.SimpleNamespace(name="acct", uplink=FakeUplink(), counters=Counters(), extra_stats={},
                               pinger=Pinger(1e9, 1e9), ending=None, calls=[], threads=Threads(),
                               spec=types.SimpleNamespace(stream=types.SimpleNamespace(market=market)))
    rt.ready = lambda **fields: rt.calls.append(("ready", fields))
    rt.streaming = lambda: rt.calls.append(("streaming", {}))
    return rt


@pytest.fixture(autouse=True)
def fake_events(monkeypatch):
    """The fake connection's events are not Binance's: ``account.handle``
    (the market's normaliser tables) takes them as ``FakeSession.handle``
    says. The real tables are tested in test_account_normalise.py."""
    monkeypatch.setattr(account, "handle", lambda rt, ev: FakeSession.handle(None, ev))


@pytest.fixture
def ws():
    w = FakeWS()
    yield w
    w.close()


def test_events_read_during_the_snapshot_follow_it_as_replays_keyed_newer(ws):
    rt = make_rt()
    order = EventOrder()
    assert order.key("account.balanceUpdate.acct", 1_000) == (1_000, 1)    # delivered live before
    ws.push(event("balanceUpdate", 1_000, change=900, n=1))
    ws.push(event("balanceUpdate", 4_000, change=3_500, n=2))
    ws.push(event("outboundAccountPosition", 3_200, n=3))
    # The snapshot answers only once the reader has taken all three: they
    # were read while it was in flight.
    session = FakeSession(ws, before=lambda: wait_for(lambda: rt.counters.msgs == 3, 10, "events read"))
    as_of = account.resync(rt, ws, session, order)
    assert as_of == 3_500                          # the newest change a replay reports
    sent = rt.uplink.sent()
    assert [s[0] for s in sent] == ["account.snapshot.acct", "account.balanceUpdate.acct",
                                    "account.balanceUpdate.acct", "account.outboundAccountPosition.acct"]
    topic, major, minor, final, body = sent[0]
    assert (major, minor, final) == (5_000, 0, False)
    assert body["data"] == {**SNAPSHOT, "as_of": 3_500} and "backfill" not in body
    assert body["topic"] == "account.snapshot.acct" and type(body["recv_ns"]) is int and body["recv_ns"] > 0
    replays = sent[1:]
    assert [b["data"].get("n") for *_, b in replays] == [1, 2, 3]
    assert all(b["backfill"] is True and b["stream"] == "acct" for *_, b in replays)
    assert [(major, minor, final) for _, major, minor, final, _ in replays] == [
        (4_000, REPLAY_MINOR + 1, False), (4_000, REPLAY_MINOR + 2, False), (3_200, REPLAY_MINOR + 1, False)]
    assert all(b["topic"] == t and type(b["recv_ns"]) is int and b["recv_ns"] > 0 for t, *_, b in replays)
    assert rt.uplink.flushes == 1
    assert rt.counters.last_event_ms == 3_200


def test_a_resync_with_nothing_read_publishes_the_snapshot_alone(ws):
    rt = make_rt()
    assert account.resync(rt, ws, FakeSession(ws), EventOrder()) == SNAPSHOT["as_of"]
    assert [(t, major) for t, major, *_ in rt.uplink.sent()] == [("account.snapshot.acct", 5_000)]


def test_events_already_buffered_when_the_snapshot_is_in_are_replays_too(ws):
    rt = make_rt()
    ws.push(event("balanceUpdate", 1_000, change=900))
    ws.push(event("balanceUpdate", 1_100, change=1_000))
    account.resync(rt, ws, FakeSession(ws), EventOrder())
    assert [b.get("backfill") for *_, b in rt.uplink.sent()] == [None, True, True]


def test_a_failed_snapshot_reaches_the_reader(ws):
    session = FakeSession(ws)
    session.error = ConnectionEnded("snapshot failed: HTTP 500")
    with pytest.raises(ConnectionEnded, match="snapshot failed"):
        account.resync(make_rt(), ws, session, EventOrder())


def test_malformed_and_ignored_messages_are_counted_and_skipped(ws):
    rt = make_rt()
    rt.extra_stats["ignored"] = 0
    ws.push(b"not json")
    ws.push(event("bad", 1))
    ws.push(event("ignored", 1))
    ws.push({"result": None, "id": 1})               # a request reply: no event
    ws.push(event("balanceUpdate", 7, change=6))
    got = [account.receive(rt, ws, FakeSession(ws)) for _ in range(5)]
    assert got[:4] == [None] * 4
    topic, data, e, recv_ns = got[4]
    assert (topic, data, e) == ("account.balanceUpdate.acct", {"clear_time": 6}, 7) and recv_ns > 0
    assert rt.counters.malformed == 2 and rt.extra_stats["ignored"] == 2
    assert rt.counters.last_recv_ms == recv_ns // 1_000_000


def test_drain_takes_what_is_buffered_and_does_not_wait(ws):
    rt = make_rt()
    ws.push(event("balanceUpdate", 1, change=1))
    ws.push(event("ignored", 2))
    ws.push(event("balanceUpdate", 3, change=3))
    got = account.drain(rt, ws, FakeSession(ws))
    assert [e for _, _, e, _ in got] == [1, 3]
    assert account.drain(rt, ws, FakeSession(ws)) == []


def test_run_flags_live_events_the_snapshot_may_contain(ws, monkeypatch):
    rt = make_rt()
    session = FakeSession(ws)
    monkeypatch.setattr(account, "credentials", lambda rt: None)
    monkeypatch.setattr(account, "make_session", lambda rt, creds: session)
    ended: list[BaseException] = []

    def worker() -> None:
        try:
            account.run(rt)
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        wait_for(lambda: ("streaming", {}) in rt.calls, 10, "the snapshot out")
        # After the snapshot (as_of 3000): a push late for a change at 2900,
        # one exactly at as_of, one after it, one without a change time.
        ws.push(event("balanceUpdate", 3_100, change=2_900, n="late"))
        ws.push(event("balanceUpdate", 3_200, change=3_000, n="at"))
        ws.push(event("balanceUpdate", 3_300, change=3_001, n="live"))
        ws.push(event("outboundAccountPosition", 3_400, n="no change time"))
        ws.push(event("outboundAccountPosition", 3_400, n="same E"))
    finally:
        ws.hang_up()
        thread.join(10)
    assert not thread.is_alive() and isinstance(ended[0], ConnectionEnded)
    assert session.closed
    assert rt.calls == [("ready", {"market": "spot"}), ("streaming", {})]
    live = rt.uplink.sent()[1:]
    assert [(b["data"]["n"], b.get("backfill", False)) for *_, b in live] == [
        ("late", True), ("at", True), ("live", False), ("no change time", False), ("same E", False)]
    assert [(major, minor, final) for _, major, minor, final, _ in live] == [
        (3_100, 1, False), (3_200, 1, False), (3_300, 1, False), (3_400, 1, False), (3_400, 2, False)]
    assert rt.extra_stats == {"ignored": 0}


def test_the_snapshot_thread_wakes_the_reader_and_closes_its_pipe():
    done = threading.Event()
    fetch = account.SnapshotFetch(types.SimpleNamespace(snapshot=lambda: (done.wait(5), {"time": 1})[1]), Threads())
    fetch.start()
    assert not fetch.done()
    done.set()
    wait_for(fetch.done, 5, "the snapshot")
    assert os.read(fetch.wake_r, 1) == b"x"
    fetch.join()
    assert fetch.result() == {"time": 1}
    with pytest.raises(OSError):
        os.fstat(fetch.wake_r)


def test_stream_topic():
    assert account.stream_topic("account.snapshot", "acct") == "account.snapshot.acct"


def test_events_keep_being_read_however_long_the_snapshot_takes(ws):
    rt = make_rt()
    # The snapshot answers only after the third event, and the test sends
    # each event only once the one before was read: the reader must go on
    # reading, after each wake-up, until the snapshot is in.
    session = FakeSession(ws, before=lambda: wait_for(lambda: rt.counters.msgs == 3, 10, "three events read"))
    out: list = []
    thread = threading.Thread(target=lambda: out.append(account.resync(rt, ws, session, EventOrder())),
                              daemon=True)
    thread.start()
    for n in (1, 2, 3):
        ws.push(event("balanceUpdate", 1_000 + n, change=900 + n, n=n))
        wait_for(lambda: rt.counters.msgs == n, 10, f"event {n} read")
    thread.join(15)
    assert out == [SNAPSHOT["as_of"]]
    assert [b["data"].get("n") for *_, b in rt.uplink.sent()] == [None, 1, 2, 3]


def test_the_snapshot_thread_is_a_daemon_named_for_what_it_does():
    fetch = account.SnapshotFetch(types.SimpleNamespace(snapshot=lambda: {}), Threads())
    fetch.start()
    assert fetch._thread.daemon and fetch._thread.name == "snapshot"


def test_a_drain_of_a_connection_already_gone_returns_what_it_has(ws):
    ws.sock.close()
    ws.sock = None
    assert account.drain(make_rt(), ws, FakeSession(ws)) == []


def test_the_snapshot_is_logged_with_its_size(ws):
    import logging
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    old = account.log.level
    account.log.addHandler(handler)
    account.log.setLevel(logging.INFO)
    try:
        account.publish_snapshot(make_rt(), {**SNAPSHOT, "open_orders": [{}, {}]})
    finally:
        account.log.removeHandler(handler)
        account.log.setLevel(old)
    assert lines == ["snapshot published: 1 balances, 2 open orders"]


def test_a_connection_lost_during_the_snapshot_does_not_wait_for_it(ws):
    """The worker reports the lost connection after at most
    SNAPSHOT_JOIN_S, not whenever a hung REST call returns."""
    release = threading.Event()
    returned = []

    def slow_snapshot() -> None:
        release.wait(20)
        returned.append(True)

    session = FakeSession(ws, before=slow_snapshot)
    ws.hang_up()
    try:
        with pytest.raises(ConnectionEnded):
            account.resync(make_rt(), ws, session, EventOrder())
        assert returned == [], "gave up on the snapshot rather than waiting for it"
    finally:
        release.set()
