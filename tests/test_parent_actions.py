"""The parent carrying out policy actions, without sockets or processes:
``spawn`` and the PUB socket are replaced by fakes; the policy is the real one.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import shutil

import msgpack
import pytest

from feedsup.config import Config, Connection, Restart, Stream
from feedsup.supervisor import parent as parent_mod, state as saved
from feedsup.supervisor.parent import Parent
from feedsup.supervisor.policy import Restarted, State, StateChanged
from fakes import FakeProcess

CONN = Connection(liveness_timeout=1e9, connect_timeout=1e6, max_age=1e6)
PRICE = Stream(name="price", market="spot", channel="aggTrade", symbols=("BTCUSDT", "ETHUSDT"), connection=CONN)
BOOK = Stream(name="book", market="spot", channel="bookTicker", symbols=("BTCUSDT",), connection=CONN)


class FakePub:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> None:
        self.sent.append(data)

    def frames(self) -> list[tuple[str, dict]]:
        return [(t.decode(), msgpack.unpackb(p)) for t, p in zip(self.sent[::2], self.sent[1::2])]


class FakeMetrics:
    def __init__(self) -> None:
        self.restarts: list[tuple[str, str]] = []

    def count_restart(self, stream: str, reason: str) -> None:
        self.restarts.append((stream, reason))

    def update(self, status) -> None:
        pass


@pytest.fixture
def make_parent(monkeypatch):
    made: list[Parent] = []

    def make(*streams: Stream, **restart) -> Parent:
        config = Config(path="test.toml", streams=streams,
                        restart=Restart(**{"backoff_initial": 1.0, "backoff_max": 4.0, **restart}))
        parent = Parent(config, random.Random(0))
        made.append(parent)
        parent.pub = FakePub()
        parent.metrics = FakeMetrics()
        monkeypatch.setattr(parent_mod, "spawn", lambda spec, secret_names: FakeProcess(spec.stream.name, spec.instance))
        return parent

    yield make
    for parent in made:
        shutil.rmtree(parent.rundir, ignore_errors=True)


def run_pending(parent: Parent) -> list:
    actions, parent._pending = parent._pending, []
    parent._execute(actions)
    return actions


@pytest.mark.parametrize("error", [
    BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
    OSError(errno.ENOMEM, "Cannot allocate memory"),
])
def test_a_failed_popen_becomes_backoff_not_a_parent_crash(make_parent, monkeypatch, error):
    parent = make_parent(PRICE)

    def failing_spawn(spec, secret_names):
        raise error
    monkeypatch.setattr(parent_mod, "spawn", failing_spawn)
    parent._execute(parent.policy.start(0.0))      # must not raise
    assert parent.workers == {}
    changes = [a for a in run_pending(parent) if isinstance(a, StateChanged)]
    assert [(c.old, c.new) for c in changes] == [(State.STARTING, State.BACKOFF)]
    assert changes[0].reason.startswith("spawn failed") and error.strerror in changes[0].reason
    row = parent.policy.status(0.0)[0]
    assert row["state"] == "BACKOFF" and row["backoff_until"] is not None
    # When Popen works again, the retry spawns a worker.
    monkeypatch.setattr(parent_mod, "spawn", lambda spec, secret_names: FakeProcess(spec.stream.name, spec.instance))
    parent._execute(parent.policy.tick(row["backoff_until"]))
    assert [w.stream for w in parent.workers.values()] == ["price"]
    assert parent.policy.status(0.0)[0]["state"] == "STARTING"


def test_restarts_are_counted_with_their_reason_and_a_first_budget_wait_is_not_one(make_parent):
    parent = make_parent(PRICE, BOOK, connect_budget=1, budget_window=100.0)
    parent._execute(parent.policy.start(0.0))
    assert parent.policy.status(0.0)[1]["state"] == "BACKOFF"     # book waits for the budget
    assert parent.metrics.restarts == []
    (instance,) = parent.workers
    parent._execute(parent.policy.on_ready(instance, 0.5))
    parent._execute(parent.policy.request_restart("price", 1.0))
    assert parent.metrics.restarts == [("price", "restart requested")]
    parent._execute(parent.policy.on_exit(instance, 0, "terminated", False, 1.5))   # budget: BACKOFF
    assert parent.metrics.restarts == [("price", "restart requested")]


def test_a_fatal_stream_announces_a_gap_on_every_topic_it_owned(make_parent):
    parent = make_parent(PRICE, BOOK)
    last = msgpack.packb({"topic": "aggTrade.BTCUSDT", "seq": 7, "stream": "price",
                          "recv_ns": 1_700_000_000_123_000_000, "data": {}})
    parent.last_values[b"aggTrade.BTCUSDT"] = last
    parent._execute([StateChanged("price", State.RUNNING, State.FATAL, "restart intensity exceeded: x")])
    gaps = {topic: frame["gap"] for topic, frame in parent.pub.frames()}
    # aggTrade has REST history, but a FATAL stream will not backfill it.
    assert set(gaps) == {"aggTrade.BTCUSDT", "aggTrade.ETHUSDT"}
    assert gaps["aggTrade.BTCUSDT"]["from_ms"] == 1_700_000_000_123
    assert gaps["aggTrade.ETHUSDT"]["from_ms"] is None
    assert all(g["to_ms"] is None and "FATAL" in g["reason"] and "intensity" in g["reason"]
               for g in gaps.values())


def test_a_no_history_stream_that_goes_fatal_after_its_gap_opened_says_so_again(make_parent):
    parent = make_parent(BOOK)
    parent._execute([StateChanged("book", State.RUNNING, State.BACKOFF, "connection lost")])
    parent._execute([StateChanged("book", State.BACKOFF, State.STARTING, "backoff elapsed")])
    parent._execute([StateChanged("book", State.STARTING, State.FATAL, "invalid symbol: BTCUSDT")])
    frames = parent.pub.frames()
    assert [f["gap"]["reason"] for _, f in frames] == ["connection lost", "stream FATAL: invalid symbol: BTCUSDT"]
    assert frames[1][1]["seq"] == frames[0][1]["seq"] + 1
    # Still open: the next regular frame closes it.
    assert parent.open_gaps[b"bookTicker.BTCUSDT"]["reason"] == "stream FATAL: invalid symbol: BTCUSDT"


def test_restarted_actions_reach_the_metrics(make_parent):
    parent = make_parent(PRICE)
    parent._execute([Restarted("price", "rotated"), Restarted("price", "fatal")])
    assert parent.metrics.restarts == [("price", "rotated"), ("price", "fatal")]


def test_a_clean_stop_saves_the_marks_of_the_previous_save(make_parent, tmp_path):
    # PUB drops silently for a subscriber at its high-water mark, and after
    # the last frame no later seq can reveal it: the marks saved at a clean
    # stop are the previous save's (about a second old), so the next parent
    # replays that last second (flagged backfill) rather than lose it.
    parent = make_parent(PRICE)
    parent.config = dataclasses.replace(parent.config, state_file=str(tmp_path / "state"))
    topic = b"aggTrade.BTCUSDT"
    parent.sequencer.admit(topic, 1, 0, True)
    parent._save_state()                     # periodic: remembers mark 1 for the next save
    for agg_id in range(2, 6):
        parent.sequencer.admit(topic, agg_id, 0, True)
    parent.sequencer.admit(b"aggTrade.ETHUSDT", 7, 0, True)   # first delivered since that save
    parent._save_state(final=True)           # the clean stop's save
    marks = saved.load(str(tmp_path / "state")).marks
    assert marks["aggTrade.BTCUSDT"][0] == 1
    assert marks["aggTrade.ETHUSDT"][0] == 7, "a topic new since the last save keeps its mark: the downtime is backfilled"
