"""The parent's wiring without sockets or processes: edges that mutation
testing found unpinned (docs/mutation.md). Gap notices of every channel
without history, opened on a loss and closed by the next frame; a worker's
gap records checked and trimmed; the saved state restored into a new
parent (watermarks and the connection attempts of the budget window);
controls from workers acted on; actions carried out.
"""

from __future__ import annotations

import random
import shutil
import time
import types

from pathlib import Path

import msgpack
import pytest
import zmq

from feedsup import logs
from feedsup.config import Config, Connection, Restart, Stream
from feedsup.ipc import frames, topics
from feedsup.ipc.frames import Control
from feedsup.supervisor import parent as parent_mod, policy as pol, state as saved
from feedsup.supervisor.parent import Parent
from feedsup.supervisor.policy import State, StateChanged
from fakes import FakeProcess, FakePub, FakePull

CONN = Connection(liveness_timeout=1e9, connect_timeout=1e6, max_age=1e6)
PRICE = Stream(name="price", market="spot", channel="aggTrade", symbols=("BTCUSDT", "ETHUSDT"), connection=CONN)
KLINE = Stream(name="k", market="spot", channel="kline", symbols=("BTCUSDT",), intervals=("1m",), connection=CONN)
ACCT = Stream(name="acct", market="spot", channel="account", api_key_env="K", api_secret_env="S", connection=CONN)
NO_HISTORY = [
    Stream(name="s", market="spot", channel="bookTicker", symbols=("BTCUSDT", "ETHUSDT"), connection=CONN),
    Stream(name="s", market="spot", channel="miniTicker", symbols=("BTCUSDT", "ETHUSDT"), connection=CONN),
    Stream(name="s", market="spot", channel="ticker", symbols=("BTCUSDT", "ETHUSDT"), connection=CONN),
    Stream(name="s", market="usdm", channel="markPrice", symbols=("BTCUSDT", "ETHUSDT"), connection=CONN),
    Stream(name="s", market="spot", channel="depth", symbols=("BTCUSDT", "ETHUSDT"), connection=CONN),
]


@pytest.fixture
def make_parent(monkeypatch):
    made: list[Parent] = []

    def make(*streams: Stream, state_file: str = "", **restart) -> Parent:
        config = Config(path="test.toml", streams=streams, state_file=state_file,
                        restart=Restart(**{"backoff_initial": 1.0, "backoff_max": 4.0, **restart}))
        parent = Parent(config, random.Random(0))
        made.append(parent)
        parent.pub = FakePub()
        monkeypatch.setattr(parent_mod, "spawn", lambda spec, secret_names: FakeProcess(spec.stream.name,
                                                                                         spec.instance))
        return parent

    yield make
    for parent in made:
        shutil.rmtree(parent.rundir, ignore_errors=True)


def record(topic: str, major: int, recv_ns: int, stream: str, minor: int = 0, final: bool = True,
           **data) -> bytes:
    body = frames.encode_body(topic, stream, recv_ns, data or {"id": major})
    return frames.encode_data(topic.encode(), major, minor, final, body)


def drain(parent: Parent, inst: int, *records: bytes) -> None:
    parent._drain(FakePull([frames.encode_batch(inst, list(records))]), parent.pub)


def worker(parent: Parent, inst: int, stream: str) -> FakeProcess:
    proc = FakeProcess(stream, inst)
    parent.workers[inst] = proc
    return proc


# -- gap notices of the channels without history ------------------------------------

@pytest.mark.parametrize("stream", NO_HISTORY, ids=lambda s: s.channel)
def test_a_lost_source_opens_a_gap_on_every_topic_and_the_next_frame_closes_it(make_parent, stream):
    parent = make_parent(stream)
    names = topics.stream_topics(stream.channel, stream.symbols, stream.intervals, stream.topic_prefix)
    first, second = names
    worker(parent, 1, "s")
    drain(parent, 1, record(first, 10, 1_700_000_000_500_999_999, "s"))
    parent._execute([StateChanged("s", State.RUNNING, State.BACKOFF, "connection lost")])
    opened = {t: f for t, f in parent.pub.frames()[1:]}
    assert set(opened) == {first, second}
    for topic, frame in opened.items():
        assert (frame["topic"], frame["stream"], frame["data"]) == (topic, "s", None)
        assert type(frame["recv_ns"]) is int and type(frame["gap"]["from_ms"]) in (int, type(None))
        assert frame["gap"]["reason"] == "connection lost" and frame["gap"]["to_ms"] is None
    assert opened[first]["gap"]["from_ms"] == 1_700_000_000_500 and opened[first]["seq"] == 2
    assert opened[second]["gap"]["from_ms"] is None and opened[second]["seq"] == 1
    assert set(parent.open_gaps) == {first.encode(), second.encode()}
    # A second loss while the gap is open says nothing new.
    parent._execute([StateChanged("s", State.STARTING, State.BACKOFF, "connect failed")])
    assert len(parent.pub.frames()) == 3
    # The next frame of a topic closes its gap: the notice takes this seq,
    # the frame the next one.
    worker(parent, 2, "s")
    drain(parent, 2, record(first, 11, 1_700_000_009_000_000_000, "s"))
    (t1, closing), (t2, frame) = parent.pub.frames()[3:]
    assert (t1, t2) == (first, first)
    assert closing["gap"] == {"from_ms": 1_700_000_000_500, "to_ms": 1_700_000_009_000, "reason": "connection lost"}
    assert (closing["seq"], frame["seq"], frame["data"]) == (3, 4, {"id": 11})
    assert (closing["topic"], closing["stream"], closing["recv_ns"]) == (first, "s", 1_700_000_009_000_000_000)
    assert parent.pub.flags == [zmq.SNDMORE, 0] * 5, "every frame is topic + payload"
    assert set(parent.open_gaps) == {second.encode()}
    assert parent.last_values[first.encode()] == parent.pub.sent[-1]


def test_a_channel_with_history_announces_nothing_on_a_loss(make_parent):
    parent = make_parent(PRICE)
    parent._execute([StateChanged("price", State.RUNNING, State.BACKOFF, "connection lost")])
    parent._execute([StateChanged("price", State.STARTING, State.BACKOFF, "connect failed")])
    assert parent.pub.sent == [] and parent.open_gaps == {}


def test_leaving_a_state_other_than_running_announces_nothing(make_parent):
    parent = make_parent(NO_HISTORY[0])
    parent._execute([StateChanged("s", State.STARTING, State.BACKOFF, "connect failed")])
    assert parent.pub.sent == []


def test_a_gap_closed_by_an_unreadable_frame_body_still_goes_out(make_parent):
    parent = make_parent(NO_HISTORY[0])
    parent._execute([StateChanged("s", State.RUNNING, State.BACKOFF, "connection lost")])
    parent.pub.sent.clear()
    body = msgpack.packb({"topic": "bookTicker.BTCUSDT", "stream": "s", "recv_ns": "soon", "data": {}})
    parent._drain(FakePull([frames.encode_batch(9, [frames.encode_data(b"bookTicker.BTCUSDT", 5, 0, True,
                                                                        body)])]), parent.pub)
    (_, closing), (_, frame) = parent.pub.frames()
    assert closing["gap"]["to_ms"] is not None and closing["stream"] == "s"
    assert frame["seq"] == closing["seq"] + 1


# -- a worker's gap records ------------------------------------------------------------

def gap_record(topic: str, stream: str, from_ms: int | None = None, to_ms: int | None = None, **ids) -> bytes:
    return frames.encode_gap(topic.encode(), frames.encode_gap_body(topic, stream, 1, from_ms, to_ms,
                                                                     "backfill failed", **ids))


def test_a_kline_gap_record_is_trimmed_by_open_times(make_parent):
    parent = make_parent(KLINE)
    worker(parent, 1, "k")
    topic = "kline.BTCUSDT.1m"
    drain(parent, 1, record(topic, 120_000, 1, "k", minor=179_999, final=True),
          gap_record(topic, "k", from_ms=60_000, to_ms=240_000))
    gap = parent.pub.frames()[-1][1]["gap"]
    assert (gap["from_ms"], gap["to_ms"]) == (120_001, 240_000)


def test_a_worker_gap_record_takes_the_next_seq_and_becomes_the_last_value(make_parent):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    drain(parent, 1, record("aggTrade.BTCUSDT", 5, 1, "price"),
          gap_record("aggTrade.BTCUSDT", "price", from_id=9, to_id=12))
    (_, f1), (_, f2) = parent.pub.frames()
    assert f2["gap"]["from_id"] == 9 and (f1["seq"], f2["seq"]) == (1, 2)
    assert parent.last_values[b"aggTrade.BTCUSDT"] == parent.pub.sent[-1]
    assert parent.published == 2


@pytest.mark.parametrize("body, why", [
    (b"\x81\xc1\xc1", "gap record body is not msgpack"),
    (msgpack.packb({"reason": "x"}), "gap record body is not a gap notice"),
    (msgpack.packb({"gap": [1]}), "gap record body is not a gap notice"),
    (msgpack.packb({"gap": {}, "data": {}}), "gap record body is not a gap notice"),
])
def test_a_malformed_gap_record_gets_its_worker_restarted(make_parent, body, why):
    parent = make_parent(PRICE)
    proc = worker(parent, 1, "price")
    drain(parent, 1, frames.encode_gap(b"aggTrade.BTCUSDT", body))
    assert parent.pub.sent == [] and parent.rejected == 1
    assert [a.reason for a in parent._pending] == [f"refused: {why}"]
    assert proc.exit_report == {"reason": f"refused: {why}", "fatal": False}


# -- the saved state, restored into a new parent ------------------------------------------

def test_a_new_parent_resumes_from_the_marks_and_the_attempts_of_the_one_before(make_parent, tmp_path):
    state_file = str(tmp_path / "state")
    old = make_parent(PRICE, KLINE, state_file=state_file, connect_budget=5, budget_window=300.0)
    old._execute(old.policy.start(time.monotonic()))       # two connection attempts
    old.sequencer.admit(b"aggTrade.BTCUSDT", 41, 0, True)
    minute = (time.time_ns() // 1_000_000 // 60_000 - 5) * 60_000      # a kline of a few minutes ago
    old.sequencer.admit(b"kline.BTCUSDT.1m", minute, minute + 59_999, True)
    old._save_state()
    old._save_state(final=True)
    new = make_parent(PRICE, KLINE, state_file=state_file, connect_budget=5, budget_window=300.0)
    assert new._restore_state() is True
    assert new.sequencer.watermarks() == {"aggTrade.BTCUSDT": 41, "kline.BTCUSDT.1m": minute}
    assert new._resume_marks("price") == {"aggTrade.BTCUSDT": 41}
    assert new._resume_marks("k") == {"kline.BTCUSDT.1m": minute}
    assert len(new.policy.connect_attempts(time.monotonic())) == 2
    # The marks restored are what the next save keeps while nothing moved.
    new._save_state()
    assert saved.load(state_file).marks == {"aggTrade.BTCUSDT": (41, 0, True),
                                             "kline.BTCUSDT.1m": (minute, minute + 59_999, True)}


def test_without_a_state_file_nothing_is_restored_or_saved(make_parent, tmp_path):
    parent = make_parent(PRICE)
    assert parent._restore_state() is False
    parent._save_state()
    assert list(tmp_path.iterdir()) == []


def test_a_state_file_with_no_usable_mark_restores_no_marks(make_parent, tmp_path):
    state_file = str(tmp_path / "state")
    assert make_parent(PRICE, state_file=state_file)._restore_state() is False       # none yet
    (tmp_path / "state").write_bytes(b"\xc1 garbage")
    assert make_parent(PRICE, state_file=state_file)._restore_state() is False       # ignored, logged
    other = make_parent(KLINE, state_file=state_file)
    other.sequencer.admit(b"kline.BTCUSDT.1m", 60_000, 1, True)
    other._save_state()
    fresh = make_parent(PRICE, state_file=state_file)
    assert fresh._restore_state() is False and fresh.sequencer.watermarks() == {}


def test_a_state_that_cannot_be_written_is_logged_not_raised(make_parent, tmp_path):
    parent = make_parent(PRICE, state_file=str(tmp_path / "missing" / "state"))
    parent.sequencer.admit(b"aggTrade.BTCUSDT", 1, 0, True)
    parent._save_state()                 # must not raise


# -- controls from workers -----------------------------------------------------------------

def control(kind: str, inst: int, stream: str = "price", **fields) -> bytes:
    return frames.encode_control(kind, instance=inst, stream=stream, **fields)


def test_live_reports_give_a_rate_and_reach_the_metrics(make_parent):
    parent = make_parent(PRICE)
    parent._execute(parent.policy.start(0.0))
    (inst,) = parent.workers
    lags = []
    parent.metrics = types.SimpleNamespace(observe_lag=lambda stream, lag: lags.append((stream, lag)))
    parent._control_message(control(Control.LIVE, inst, stats={"msgs": 10, "idle": 0.1, "lag_ms": 7}))
    parent._control_message(control(Control.LIVE, inst, stats={"msgs": 30, "idle": 0.1, "lag_ms": None}))
    assert lags == [("price", 7)]
    assert parent.rates[inst][1] == 30 and parent.rates[inst][2] > 0


def test_ready_streaming_notice_and_exit_reports_reach_the_policy(make_parent):
    parent = make_parent(PRICE)
    parent._execute(parent.policy.start(0.0))
    (inst,) = parent.workers
    parent._control_message(control(Control.READY, inst))
    row = parent.status()["streams"][0]
    assert row["state"] == "RUNNING" and 0 <= row["uptime"] < 60, "running since the READY just now"
    parent._control_message(control(Control.STREAMING, inst))
    parent._control_message(control(Control.NOTICE, inst, event="serverShutdown"))
    assert any(isinstance(a, pol.Spawn) for a in parent._pending), "a server notice starts a successor"
    report = {"reason": "closed by server: 1008", "fatal": False, "close_code": 1008, "stats": {}}
    parent._control_message(control(Control.EXIT, inst, **report))
    assert parent.workers[inst].exit_report["reason"] == "closed by server: 1008"
    assert parent.rejected == 0


def test_controls_of_unknown_or_refused_workers_are_not_acted_on(make_parent):
    parent = make_parent(PRICE)
    parent._control_message(control(Control.READY, 77))
    assert parent._pending == [] and parent.rejected == 0
    proc = worker(parent, 5, "price")
    parent._misbehaving.add(5)
    parent._control_message(control(Control.EXIT, 5, reason="x", fatal=False))
    assert proc.exit_report is None


def test_a_control_the_policy_cannot_use_restarts_its_sender(make_parent, monkeypatch):
    parent = make_parent(PRICE)
    proc = worker(parent, 5, "price")
    monkeypatch.setattr(parent.policy, "on_ready", lambda inst, now: 1 / 0)
    parent._control_message(control(Control.READY, 5))
    assert [a.reason for a in parent._pending] == ["refused: control message not usable: ZeroDivisionError"]
    assert proc.exit_report["reason"] == "refused: control message not usable: ZeroDivisionError"


# -- actions -------------------------------------------------------------------------------

def test_actions_signal_the_workers_and_an_exit_returns_its_code(make_parent):
    parent = make_parent(PRICE)
    a, b = worker(parent, 1, "price"), worker(parent, 2, "price")
    assert parent._execute([pol.Terminate(1, "rotated"), pol.Kill(2, "stop timeout"),
                            pol.Terminate(99, "gone"), pol.Exit(3, "all fatal")]) == 3
    assert (a.signals, b.signals) == (["TERM"], ["KILL"])
    assert 1 in parent._superseded and 2 not in parent._superseded
    assert parent._execute([]) is None


def test_a_fatal_stream_announces_its_kline_and_prefixed_topics(make_parent):
    prefixed = Stream(name="u", market="usdm", channel="kline", symbols=("BTCUSDT",), intervals=("1m", "5m"),
                      topic_prefix="usdm.", connection=CONN)
    parent = make_parent(prefixed)
    parent._execute([StateChanged("u", State.RUNNING, State.FATAL, "invalid symbol: BTCUSDT")])
    assert [t for t, _ in parent.pub.frames()] == ["usdm.kline.BTCUSDT.1m", "usdm.kline.BTCUSDT.5m"]
    assert parent.open_gaps == {}, "a channel with history keeps no gap open"


# -- the sink gets what PUB gets ------------------------------------------------------------

class FakeSink:
    def __init__(self, seed=None) -> None:
        self.offered: list = []
        self.seed = seed
        self.asked = 0

    def offer(self, batch) -> None:
        self.offered.extend(batch)

    def seed_marks(self, now: float):
        self.asked += 1
        return self.seed

    def cap_marks(self, marks):
        return marks


def test_the_parents_own_gap_notices_reach_the_sink_without_an_exchange_key(make_parent):
    parent = make_parent(NO_HISTORY[0])
    parent.sink = FakeSink()
    parent._execute([StateChanged("s", State.RUNNING, State.BACKOFF, "connection lost")])
    parent._flush_sink()
    assert [(t, major, minor, final) for t, major, minor, final, _ in parent.sink.offered] == [
        (b"bookTicker.BTCUSDT", None, 0, False), (b"bookTicker.ETHUSDT", None, 0, False)]
    assert [p for *_, p in parent.sink.offered] == parent.pub.sent[1::2]


def test_topics_without_a_saved_mark_resume_from_what_the_sink_holds(make_parent):
    parent = make_parent(PRICE)
    assert parent._sink_seeded() is True                      # no sink: nothing to wait for
    parent.sink = FakeSink(seed=None)
    assert parent._sink_seeded() is False                     # the sink does not know yet
    parent.sequencer.admit(b"aggTrade.BTCUSDT", 50, 0, True)
    parent.sink.seed = {"aggTrade.BTCUSDT": (40, 0, True), "aggTrade.ETHUSDT": (7, 0, True)}
    assert parent._sink_seeded() is True
    assert parent.sequencer.watermarks() == {"aggTrade.BTCUSDT": 50, "aggTrade.ETHUSDT": 7}
    assert parent._sink_seeded() is True and parent.sink.asked == 2, "asked until it answers, then never"


# -- what a worker may publish ------------------------------------------------------------------

def test_a_reaped_workers_last_batch_may_carry_any_streams_account_topics(make_parent):
    parent = make_parent(PRICE, ACCT)
    drain(parent, 42, record("account.executionReport.acct", 5, 1, "acct"),
          record("aggTrade.BTCUSDT", 6, 1, "price"))
    assert [t for t, _ in parent.pub.frames()] == ["account.executionReport.acct", "aggTrade.BTCUSDT"]
    drain(parent, 43, record("account.executionReport.other", 7, 1, "acct"))
    assert len(parent.pub.frames()) == 2 and parent.rejected == 1


@pytest.mark.parametrize("topic, ok", [
    ("account.executionReport.acct", True),
    ("account.ORDER_TRADE_UPDATE.acct", True),
    ("account.executionReport.acct.x", False),
    ("accounts.executionReport.acct", False),
    ("account.exec-Report.acct", False),
    ("account.acct", False),
])
def test_an_account_stream_publishes_only_account_topics_of_its_own_name(make_parent, topic, ok):
    parent = make_parent(ACCT)
    assert parent._owns("acct", topic.encode()) == ok


def test_account_topics_are_bounded_in_length(make_parent):
    name = "a" * (256 - len("account.executionReport."))
    stream = Stream(name=name, market="spot", channel="account", api_key_env="K", api_secret_env="S",
                    connection=CONN)
    parent = make_parent(stream)
    topic = f"account.executionReport.{name}".encode()
    assert len(topic) == 256 and parent._owns(name, topic)
    assert not parent._owns(name, b"account.executionReportX." + name.encode())


def test_an_account_stream_name_may_hold_dots(make_parent):
    stream = Stream(name="desk.main", market="spot", channel="account", api_key_env="K", api_secret_env="S",
                    connection=CONN)
    parent = make_parent(stream)
    assert parent._owns("desk.main", b"account.executionReport.desk.main")


def test_a_market_stream_may_not_publish_account_topics(make_parent):
    parent = make_parent(PRICE)
    assert not parent._owns("price", b"account.executionReport.price")


def vet_parent(make_parent) -> Parent:
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    return parent


@pytest.mark.parametrize("body", [
    msgpack.packb({}),                                                               # an empty map
    msgpack.packb({**{f"k{i}": i for i in range(frames.MAX_BODY_KEYS - 1)},
                   "topic": "aggTrade.BTCUSDT"}),                                    # MAX_BODY_KEYS, no stream
])
def test_a_first_batch_whose_body_is_not_a_frame_is_refused(make_parent, body):
    parent = vet_parent(make_parent)
    drain(parent, 1, frames.encode_data(b"aggTrade.BTCUSDT", 1, 0, True, body))
    assert parent.pub.sent == [] and parent.rejected == 1


def test_a_gap_record_first_does_not_hide_a_bad_frame_after_it(make_parent):
    parent = vet_parent(make_parent)
    bad = frames.encode_data(b"aggTrade.BTCUSDT", 1, 0, True, msgpack.packb({"topic": "x"}))
    drain(parent, 1, gap_record("aggTrade.BTCUSDT", "price", from_id=1, to_id=2), bad)
    assert parent.pub.sent == [] and parent.rejected == 1


def test_a_workers_batches_are_decoded_in_full_once(make_parent):
    parent = vet_parent(make_parent)
    drain(parent, 1, record("aggTrade.BTCUSDT", 1, 1, "price"))
    assert parent._vetted == {1}


# -- the log lines -------------------------------------------------------------------------

class Lines(list):
    def emit(self, record) -> None:
        self.append((record.getMessage(), record.levelname, getattr(record, logs._FIELDS, {})))

    def named(self, event: str) -> list[tuple[str, dict]]:
        return [(level, fields) for name, level, fields in self if name == event]


@pytest.fixture
def lines():
    import logging
    got = Lines()
    handler = logging.Handler()
    handler.emit = got.emit
    old = parent_mod.log.level
    parent_mod.log.addHandler(handler)
    parent_mod.log.setLevel(logging.INFO)
    try:
        yield got
    finally:
        parent_mod.log.removeHandler(handler)
        parent_mod.log.setLevel(old)


def test_state_changes_and_the_exit_are_logged_with_their_fields(make_parent, lines):
    parent = make_parent(PRICE)
    parent._execute([StateChanged("price", State.STARTING, State.RUNNING, "ready"),
                     StateChanged("price", State.RUNNING, State.FATAL, "invalid symbol: X"),
                     pol.Exit(1, "every stream FATAL")])
    assert lines.named("state") == [
        ("INFO", {"stream": "price", "old": "STARTING", "new": "RUNNING", "reason": "ready"}),
        ("WARNING", {"stream": "price", "old": "RUNNING", "new": "FATAL", "reason": "invalid symbol: X"})]
    assert lines.named("exit") == [("INFO", {"code": 1, "reason": "every stream FATAL"})]


def test_signals_to_workers_are_logged_with_their_reason(make_parent, lines):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    worker(parent, 2, "price")
    parent._execute([pol.Terminate(1, "restart requested"), pol.Kill(2, "stop timeout")])
    assert [f["reason"] for _, f in lines.named("terminate")] == ["restart requested"]
    assert [(f["instance"], f["reason"]) for _, f in lines.named("kill")] == [(2, "stop timeout")]


def test_refusals_are_logged_with_the_sender_when_known(make_parent, lines):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    parent._control_message(b"C\xc1")
    drain(parent, 1, record("bookTicker.BTCUSDT", 1, 1, "price"))
    assert lines.named("rejected") == [
        ("WARNING", {"stream": None, "instance": None, "reason": "control message is not msgpack"}),
        ("WARNING", {"stream": "price", "instance": 1, "reason": "record on a topic its stream does not own"})]


def test_a_server_notice_is_logged(make_parent, lines):
    parent = make_parent(PRICE)
    parent._execute(parent.policy.start(time.monotonic()))
    (inst,) = parent.workers
    parent._control_message(control(Control.NOTICE, inst, event="serverShutdown"))
    assert lines.named("notice") == [("INFO", {"stream": "price", "instance": inst, "notice": "serverShutdown"})]


def test_state_restore_is_logged_with_what_was_kept_and_dropped(make_parent, lines, tmp_path):
    state_file = str(tmp_path / "state")
    old = make_parent(PRICE, KLINE, state_file=state_file, connect_budget=5, budget_window=300.0)
    old._execute(old.policy.start(time.monotonic()))
    old.sequencer.admit(b"aggTrade.BTCUSDT", 41, 0, True)
    old.sequencer.admit(b"kline.BTCUSDT.1m", 60_000, 1, True)
    old._save_state()
    new = make_parent(PRICE, state_file=state_file)              # the kline stream is gone
    new._restore_state()
    ((level, dropped),) = lines.named("state mark dropped")
    assert level == "WARNING" and dropped == {"file": state_file, "topic": "kline.BTCUSDT.1m",
                                              "mark": (60_000, 1, True), "reason": "topic no longer configured"}
    ((level, restored),) = lines.named("state restored")
    assert level == "INFO" and restored["age"].endswith("s") and float(restored["age"][:-1]) < 60
    assert {k: v for k, v in restored.items() if k != "age"} == {
        "file": state_file, "topics": 1, "dropped": 1, "recent_attempts": 2}


def test_an_unusable_state_file_is_logged_and_ignored(make_parent, lines, tmp_path):
    (tmp_path / "state").write_bytes(b"\xc1")
    make_parent(PRICE, state_file=str(tmp_path / "state"))._restore_state()
    ((level, fields),) = lines.named("state ignored")
    assert level == "WARNING" and fields["file"] == str(tmp_path / "state")
    assert fields["error"].startswith("unreadable state: ")


def test_a_state_that_cannot_be_saved_is_logged(make_parent, lines, tmp_path):
    path = str(tmp_path / "missing" / "state")
    make_parent(PRICE, state_file=path)._save_state()
    ((level, fields),) = lines.named("state not saved")
    assert level == "WARNING" and fields["file"] == path and "No such file" in fields["error"]


def test_the_saved_state_carries_its_time_and_attempts_as_wall_clock(make_parent, tmp_path):
    state_file = str(tmp_path / "state")
    parent = make_parent(PRICE, state_file=state_file, connect_budget=5, budget_window=300.0)
    before = time.time()
    parent._execute(parent.policy.start(time.monotonic()))
    parent._save_state()
    state = saved.load(state_file)
    after = time.time()
    assert before <= state.saved_at <= after
    assert len(state.attempts) == 1 and before - 1 <= state.attempts[0] <= after


# -- the control socket ---------------------------------------------------------------------

class FakeRouter:
    def __init__(self, requests: list[list[bytes]]) -> None:
        self.requests = list(requests)
        self.replies: list[list[bytes]] = []
        self.flags: list[int] = []

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        self.flags.append(flags)
        if not self.requests:
            raise zmq.Again()
        return self.requests.pop(0)

    def send_multipart(self, parts: list[bytes], flags: int = 0) -> None:
        self.flags.append(flags)
        self.replies.append(parts)


def test_requests_of_two_to_four_parts_are_answered_to_their_sender(make_parent):
    parent = make_parent(PRICE)
    ping = msgpack.packb({"cmd": "status"})
    router = FakeRouter([[b"one"], [b"a", ping], [b"b", b"", ping], [b"c", b"x", b"", ping],
                         [b"d", b"", b"", b"", ping], [b"e", b"", b"not msgpack \xc1"]])
    parent._serve_control(router)
    assert [r[0] for r in router.replies] == [b"a", b"b", b"c", b"e"]
    assert all(r[1] == b"" for r in router.replies)
    assert msgpack.unpackb(router.replies[-1][2]) == {"ok": False, "error": "request must be a map with a string 'cmd'"}
    assert set(router.flags) == {zmq.NOBLOCK}


def test_a_reply_value_msgpack_cannot_hold_is_sent_as_text(make_parent, monkeypatch):
    parent = make_parent(PRICE)
    monkeypatch.setattr(parent, "status", lambda: {"where": Path("/run/x")})
    router = FakeRouter([[b"id", b"", msgpack.packb({"cmd": "status"})]])
    parent._serve_control(router)
    assert msgpack.unpackb(router.replies[0][2]) == {"ok": True, "where": "/run/x"}


def test_a_failing_command_is_logged(make_parent, monkeypatch, lines):
    parent = make_parent(PRICE)
    monkeypatch.setattr(parent, "status", lambda: 1 / 0)
    parent._serve_control(FakeRouter([[b"id", b"", msgpack.packb({"cmd": "status"})]]))
    assert lines.named("control error") == [("WARNING", {"error": "ZeroDivisionError"})]


def test_serving_control_takes_in_the_hello_subscriptions(make_parent):
    parent = make_parent(PRICE)
    parent.pub = FakePub([b"\x01" + topics.HELLO_PREFIX.encode() + b"tok"])
    parent._serve_control(FakeRouter([]))
    assert b"tok" in parent._hellos


# -- the hot path ----------------------------------------------------------------------------

class FlagPull(FakePull):
    def __init__(self, messages: list[bytes]) -> None:
        super().__init__(messages)
        self.flags: list[int] = []

    def recv(self, flags: int = 0) -> bytes:
        self.flags.append(flags)
        return super().recv(flags)


def test_frames_go_out_as_topic_and_payload_without_blocking_and_are_counted(make_parent):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    pull = FlagPull([frames.encode_batch(1, [record("aggTrade.BTCUSDT", i, i, "price") for i in (1, 2, 3)])])
    parent._drain(pull, parent.pub)
    assert set(pull.flags) == {zmq.NOBLOCK}
    assert parent.pub.flags == [zmq.SNDMORE, 0] * 3
    assert parent.published == 3
    drain(parent, 1, record("aggTrade.BTCUSDT", 4, 4, "price"))
    assert parent.published == 4
    assert parent.last_values[b"aggTrade.BTCUSDT"] == parent.pub.sent[-1]


def test_a_seq_beyond_32_bits_is_spliced_in_whole(make_parent):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    drain(parent, 1, record("aggTrade.BTCUSDT", 1, 1, "price"))
    parent.sequencer._seq[b"aggTrade.BTCUSDT"] = 0xFFFFFFFE
    drain(parent, 1, record("aggTrade.BTCUSDT", 2, 2, "price"), record("aggTrade.BTCUSDT", 3, 3, "price"))
    got = [(f["seq"], f["data"], f["topic"], f["stream"]) for _, f in parent.pub.frames()[1:]]
    assert got == [(0xFFFFFFFF, {"id": 2}, "aggTrade.BTCUSDT", "price"),
                   (0x100000000, {"id": 3}, "aggTrade.BTCUSDT", "price")]


def test_kline_updates_pass_until_the_close_through_the_hot_path(make_parent):
    parent = make_parent(KLINE)
    worker(parent, 1, "k")
    t = "kline.BTCUSDT.1m"
    updates = [(60_000, 1, False), (60_000, 2, False), (60_000, 2, False), (60_000, 3, True), (60_000, 3, True),
               (60_000, 4, False), (120_000, 5, False)]
    drain(parent, 1, *[record(t, major, 1, "k", minor=minor, final=final, n=i)
                       for i, (major, minor, final) in enumerate(updates)])
    assert [(f["seq"], f["data"]["n"]) for _, f in parent.pub.frames()] == [(1, 0), (2, 1), (3, 3), (4, 6)]
    assert parent.rejected == 0


@pytest.mark.parametrize("older", [(0, 10**12, False), (30_000, 10**12, False), (59_999, 10**12, True)])
def test_an_older_kline_is_never_delivered_whatever_its_minor(make_parent, older):
    parent = make_parent(KLINE)
    worker(parent, 1, "k")
    t = "kline.BTCUSDT.1m"
    drain(parent, 1, record(t, 60_000, 30_000, "k", minor=30_000, final=False))
    major, minor, final = older
    drain(parent, 1, record(t, major, 1, "k", minor=minor, final=final))
    assert len(parent.pub.frames()) == 1 and parent.sequencer.marks()[t] == (60_000, 30_000, False)


def test_the_first_frame_after_restored_marks_is_seq_one(make_parent):
    parent = make_parent(PRICE)
    parent.sequencer.restore({"aggTrade.BTCUSDT": (10, 0, True)})
    worker(parent, 1, "price")
    drain(parent, 1, record("aggTrade.BTCUSDT", 10, 1, "price"), record("aggTrade.BTCUSDT", 11, 1, "price"))
    assert [(f["seq"], f["data"]["id"]) for _, f in parent.pub.frames()] == [(1, 11)]


def test_a_frame_after_a_gap_record_in_the_same_batch_is_published(make_parent):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    drain(parent, 1, gap_record("aggTrade.BTCUSDT", "price", from_id=1, to_id=4),
          record("aggTrade.BTCUSDT", 5, 1, "price"))
    assert [(f["seq"], f["data"]) for _, f in parent.pub.frames()] == [(1, None), (2, {"id": 5})]


@pytest.mark.parametrize("keys, ok", [(0, True), (frames.MAX_BODY_KEYS, True), (frames.MAX_BODY_KEYS + 1, False)])
def test_the_hot_path_takes_any_map_of_up_to_max_body_keys(make_parent, keys, ok):
    # Framing only: a vetted worker's bodies are not decoded again.
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    drain(parent, 1, record("aggTrade.BTCUSDT", 1, 1, "price"))          # vetted
    body = msgpack.packb({f"k{i}": i for i in range(keys)})
    drain(parent, 1, frames.encode_data(b"aggTrade.BTCUSDT", 2, 0, True, body))
    assert (len(parent.pub.frames()) == 2) == ok and parent.rejected == (0 if ok else 1)


def test_an_empty_batch_is_no_refusal(make_parent):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    parent._drain(FakePull([frames.batch_prefix(1)]), parent.pub)
    assert parent.rejected == 0 and parent.pub.sent == []


def test_other_workers_go_on_publishing_while_one_is_refused(make_parent):
    parent = make_parent(PRICE, ACCT)
    worker(parent, 1, "price")
    worker(parent, 2, "acct")
    bad_first = frames.encode_batch(1, [frames.encode_data(b"aggTrade.BTCUSDT", 1, 0, True, msgpack.packb({}))])
    good = frames.encode_batch(2, [record("account.executionReport.acct", 5, 1, "acct")])
    parent._drain(FakePull([bad_first, frames.encode_batch(1, [record("aggTrade.BTCUSDT", 2, 1, "price")]),
                            good]), parent.pub)
    assert [t for t, _ in parent.pub.frames()] == ["account.executionReport.acct"]
    parent._drain(FakePull([frames.encode_batch(2, [record("account.executionReport.acct", 6, 1, "acct")])]),
                  parent.pub)
    assert len(parent.pub.frames()) == 2


@pytest.mark.parametrize("message, reason", [
    (b"Z", "neither a batch nor a control message"),
    (frames.encode_batch(1, [b"X" + record("aggTrade.BTCUSDT", 1, 1, "price")[1:]]), "record of unknown kind"),
    (frames.encode_batch(1, [record("aggTrade.BTCUSDT", 1, 1, "price")[:12]]), "truncated record"),
    (frames.encode_batch(1, [record("aggTrade.BTCUSDT", 1, 1, "price")])[:-2],
     f"record out of bounds, or its body is not a msgpack map of at most {frames.MAX_BODY_KEYS} keys"),
    (frames.encode_batch(1, [record("bookTicker.BTCUSDT", 1, 1, "price")]), "record on a topic its stream does not own"),
])
def test_each_refusal_says_exactly_why(make_parent, lines, message, reason):
    parent = make_parent(PRICE)
    worker(parent, 1, "price")
    parent._vetted.add(1)
    parent._drain(FakePull([message]), parent.pub)
    assert [f["reason"] for _, f in lines.named("rejected")] == [reason]


def test_subscriptions_are_read_once_every_256_drains(make_parent):
    parent = make_parent(PRICE)
    parent.pub = FakePub([b"\x01" + topics.HELLO_PREFIX.encode() + b"tok"])
    for _ in range(255):
        parent._drain(FakePull([]), parent.pub)
    assert b"tok" not in parent._hellos
    parent._drain(FakePull([]), parent.pub)
    assert b"tok" in parent._hellos


# -- controls keep what was pending, and reach the policy with their instance and time ------

@pytest.mark.parametrize("kind, fields", [
    (Control.LIVE, {"stats": {"msgs": 1, "idle": 0.0}}), (Control.READY, {}), (Control.STREAMING, {}),
    (Control.NOTICE, {"event": "serverShutdown"})])
def test_a_control_adds_to_the_pending_actions(make_parent, kind, fields):
    parent = make_parent(PRICE)
    parent._execute(parent.policy.start(time.monotonic()))
    (inst,) = parent.workers
    if kind in (Control.LIVE, Control.NOTICE):
        parent._control_message(control(Control.READY, inst))
    earlier = pol.Exit(0, "an action queued earlier in this loop")
    parent._pending.insert(0, earlier)
    parent._control_message(control(kind, inst, **fields))
    assert parent._pending[0] is earlier and parent.rejected == 0


def test_live_stats_of_a_ready_worker_show_in_status(make_parent):
    parent = make_parent(PRICE)
    parent._execute(parent.policy.start(time.monotonic()))
    (inst,) = parent.workers
    parent._control_message(control(Control.READY, inst))
    parent._pending.clear()
    parent._control_message(control(Control.LIVE, inst, stats={"msgs": 10, "idle": 0.5, "lag_ms": 7, "drops": 2}))
    assert parent.rejected == 0 and parent._pending == []
    row = parent.status()["streams"][0]
    assert (row["state"], row["lag_ms"], row["drops"], row["last_msg_age"]) == ("RUNNING", 7, 2, 0.5)
    assert parent.policy.tick(time.monotonic()) == []


def test_streaming_alone_makes_the_stream_running(make_parent):
    parent = make_parent(PRICE)
    parent._execute(parent.policy.start(time.monotonic()))
    (inst,) = parent.workers
    parent._control_message(control(Control.STREAMING, inst))
    row = parent.status()["streams"][0]
    assert row["state"] == "RUNNING" and row["uptime"] >= 0


def test_a_first_batch_with_a_topic_that_is_not_utf8_is_refused(make_parent):
    parent = vet_parent(make_parent)
    body = frames.encode_body("x", "price", 1, {})
    drain(parent, 1, frames.encode_data(b"aggTrade.\xff\xfe", 1, 0, True, body))
    assert parent.pub.sent == [] and parent.rejected == 1


@pytest.mark.parametrize("body", [
    {"topic": "aggTrade.BTCUSDT", "stream": "price", "recv_ns": "1", "data": {}},
    {"topic": "aggTrade.BTCUSDT", "stream": "price", "recv_ns": 1},
])
def test_a_first_batch_body_needs_an_integer_recv_ns_and_data(make_parent, lines, body):
    parent = vet_parent(make_parent)
    drain(parent, 1, frames.encode_data(b"aggTrade.BTCUSDT", 1, 0, True, msgpack.packb(body)))
    assert parent.pub.sent == []
    assert [f["reason"] for _, f in lines.named("rejected")] == [
        "record body is not {topic, stream, recv_ns, data} of its own topic and stream"]


def test_a_first_batch_body_that_is_not_msgpack_says_so(make_parent, lines):
    parent = vet_parent(make_parent)
    drain(parent, 1, frames.encode_data(b"aggTrade.BTCUSDT", 1, 0, True, b"\x81\xc1\xc1"))
    assert [f["reason"] for _, f in lines.named("rejected")] == ["record body is not msgpack"]


def test_an_account_streams_gap_record_is_published_as_sent(make_parent):
    parent = make_parent(ACCT)
    worker(parent, 1, "acct")
    drain(parent, 1, gap_record("account.executionReport.acct", "acct", from_ms=5, to_ms=9))
    ((topic, frame),) = parent.pub.frames()
    assert topic == "account.executionReport.acct" and (frame["gap"]["from_ms"], frame["gap"]["to_ms"]) == (5, 9)


def test_an_unknown_senders_refusal_names_no_instance(make_parent, lines):
    parent = make_parent(PRICE)
    drain(parent, 42, frames.encode_data(b"nobody.owns.this", 1, 0, True, msgpack.packb({"a": 1})))
    assert lines.named("rejected") == [("WARNING", {"stream": None, "instance": None,
                                                    "reason": "record on a topic its stream does not own"})]


def test_every_gap_notice_counts_as_published(make_parent):
    parent = make_parent(NO_HISTORY[0])
    parent._execute([StateChanged("s", State.RUNNING, State.BACKOFF, "connection lost")])
    assert parent.published == 2


def test_the_sink_is_asked_with_the_current_time(make_parent):
    parent = make_parent(PRICE)
    asked = []
    parent.sink = FakeSink(seed={})
    parent.sink.seed_marks = lambda now: asked.append(now) or {}
    parent._sink_seeded()
    assert len(asked) == 1 and abs(asked[0] - time.monotonic()) < 60
