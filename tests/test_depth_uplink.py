"""The depth worker alone against the simulator: what it sends its parent, in order.

The test plays the parent: it binds the uplink PULL socket and starts one
real depth worker process on it, so every record and control message the
worker sends is seen in the order it sent them. Snapshot failures come from
the simulator's ``rest_error`` fault, sequence breaks from ``data_stall``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from feedsup.config import load_config
from feedsup.ipc import frames
from feedsup.procs import tied
from feedsup.ipc.spec import WorkerSpec
from harness import wait_for, write_config

SYMBOL = "BTCUSDT"
TOPIC = f"depth.{SYMBOL}"
STREAM = {"name": "book", "market": "spot", "channel": "depth", "symbols": [SYMBOL], "depth_levels": 5}
DIFFS = "btcusdt@depth@100ms"


class LoneWorker:
    """One worker process whose uplink the test reads instead of a parent.

    ``log`` holds what arrived, in order: ``("C", control map)``,
    ``("D", topic, body)`` or ``("G", topic, body)``.
    """

    def __init__(self, tmp_path: Path, sim: Any, stream: dict[str, Any]) -> None:
        config = load_config(str(write_config(tmp_path, sim, [stream], connection={"stale_after": 0})))
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{tmp_path}/uplink"
        self.pull.bind(endpoint)
        s = config.streams[0]
        spec = WorkerSpec(stream=s, endpoint=config.endpoint(s.market), uplink=endpoint,
                          parent_pid=os.getpid(), instance=1, rundir=str(tmp_path))
        self.log: list[tuple] = []
        self.live: dict[str, Any] = {}      # the newest liveness stats
        self.proc = subprocess.Popen(tied([sys.executable, "-m", "feedsup.workers", spec.to_json()]),
                                     stdin=subprocess.DEVNULL)

    def poll(self) -> list[tuple]:
        while True:
            try:
                message = self.pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.log
            if message[0] == frames.CONTROL:
                control = frames.decode_control(message)
                if control["type"] == frames.Control.LIVE:
                    self.live = control["stats"]
                else:
                    self.log.append(("C", control))
                continue
            for kind, topic, _, _, _, body in frames.iter_records(message):
                self.log.append((chr(kind), topic.decode(), msgpack.unpackb(body)))

    def stats(self) -> dict[str, Any]:
        self.poll()
        return self.live

    def wait(self, predicate, timeout: float, what: str) -> Any:
        return wait_for(lambda: predicate(self.poll()), timeout, what)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.pull.close()
        self.ctx.term()


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=2, symbols=(SYMBOL, "ETHUSDT"), trade_rate=2, book_rate=8,
                     ping_interval=1, pong_timeout=3)


@pytest.fixture
def lone_worker(tmp_path):
    started: list[LoneWorker] = []

    def start(sim, stream=STREAM) -> LoneWorker:
        worker = LoneWorker(tmp_path, sim, stream)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.close()


def controls(log: list[tuple], kind: str) -> list[int]:
    """Positions in ``log`` of control messages of this type."""
    return [i for i, entry in enumerate(log) if entry[0] == "C" and entry[1]["type"] == kind]


def records(log: list[tuple], kind: str, topic: str = TOPIC) -> list[int]:
    return [i for i, entry in enumerate(log) if entry[0] == kind and entry[1] == topic]


def test_streaming_waits_for_a_synced_book(sim, lone_worker):
    """STREAMING hands a rotation over: buffered diffs are not a book yet."""
    sim.inject("rest_error", status=503, duration=60)    # every snapshot fails for now
    worker = lone_worker(sim)
    worker.wait(lambda log: controls(log, "ready"), 15, "READY")
    # Diffs arrive and are buffered, but no snapshot comes back.
    wait_for(lambda: worker.stats().get("msgs", 0) >= 10, 15,
             "diffs received while REST fails")
    assert not records(worker.log, "D"), "no book without a snapshot"
    assert not controls(worker.log, "streaming"), f"STREAMING before any synced book: {worker.log}"
    sim.clear_faults()
    worker.wait(lambda log: controls(log, "streaming"), 20, "STREAMING once REST answers")
    log = worker.log
    first_book = records(log, "D")
    assert first_book and first_book[0] < controls(log, "streaming")[0], f"a synced book first: {log}"


def test_a_sequence_break_opens_a_gap_at_once_and_the_next_synced_book_closes_it(sim, lone_worker, timing):
    worker = lone_worker(sim)
    worker.wait(lambda log: len(records(log, "D")) >= 3, 20, "synced books")
    assert not records(worker.log, "G")
    wait_for(lambda: worker.stats().get("snapshots") == 1, 5, "one snapshot counted")
    # REST fails from now on, so no snapshot can come back; then the BTCUSDT
    # diffs stop for a moment, and the next one does not chain on the book.
    sim.inject("rest_error", status=503, duration=60)
    t0 = time.monotonic()
    sim.inject("data_stall", target={"stream": DIFFS}, duration=0.5)
    worker.wait(lambda log: records(log, "G"), 10, "a gap notice on the broken book")
    timing("depth sequence break -> open gap notice", time.monotonic() - t0)
    log = worker.log
    opened = records(log, "G")[0]
    gap = log[opened][2]
    assert gap["data"] is None and gap["gap"]["to_ms"] is None, gap
    assert "sequence" in gap["gap"]["reason"], gap
    last_book = log[records(log, "D")[-1]][2]
    assert gap["gap"]["from_ms"] == last_book["recv_ns"] // 1_000_000, "lost since the last good book"
    wait_for(lambda: worker.stats().get("resyncs", 0) >= 1, 5, "resync counted")
    assert worker.live.get("snapshots") == 1, "announced before any snapshot came back"
    assert not [i for i in records(worker.log, "D") if i > opened], "nothing published out of sync"

    sim.clear_faults()
    worker.wait(lambda log: [i for i in records(log, "D") if i > opened], 20, "a synced book again")
    log = worker.log
    gaps = records(log, "G")
    assert len(gaps) == 2, f"one open and one closing notice: {[log[i] for i in gaps]}"
    closing = log[gaps[1]][2]["gap"]
    book_after = [i for i in records(log, "D") if i > opened][0]
    assert gaps[1] < book_after and not [i for i in records(log, "D") if opened < i < gaps[1]]
    assert closing["from_ms"] == gap["gap"]["from_ms"] and closing["reason"] == gap["gap"]["reason"]
    assert closing["to_ms"] == log[book_after][2]["recv_ns"] // 1_000_000, "closed by the next book"


def test_a_snapshot_that_keeps_failing_keeps_one_gap_open_and_spares_rest(sim, lone_worker):
    """A 429 with a long Retry-After: the shared REST budget refuses every
    snapshot from then on. The gap is announced once, not per failed
    snapshot, and failed snapshots are retried after a growing delay."""
    worker = lone_worker(sim)
    worker.wait(lambda log: len(records(log, "D")) >= 3, 20, "synced books")
    sim.inject("rest_error", status=429, retry_after=120, count=1)
    sim.inject("data_stall", target={"stream": DIFFS}, duration=0.5)
    worker.wait(lambda log: records(log, "G"), 10, "a gap notice on the broken book")
    t0 = time.monotonic()
    wait_for(lambda: worker.stats().get("snapshot_errors", 0) >= 4, 15, "failed snapshots")
    errors, took = worker.stats()["snapshot_errors"], time.monotonic() - t0
    # Retries wait 0.25-0.5 s, then 0.5-1 s, 1-2 s, ...: four failures take
    # at least 1.75 s after the first one; immediate retries would make thousands.
    assert took >= 1.0 and errors <= 6, (errors, took)
    log = worker.log
    opened = records(log, "G")
    assert len(opened) == 1 and log[opened[0]][2]["gap"]["to_ms"] is None, [log[i] for i in opened]
    assert not [i for i in records(log, "D") if i > opened[0]], "nothing published out of sync"
    assert worker.proc.poll() is None
