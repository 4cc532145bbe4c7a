"""The parent's inputs, end to end: garbage on the uplink socket, and a
parent stopped while a blast runs (bounded memory, every drop announced)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import msgpack
import pytest
import zmq

from feedsup.ipc import frames
from feedsup.procs import read_line, stop, tied
from harness import REPO, wait_for

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}


def worker_spec(pid: int) -> dict:
    """The launch spec on a worker's command line (it names the uplink)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return json.loads(argv[-2] if argv[-1] == b"" else argv[-1])


def test_garbage_on_the_uplink_never_stops_the_parent(start_sim, start_feedsup, timing):
    sim = start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=20)
    fs, col = start_feedsup(sim, [PRICE])
    col.wait_count(5, timeout=20)
    row = fs.wait_running("price")
    spec = worker_spec(row["pid"])
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(spec["uplink"])
    try:
        junk = [b"", b"\x00", os.urandom(64), b"C" + os.urandom(40), b"C\x93\x01\x02\x03",
                frames.batch_prefix(999) + os.urandom(30),
                frames.encode_control("live", instance=12345, stream="price", stats=[1]),
                frames.encode_control("ready", instance=12345, stream="price", v=0)]
        for message in junk * 20:
            push.send(message)
        wait_for(lambda: fs.status()["rejected"] >= len(junk) * 20, 10, "every junk message rejected")
        assert fs.proc.poll() is None
        # A well-framed record of the running worker with a 16-key body: refused, worker restarted.
        t0 = time.monotonic()
        body = msgpack.packb({f"k{i}": i for i in range(16)})
        push.send(frames.encode_batch(row["instance"],
                                      [frames.encode_data(b"aggTrade.BTCUSDT", 1 << 62, 0, True, body)]))
        new = wait_for(lambda: (r := fs.stream("price"))["state"] == "RUNNING" and r["pid"] not in (None, row["pid"])
                       and r, 15, "the refused worker replaced")
        timing("malformed record -> worker refused and replaced", time.monotonic() - t0)
        assert "refused" in new["last_reason"] and f"{frames.MAX_BODY_KEYS} keys" in new["last_reason"]
        col.wait_more(15, more=5)
        assert not [f for f in list(col.frames) if "k15" in f or f["data"] is not None and "k15" in f["data"]]
        assert fs.proc.poll() is None and "rejected" in fs.log()
    finally:
        push.close(linger=0)
        ctx.term()


# -- a parent stopped during a blast ----------------------------------------------

BLAST = 300_000


class IdCollector:
    """A lean subscriber: agg ids and gap notices of aggTrade.BTCUSDT."""

    def __init__(self, endpoint: str) -> None:
        self.ids: list[int] = []
        self.gaps: list[dict] = []
        self.seq_holes = 0
        self._stop = threading.Event()
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"aggTrade.BTCUSDT")
        self.sub.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        recv, unpackb, last = self.sub.recv, msgpack.unpackb, None
        while not self._stop.is_set():
            if not self.sub.poll(50):
                continue
            recv()
            frame = unpackb(recv())
            if last is not None and frame["seq"] != last + 1:
                self.seq_holes += 1
            last = frame["seq"]
            if frame.get("gap"):
                self.gaps.append(frame["gap"])
            else:
                self.ids.append(frame["data"]["agg_id"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sub.close(linger=0)
        self.ctx.term()


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def blast_sim():
    proc = subprocess.Popen(tied([sys.executable, "-m", "feedsup.sim", "--symbols", "BTCUSDT", "--blast",
                                  "--blast-count", str(BLAST)]), stdout=subprocess.PIPE, cwd=REPO)
    try:
        urls = json.loads(read_line(proc, 30))
        yield types.SimpleNamespace(ws_url=urls["ws_url"], base_url=urls["rest_url"])
    finally:
        stop(proc)


def test_a_stopped_parent_stays_bounded_and_every_drop_becomes_a_gap_notice(blast_sim, start_feedsup,
                                                                            timing):
    fs, col = start_feedsup(blast_sim, [PRICE], collect=lambda fs: IdCollector(fs.pub),
                            connection={"stale_after": 0, "liveness_timeout": 30, "ping_interval": 20,
                                        "ping_timeout": 10,
                                        "uplink_hwm": 50},   # the worker's queue fills within milliseconds
                            feedsup={"pub_hwm": 2_000_000})
    wait_for(lambda: len(col.ids) >= 20_000, 30, "the blast flowing")
    os.kill(fs.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)   # the parent stays stopped this long while the blast runs (the fault itself)
    finally:
        os.kill(fs.pid, signal.SIGCONT)
    t0 = time.monotonic()

    def lost() -> list[dict]:
        return [g for g in list(col.gaps) if g["reason"].startswith("uplink full")]

    def last_id() -> int:
        return max([col.ids[-1]] + [g["to_id"] for g in lost()]) if col.ids else 0

    wait_for(lambda: last_id() == BLAST, 60, "the last blast id, delivered or announced")
    timing("parent SIGCONT -> last blast id delivered or announced", time.monotonic() - t0)
    # The liveness ping reports the worker's drop counter within a second.
    # It counts from the blast's first id (1); the collector sees from its
    # first frame on: drops (and their notices) before that are unseen, at
    # most first - 1 of them, and none at all when it saw id 1.
    first = col.ids[0]

    def counted_and_announced() -> bool:
        unseen = fs.stream("price")["drops"] - sum(g["lost"] for g in lost())
        return 0 <= unseen <= first - 1 and sum(g["lost"] for g in lost()) > 0
    wait_for(counted_and_announced, 10, "every drop counted and announced")
    drops = fs.stream("price")["drops"]
    assert col.seq_holes == 0, "PUB must not drop here, or the check below means nothing"
    lost = lost()
    assert fs.stream("price")["restarts"] == 0
    covered = [i for g in lost for i in range(g["from_id"], g["to_id"] + 1)]
    assert sum(g["lost"] for g in lost) == len(covered)
    assert drops - len(covered) <= first - 1 and (first > 1 or drops == len(covered))
    assert sorted(col.ids + covered) == list(range(first, BLAST + 1)), "every id delivered or announced, once"
    assert vm_hwm_mb(fs.pid) < 150, "the parent's peak RSS stays bounded"


def test_an_oversized_exchange_frame_ends_the_connection_with_a_clear_reason(start_sim, start_feedsup, timing):
    sim = start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=20)
    fs, col = start_feedsup(sim, [PRICE])
    col.wait_count(5, timeout=20)
    before = fs.wait_running("price")
    t0 = time.monotonic()
    sim.inject("malformed", target={"stream": "btcusdt@aggTrade"}, variant="oversized", size=5 << 20)
    row = wait_for(lambda: (r := fs.stream("price"))["restarts"] > before["restarts"] and r, 15, "a restart")
    assert "FrameTooLarge" in row["last_reason"] and "4194304-byte cap" in row["last_reason"]
    col.wait_more(20, more=5)
    timing("5 MiB exchange frame -> connection ended, data again", time.monotonic() - t0)
    ids = [f["data"]["agg_id"] for f in list(col.frames) if f["data"] is not None]
    assert ids == sorted(set(ids)), "backfill closed the hole: no loss, no duplicate"
    assert ids[-1] - ids[0] + 1 == len(ids)


def test_the_frame_cap_is_the_configured_max_frame(start_sim, start_feedsup):
    sim = start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=20)
    fs, col = start_feedsup(sim, [PRICE], connection={"max_frame": 65536})
    col.wait_count(5, timeout=20)
    before = fs.wait_running("price")
    sim.inject("malformed", target={"stream": "btcusdt@aggTrade"}, variant="oversized", size=100_000)
    row = wait_for(lambda: (r := fs.stream("price"))["restarts"] > before["restarts"] and r, 15, "a restart")
    assert "FrameTooLarge" in row["last_reason"] and "65536-byte cap" in row["last_reason"]


def test_junk_on_the_control_socket_gets_an_answer_or_nothing(start_sim, start_feedsup):
    sim = start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=20)
    fs, col = start_feedsup(sim, [PRICE])
    fs.wait_running("price")
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(fs.control)
    try:
        junk = [[b""], [b"", b""], [b"", b"\xc1"], [b"", msgpack.packb([1, 2])],
                [b"", msgpack.packb({"cmd": "restart", "stream": [1]})], [b"", msgpack.packb({"cmd": "hello"})],
                [b"", msgpack.packb({"cmd": "last", "prefix": 5})], [b"a", b"b", b"c", b"d", b"e", b"f"],
                [b"", os.urandom(300)]]
        for parts in junk:
            dealer.send_multipart(parts)
        answers = 0
        while dealer.poll(1000):
            reply = dealer.recv_multipart()
            assert type(msgpack.unpackb(reply[-1])["ok"]) is bool
            answers += 1
        assert 0 < answers <= len(junk)
        # Over the size cap: ZeroMQ drops that peer; the parent is unaffected.
        dealer.send_multipart([b"", b"x" * (2 << 20)])
        assert fs.status()["pid"] == fs.pid and fs.proc.poll() is None
        col.wait_more(10, more=3)
    finally:
        dealer.close(linger=0)
        ctx.term()
