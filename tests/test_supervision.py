"""End to end: simulator -> real worker processes -> parent -> real SUB.

Each test shows one recovery path of issue 3 and records how long it took
(printed under "measured times" at the end of the run).
"""

from __future__ import annotations

import os
from datetime import datetime
import signal
import time

import pytest

from harness import Collector, Feedsup, alive, wait_for, write_config

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT", "ETHUSDT"]}
STREAM_BTC = "btcusdt@aggTrade"


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4, ping_interval=1, pong_timeout=3)


@pytest.fixture
def run_feedsup(start_feedsup):
    def start(sim, streams=(PRICE,), **config):
        return start_feedsup(sim, streams, **config)
    return start


def agg_ids(col: Collector, topic: str) -> list[int]:
    return [f["data"]["agg_id"] for f in list(col.frames) if f["topic"] == topic]


def assert_exactly_once_in_order(ids: list[int]) -> None:
    assert ids, "no frames"
    assert ids == list(range(ids[0], ids[0] + len(ids))), "aggTrade ids must be consecutive, once each"


def test_data_flows_from_simulator_to_consumer(sim, run_feedsup, timing):
    t0 = time.monotonic()
    fs, col = run_feedsup(sim)
    col.wait_count(20, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    timing("start -> 20 BTCUSDT frames at the consumer", time.monotonic() - t0)
    frame = next(f for f in col.frames if f["topic"] == "aggTrade.BTCUSDT")
    assert set(frame) >= {"topic", "seq", "stream", "recv_ns", "data"}
    assert frame["stream"] == "price"
    assert set(frame["data"]) >= {"symbol", "agg_id", "price", "qty", "first_trade_id", "last_trade_id",
                                  "time", "buyer_maker"}
    assert isinstance(frame["data"]["price"], str)
    seqs = [f["seq"] for f in col.frames if f["topic"] == "aggTrade.BTCUSDT"]
    # A subscriber that joins while the parent starts may miss the very first
    # frames (PUB drops before a subscription arrives); from then on, no hole.
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] <= 20
    assert col.gaps == []
    assert_exactly_once_in_order(agg_ids(col, "aggTrade.BTCUSDT"))
    row = fs.wait_running("price")
    assert row["pid"] in fs.workers()


def test_sigkilled_worker_is_replaced_and_data_resumes(sim, run_feedsup, timing):
    fs, col = run_feedsup(sim)
    col.wait_count(5, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    old = fs.wait_running("price")["pid"]
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: _new_running_pid(fs, "price", old), 15, "a replacement worker")
    col.wait_more(15, 5, "aggTrade.BTCUSDT")
    timing("worker SIGKILL -> data resumes", time.monotonic() - t0)
    assert new != old and not alive(old)
    assert "SIGKILL" in fs.stream("price")["last_reason"]
    # The trades the dead worker missed are backfilled: no hole, no
    # duplicate, no reordering (and so no gap notice).
    assert [f for f in list(col.frames) if f.get("gap")] == []
    assert_exactly_once_in_order(agg_ids(col, "aggTrade.BTCUSDT"))


LIVENESS_TIMEOUT = 1.5   # harness default ([connection] liveness_timeout)


def test_sigstopped_worker_is_killed_and_replaced_within_liveness_timeout(sim, run_feedsup, timing):
    fs, col = run_feedsup(sim)
    col.wait_count(5, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    old = fs.wait_running("price")["pid"]
    stop_ns, t0 = time.time_ns(), time.monotonic()
    os.kill(old, signal.SIGSTOP)
    try:
        # A frozen process cannot handle TERM: it gets KILL at once and its
        # replacement starts at once. Data resumes when a frame the new
        # worker received (live or backfilled) reaches the consumer.
        frame = wait_for(lambda: next((f for f in list(col.frames) if f["topic"] == "aggTrade.BTCUSDT"
                                       and f["recv_ns"] > stop_ns), None), 20, "data from the replacement")
        took = frame["_t"] - t0
        timing(f"worker SIGSTOP while RUNNING -> data resumes (liveness_timeout {LIVENESS_TIMEOUT:g} s)", took)
        wait_for(lambda: not alive(old), 5, "the frozen worker to be killed")
        assert fs.stream("price")["last_reason"] == "liveness timeout"
    finally:
        if alive(old):
            os.kill(old, signal.SIGKILL)
    assert took <= LIVENESS_TIMEOUT + 1.0
    ids = agg_ids(col, "aggTrade.BTCUSDT")
    assert ids == sorted(set(ids)), "no duplicate and no reordering across the restart"


@pytest.mark.parametrize("kind, expect", [("stall", "ping/pong"), ("data_stall", "stale")])
def test_stalls_are_detected_and_data_resumes(sim, run_feedsup, timing, kind, expect):
    fs, col = run_feedsup(sim)
    col.wait_count(5, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    old = fs.wait_running("price")["pid"]
    conn = _only_connection(sim)
    t0 = time.monotonic()
    # The whole connection stalls (one quiet symbol on a busy connection is
    # not a dead connection); the replacement connection is not affected.
    sim.inject(kind, target={"conn": conn}, duration=30)
    try:
        wait_for(lambda: _new_running_pid(fs, "price", old), 20, f"restart after {kind}")
    finally:
        sim.clear_faults()
    col.wait_more(15, 5, "aggTrade.BTCUSDT")
    timing(f"{kind} -> detected, data resumes", time.monotonic() - t0)
    assert expect in fs.stream("price")["last_reason"]


def test_parent_sigkill_leaves_no_worker_alive_after_2s(sim, run_feedsup, timing):
    two = dict(PRICE, name="price2", symbols=["ETHUSDT"])
    fs, col = run_feedsup(sim, streams=(dict(PRICE, symbols=["BTCUSDT"]), two))
    fs.wait_running("price")
    fs.wait_running("price2")
    workers = fs.workers()
    assert len(workers) == 2
    t0 = time.monotonic()
    os.kill(fs.pid, signal.SIGKILL)
    fs.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in workers), 2.0, "every worker to die with the parent")
    timing("parent SIGKILL -> last worker gone", time.monotonic() - t0)


def test_sigterm_gives_clean_exit_zero(sim, run_feedsup, timing):
    fs, col = run_feedsup(sim)
    fs.wait_running("price")
    workers = fs.workers()
    t0 = time.monotonic()
    fs.proc.send_signal(signal.SIGTERM)
    assert fs.proc.wait(10) == 0
    timing("SIGTERM -> parent exit 0", time.monotonic() - t0)
    assert not any(alive(p) for p in workers)


def test_server_shutdown_rotation_loses_and_duplicates_nothing(sim, run_feedsup, timing):
    fs, col = run_feedsup(sim, streams=(dict(PRICE, symbols=["BTCUSDT"]),))
    col.wait_count(10, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    old = fs.wait_running("price")["pid"]
    t0 = time.monotonic()
    sim.inject("server_shutdown", target={"stream": STREAM_BTC})
    wait_for(lambda: _new_running_pid(fs, "price", old), 20, "the successor to take over")
    wait_for(lambda: not alive(old), 10, "the old worker to retire")
    col.wait_more(15, 20, "aggTrade.BTCUSDT")
    timing("serverShutdown -> rotated", time.monotonic() - t0)
    ids = agg_ids(col, "aggTrade.BTCUSDT")
    assert_exactly_once_in_order(ids)
    row = fs.stream("price")
    assert row["rotations"] >= 1
    assert row["restarts"] == 0
    assert col.gaps == []


def test_max_age_rotations_of_market_streams_lose_and_repeat_nothing(sim, run_feedsup, timing):
    """Planned make-before-break at ``max_age``: the successor streams before
    the old worker stops, so trades arrive once each, and a channel without
    history gets no gap notice."""
    price = dict(PRICE, symbols=["BTCUSDT"], max_age=1.5)
    book = {"name": "book", "market": "spot", "channel": "bookTicker", "symbols": ["BTCUSDT"], "max_age": 1.5}
    fs, col = run_feedsup(sim, streams=(price, book))
    first = {name: fs.wait_running(name)["pid"] for name in ("price", "book")}
    t0 = time.monotonic()

    def rotated_twice() -> bool:
        rows = [fs.stream(name) for name in first]
        return all(r["rotations"] >= 2 and r["state"] == "RUNNING" for r in rows)
    wait_for(rotated_twice, 30, "two rotations of each stream")
    timing("two max_age rotations (max_age 1.5 s)", time.monotonic() - t0)
    col.wait_more(15, 10, "aggTrade.BTCUSDT")
    for name, pid in first.items():
        row = fs.stream(name)
        assert row["pid"] != pid and row["restarts"] == 0, row
    assert_exactly_once_in_order(agg_ids(col, "aggTrade.BTCUSDT"))
    assert [f for f in list(col.frames) if f.get("gap")] == [], "make before break: no gap notice"
    assert col.gaps == []


def test_malformed_frames_are_counted_and_nothing_crashes(sim, run_feedsup, timing):
    fs, col = run_feedsup(sim, streams=(dict(PRICE, symbols=["BTCUSDT"]),))
    col.wait_count(5, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    pid = fs.wait_running("price")["pid"]
    for variant in ("invalid_json", "unknown_event", "truncated"):
        sim.inject("malformed", target={"stream": STREAM_BTC}, variant=variant, count=2)
    wait_for(lambda: (fs.stream("price")["stats"].get("malformed") or 0) >= 6, 10, "6 malformed frames counted")
    col.wait_more(10, 5, "aggTrade.BTCUSDT")
    row = fs.stream("price")
    assert row["pid"] == pid and row["restarts"] == 0
    ids = agg_ids(col, "aggTrade.BTCUSDT")
    assert_exactly_once_in_order(ids)


def test_refused_connections_stay_within_budget_and_backoff_cap(sim, run_feedsup, timing):
    # Decided from events: wait until the parent says the budget is used up
    # (however long a loaded machine takes to get there, well inside the
    # window), then check nothing more was spawned a while later.
    budget, window, cap, after = 6, 60.0, 1.0, 3.0
    fs, col = run_feedsup(sim, restart={"connect_budget": budget, "budget_window": window,
                                        "backoff_max": cap, "intensity": 1000, "period": 60})
    pid = fs.wait_running("price")["pid"]
    sim.inject("refuse", duration=120)
    try:
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def exhausted():
            row = fs.stream("price")
            return row["state"] == "BACKOFF" and row["budget_remaining"] == 0 and \
                "budget" in (row["state_reason"] or "") and row
        wait_for(exhausted, 45, "the connection budget used up")
        took = time.monotonic() - t0
        end = time.monotonic() + after
        wait_for(lambda: time.monotonic() >= end, after + 1, "a while after the budget ran out")
        row = fs.stream("price")
        spawns = _spawn_times(fs.log())
    finally:
        sim.clear_faults()
    # Every spawn, the first good one included, is a connection attempt, and
    # all of them fall inside one budget window.
    assert spawns[-1] - spawns[0] < window
    assert len(spawns) == budget, f"{len(spawns)} attempts within {window:g} s, budget {budget}"
    attempts = spawns[1:]
    # Each retry waits at most the backoff cap, plus the time a worker needs
    # to start and be refused.
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert max(gaps) <= cap + 2.0, gaps
    assert row["state"] == "BACKOFF" and row["budget_remaining"] == 0
    assert "budget" in row["state_reason"]
    timing(f"{len(attempts)} connection attempts until the budget ran out "
           f"(budget {budget}/{window:g} s, max gap {max(gaps):.2f} s, cap {cap:g} s)", took)


def _only_connection(sim) -> int:
    conns = [c for c in sim.connections() if "stream" in c.get("path", "")]
    assert len(conns) == 1, conns
    return conns[0]["id"]


def _spawn_times(log: str) -> list[float]:
    """Wall times (s) of the parent's spawn events, from its logfmt lines."""
    times = []
    for line in log.splitlines():
        if "event=spawn" in line:
            ts = line.split("ts=", 1)[1].split(" ", 1)[0]
            times.append(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
    return times


def _new_running_pid(fs: Feedsup, name: str, old: int) -> int | None:
    try:
        row = fs.stream(name)
    except Exception:
        return None
    if row["state"] == "RUNNING" and row.get("pid") and row["pid"] != old:
        return row["pid"]
    return None


def test_spot_and_usdm_streams_of_one_symbol_both_flow(sim, run_feedsup, timing):
    spot = dict(PRICE, symbols=["BTCUSDT"])
    futures = {"name": "futures", "market": "usdm", "channel": "aggTrade", "symbols": ["BTCUSDT"],
               "topic_prefix": "usdm."}
    fs, col = run_feedsup(sim, streams=(spot, futures))
    t0 = time.monotonic()
    col.wait_count(10, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    col.wait_count(10, timeout=20, topic_prefix="usdm.aggTrade.BTCUSDT")
    timing("spot + usdm BTCUSDT: 10 frames each", time.monotonic() - t0)
    assert_exactly_once_in_order(agg_ids(col, "aggTrade.BTCUSDT"))
    assert_exactly_once_in_order(agg_ids(col, "usdm.aggTrade.BTCUSDT"))
    assert fs.status()["suppressed"] == 0, "neither market's frames may pass for the other's duplicates"


@pytest.mark.parametrize("which", ["pub", "control", "metrics_port"])
def test_a_taken_endpoint_exits_69_and_names_it(sim, tmp_path, which):
    """Another process holds the address: feedsup says which and exits 69
    (EX_UNAVAILABLE) before spawning anything."""
    import socket

    import zmq
    ctx = zmq.Context()
    squatters = []
    try:
        if which == "metrics_port":
            squatter = socket.socket()
            squatter.bind(("127.0.0.1", 0))
            squatter.listen(1)
            port = squatter.getsockname()[1]
            setting, named = port, f"metrics_port={port}"
        else:
            squatter = ctx.socket(zmq.PUB if which == "pub" else zmq.REP)
            port = squatter.bind_to_random_port("tcp://127.0.0.1")
            setting = named = f"tcp://127.0.0.1:{port}"
        squatters.append(squatter)
        config = write_config(tmp_path, sim, [PRICE], feedsup={which: setting})
        fs = Feedsup(config, tmp_path)
        try:
            assert fs.proc.wait(15) == 69
            log = fs.log()
            assert "bind failed" in log and named in log, log
            assert "event=spawn" not in log, "nothing is spawned when the sockets cannot be bound"
        finally:
            fs.close()
    finally:
        for squatter in squatters:
            squatter.close(**({"linger": 0} if isinstance(squatter, zmq.Socket) else {}))
        ctx.term()
