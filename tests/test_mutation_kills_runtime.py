"""The worker runtime in-process (docs/mutation.md): what a worker reports
(EXIT reason, fatal flag, exit code, stats), how it reads a frame and
classifies an ended connection. The e2e tests see these only through a
worker process, which mutation testing cannot map to the code it runs.

A real ``Runtime`` is built on a temporary ipc uplink read by the test;
its threads are never started. The WebSocket is a fake.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket

import pytest
import websocket
import zmq

from feedsup.config import Connection, Endpoint, Stream
from feedsup.ipc import frames
from feedsup.ipc.exits import EX_CONFIG, EX_STOPPED, EX_TEMPFAIL, UPGRADE_REFUSED, UPGRADE_REJECTED
from feedsup.ipc.spec import WorkerSpec
from feedsup.workers import runtime
from feedsup.workers.runtime import ConnectionEnded, Runtime

OP = websocket.ABNF


class FakeWS:
    def __init__(self, *frames_: tuple[int, bytes] | BaseException) -> None:
        self.frames = list(frames_)
        self.sock = None
        self.shut = 0
        self.asked: list = []

    def recv_data(self, control_frame: bool = False):
        self.asked.append(control_frame)
        item = self.frames.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def shutdown(self) -> None:
        self.shut += 1


@pytest.fixture
def parent_end(tmp_path):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{tmp_path}/up")

    def controls() -> list[dict]:
        out = []
        while pull.poll(2000 if not out else 100):
            raw = pull.recv()
            if raw[:1] == bytes((frames.CONTROL,)):
                out.append(frames.decode_control(raw))
        return out

    try:
        yield controls
    finally:
        pull.close(linger=0)
        ctx.term()


@pytest.fixture
def make_rt(tmp_path):
    made: list[Runtime] = []
    old = {s: signal.getsignal(s) for s in runtime.STOP_SIGNALS}

    def make() -> Runtime:
        conn = Connection(ping_interval=30.0, ping_timeout=10.0, liveness_interval=1.0, liveness_timeout=5.0)
        stream = Stream(name="w", market="spot", channel="aggTrade", symbols=("BTCUSDT",), connection=conn)
        spec = WorkerSpec(stream=stream, endpoint=Endpoint(ws_url="ws://127.0.0.1:9", rest_url="http://127.0.0.1:9"),
                          uplink=f"ipc://{tmp_path}/up", parent_pid=os.getppid(), instance=7, rundir=str(tmp_path))
        rt = Runtime(spec)
        made.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in made:
            if not rt.ctx.closed:
                rt.uplink.sock.close(linger=0)
                rt.ctx.term()
            os.close(rt._wake_r)
            os.close(rt._wake_w)
        for s, h in old.items():      # finish() ignores stop signals from then on
            signal.signal(s, h)


# -- how a connection ends -----------------------------------------------------------

@pytest.mark.parametrize("ending, signalled, ended, code, reason, fatal", [
    (None, None, ConnectionEnded("closed by server: 1008", close_code=1008), EX_TEMPFAIL, "closed by server: 1008",
     False),
    (None, None, ConnectionEnded("invalid symbol: X", fatal=True), EX_CONFIG, "invalid symbol: X", True),
    ("terminated", None, ConnectionEnded("connection lost", fatal=True), EX_STOPPED, "terminated", False),
    (None, signal.SIGTERM, ConnectionEnded("connection lost"), EX_STOPPED, "terminated", False),
    ("ping/pong timed out", None, ConnectionEnded("bad frame", fatal=True), EX_TEMPFAIL, "ping/pong timed out",
     False),
])
def test_finish_reports_why_and_returns_the_exit_code(make_rt, parent_end, ending, signalled, ended, code,
                                                       reason, fatal):
    rt = make_rt()
    ws = FakeWS()
    rt.ws = ws
    rt._end_reason = ending
    rt._signalled = signalled
    rt.counters.msgs = 3
    assert rt.finish(ended) == code
    (exit_msg,) = parent_end()
    assert exit_msg["type"] == "exit"
    assert (exit_msg["stream"], exit_msg["instance"], exit_msg["reason"], exit_msg["fatal"]) == (
        "w", 7, reason, fatal)
    assert exit_msg["close_code"] == ended.close_code and exit_msg["stats"]["msgs"] == 3
    assert ws.shut == 1 and rt._stop.is_set()
    assert all(signal.getsignal(s) == signal.SIG_IGN for s in runtime.STOP_SIGNALS)


def test_ready_streaming_and_notices_name_the_stream_and_instance(make_rt, parent_end):
    rt = make_rt()
    rt.ready(market="spot")
    rt.streaming()
    rt.notice("serverShutdown", event_time=5)
    rt.uplink.flush()
    got = [{k: v for k, v in m.items() if k != "v"} for m in parent_end()]
    assert got == [{"type": "ready", "stream": "w", "instance": 7, "market": "spot"},
                   {"type": "streaming", "stream": "w", "instance": 7},
                   {"type": "notice", "stream": "w", "instance": 7, "event": "serverShutdown", "event_time": 5}]


def test_end_keeps_the_first_reason_and_shuts_the_socket(make_rt):
    rt = make_rt()
    a, b = socket.socketpair()
    try:
        rt.ws = type("WS", (), {"sock": a})()
        assert rt.ending is None
        rt.end("ping/pong timed out")
        rt.end("terminated")
        assert rt.ending == "ping/pong timed out" and rt._stop.is_set()
        assert b.recv(1) == b""          # our side shut down: the peer sees EOF
    finally:
        a.close()
        b.close()


def test_the_signal_handler_records_the_signal(make_rt):
    rt = make_rt()
    rt._on_signal(signal.SIGINT, None)
    assert rt._signalled == signal.SIGINT and rt.ending is None


# -- stats --------------------------------------------------------------------------

def test_stats_before_anything_arrived(make_rt):
    rt = make_rt()
    rt.extra_stats["books"] = 2
    assert rt.stats(100.0) == {"msgs": 0, "bytes": 0, "malformed": 0, "drops": 0, "idle": None, "lag_ms": None,
                               "age": None, "pings": 0, "books": 2}


def test_stats_count_lag_age_and_idle_time_since_progress(make_rt):
    rt = make_rt()
    rt.connected_at = 90.0
    c = rt.counters
    c.msgs, c.bytes, c.malformed, c.last_event_ms, c.last_recv_ms = 5, 500, 1, 1_000, 1_250
    s = rt.stats(100.0)
    assert (s["msgs"], s["bytes"], s["malformed"], s["lag_ms"], s["age"], s["idle"]) == (5, 500, 1, 250, 10.0, 0.0)
    assert rt.stats(104.0)["idle"] == 4.0          # nothing new since 100
    c.msgs = 6
    assert rt.stats(106.0)["idle"] == 0.0          # progress at 106
    assert rt.stats(107.5)["idle"] == 1.5


def test_idle_follows_the_workers_own_progress(make_rt):
    rt = make_rt()
    books = [0]
    rt.progress = lambda: books[0]
    rt.counters.msgs = 50                          # diffs, but no book yet
    assert rt.stats(10.0)["idle"] is None
    books[0] = 1
    assert rt.stats(11.0)["idle"] == 0.0 and rt.stats(13.0)["idle"] == 2.0


# -- reading a frame ----------------------------------------------------------------

def test_receive_counts_data_and_stamps_it(make_rt):
    rt = make_rt()
    ws = FakeWS((OP.OPCODE_TEXT, b'{"a":1}'), (OP.OPCODE_BINARY, b"xyz"))
    payload, recv_ns = runtime.receive(rt, ws)
    assert payload == b'{"a":1}' and recv_ns > 1_600_000_000 * 10**9
    assert runtime.receive(rt, ws)[0] == b"xyz"
    assert (rt.counters.msgs, rt.counters.bytes) == (2, 10)
    assert ws.asked == [True, True], "control frames are asked for: pongs and closes come back"


def test_receive_hands_pongs_to_the_pinger(make_rt):
    rt = make_rt()
    seen = []
    rt.pinger.on_pong = seen.append
    assert runtime.receive(rt, FakeWS((OP.OPCODE_PONG, b"17"))) is None
    assert seen == [b"17"] and rt.counters.msgs == 0
    assert runtime.receive(rt, FakeWS((OP.OPCODE_PING, b"x"))) is None


def test_receive_turns_a_close_into_its_reason_and_code(make_rt):
    rt = make_rt()
    with pytest.raises(ConnectionEnded) as info:
        runtime.receive(rt, FakeWS((OP.OPCODE_CLOSE, b"\x03\xf0going away")))
    assert (info.value.reason, info.value.close_code, info.value.fatal) == (
        "closed by server: 1008 going away", 1008, False)
    rt.end("terminated")
    with pytest.raises(ConnectionEnded) as info:
        runtime.receive(rt, FakeWS((OP.OPCODE_CLOSE, b"\x03\xe8")))
    assert (info.value.reason, info.value.close_code) == ("terminated", 1000)


def test_receive_names_what_the_connection_was_doing_when_it_broke(make_rt):
    rt = make_rt()
    with pytest.raises(ConnectionEnded, match="^snapshot: ConnectionResetError: reset$"):
        runtime.receive(rt, FakeWS(ConnectionResetError("reset")), lost="snapshot")
    with pytest.raises(ConnectionEnded, match="^connection lost: WebSocketConnectionClosedException: gone$"):
        runtime.receive(rt, FakeWS(websocket.WebSocketConnectionClosedException("gone")))
    with pytest.raises(websocket.WebSocketTimeoutException):
        runtime.receive(rt, FakeWS(websocket.WebSocketTimeoutException("slow")))
    rt.end("terminated")
    with pytest.raises(ConnectionEnded, match="^terminated$"):
        runtime.receive(rt, FakeWS(OSError("shut")))


@pytest.mark.parametrize("payload, reason, code", [
    (b"\x03\xe8", "closed by server: 1000", 1000),
    (b"\x0f\xa0bye", "closed by server: 4000 bye", 4000),
    (b"\x03", "closed by server", None),
    (b"", "closed by server", None),
    (b"\x03\xe8\xff bad", "closed by server: 1000 \ufffd bad", 1000),
])
def test_close_reason(payload, reason, code):
    assert runtime.close_reason(payload) == (reason, code)


@pytest.mark.parametrize("status, fatal", [(403, False), (418, False), (429, False), (500, False), (503, False),
                                           (400, True), (401, True), (404, True), (499, True)])
def test_an_upgrade_refused_for_a_while_is_retried_a_wrong_request_is_not(status, fatal):
    reason, got_fatal = runtime.classify_status(status, "Handshake status x\nsecond line")
    assert got_fatal == fatal
    if fatal:
        assert reason == f"{UPGRADE_REJECTED}: HTTP {status} (Handshake status x)"
    else:
        assert reason == f"{UPGRADE_REFUSED}: HTTP {status}"


def test_a_rejected_upgrade_quotes_at_most_200_characters():
    reason, _ = runtime.classify_status(400, "y" * 500)
    assert reason == f"{UPGRADE_REJECTED}: HTTP 400 ({'y' * 200})"


# -- what is not a market event --------------------------------------------------------

def test_server_shutdown_is_a_notice_anything_else_is_malformed(make_rt, parent_end):
    rt = make_rt()
    runtime.handle_other(rt, b'{"stream":"x","data":{"e":"serverShutdown","E":42}}')
    runtime.handle_other(rt, b'{"e":"serverShutdown","E":43}')
    assert rt.counters.malformed == 0
    for payload in (b"not json", b"nor this", b'{"e":"somethingElse"}', b"[1,2]", b'{"data":[1]}'):
        runtime.handle_other(rt, payload)
    assert rt.counters.malformed == 5
    rt.uplink.flush()
    assert [(m["event"], m["event_time"]) for m in parent_end()] == [("serverShutdown", 42), ("serverShutdown", 43)]


def test_read_event_normalises_a_market_event_and_counts_the_rest(make_rt):
    rt = make_rt()
    seen = []

    def normalise(event):
        seen.append(event)
        if event.get("bad"):
            raise runtime.MalformedEvent("bad")
        return "t", {"x": event["x"]}, 1, 0, True

    ws = FakeWS((OP.OPCODE_TEXT, b'{"data":{"x":5}}'), (OP.OPCODE_TEXT, b'{"data":{"bad":1}}'),
                (OP.OPCODE_TEXT, b'{"nodata":1}'), (OP.OPCODE_PONG, b""))
    recv_ns, event, normalised = runtime.read_event(rt, ws, normalise)
    assert event == {"x": 5} and normalised == ("t", {"x": 5}, 1, 0, True) and recv_ns > 0
    assert runtime.read_event(rt, ws, normalise) is None
    assert runtime.read_event(rt, ws, normalise) is None
    assert runtime.read_event(rt, ws, normalise) is None
    assert rt.counters.malformed == 2 and rt.counters.msgs == 3


# -- symbols ----------------------------------------------------------------------------

def test_symbols_the_exchange_does_not_list_are_fatal(make_rt, monkeypatch, tmp_path):
    rt = make_rt()
    asked = []

    def invalid_symbols(market, rest_url, symbols, timeout, budget):
        asked.append((market, rest_url, symbols, timeout, budget.path))
        return answer

    monkeypatch.setattr(runtime.rest, "invalid_symbols", invalid_symbols)
    answer: list[str] = []
    runtime.check_symbols(rt)
    answer = ["FOOUSDT", "BARUSDT"]
    with pytest.raises(ConnectionEnded) as info:
        runtime.check_symbols(rt)
    assert info.value.fatal
    assert info.value.reason == "invalid symbol: FOOUSDT, BARUSDT (not listed by the exchange)"
    assert asked[1] == ("spot", "http://127.0.0.1:9", ("BTCUSDT",), rt.conn.connect_timeout,
                        str(tmp_path / "restweight-spot.json"))


def test_a_server_notice_that_is_no_market_event_is_reported(make_rt, parent_end):
    rt = make_rt()

    def normalise(event):
        raise runtime.MalformedEvent("not a market event")

    ws = FakeWS((OP.OPCODE_TEXT, b'{"stream":"x","data":{"e":"serverShutdown","E":7}}'))
    assert runtime.read_event(rt, ws, normalise) is None
    assert rt.counters.malformed == 0
    rt.uplink.flush()
    assert [(m["type"], m["event"]) for m in parent_end()] == [("notice", "serverShutdown")]


@pytest.mark.parametrize("orphaned", [False, True])
def test_an_orphan_does_not_linger_on_its_last_frames(make_rt, parent_end, monkeypatch, orphaned):
    rt = make_rt()
    if orphaned:
        rt.spec = dataclasses.replace(rt.spec, parent_pid=os.getppid() + 100_000)
    closes = []
    real_close = rt.uplink.close

    def close(linger_ms=None):
        closes.append(linger_ms)
        real_close(linger_ms=linger_ms)

    monkeypatch.setattr(rt.uplink, "close", close)
    rt.finish(ConnectionEnded("connection lost"))
    assert closes == [0 if orphaned else None]
