"""A restarted parent resumes from the state file: backfill covers the time
no parent ran, and the connection budget is not spent twice."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
import signal
import time
import urllib.request

import pytest

from feedsup.supervisor import state as saved
from feedsup.supervisor.parent import REJOIN_GRACE_S
from feedsup.config import Restart
from feedsup.ipc.client import request
from harness import Collector, Feedsup, wait_for, write_config

CONNECT_BUDGET = Restart().connect_budget

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}
TOPIC = "aggTrade.BTCUSDT"


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=4)


def latest_agg_id(sim) -> int:
    url = f"{sim.base_url}/api/v3/aggTrades?symbol=BTCUSDT&limit=1"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())[-1]["a"]


def _event_time(log: str, event: str) -> float:
    line = next(line for line in log.splitlines() if f"event={event} " in line)
    ts = line.split("ts=", 1)[1].split(" ", 1)[0]
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _saved_marks(path) -> dict:
    try:
        return saved.load(str(path)).marks
    except (AttributeError, saved.StateError):
        return {}


def ids(col: Collector) -> list[int]:
    return [f["data"]["agg_id"] for f in list(col.frames) if f["topic"] == TOPIC and f.get("data")]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_restarted_parent_backfills_the_time_it_was_down(sim, tmp_path, timing, how):
    config = write_config(tmp_path, sim, [PRICE], feedsup={"state_file": str(tmp_path / "state")})
    first = Feedsup(config, tmp_path, "first.log")
    col = Collector(first.pub)
    second = None
    try:
        col.wait_count(20, timeout=20, topic_prefix=TOPIC)
        first.wait_running("price")
        if how == "SIGKILL":
            # Saved marks lag a second behind: let a save include some of these frames.
            wait_for(lambda: TOPIC in _saved_marks(tmp_path / "state"), 5, "a saved watermark")
        first.proc.send_signal(getattr(signal, how))
        first.proc.wait(10)
        down_at = latest_agg_id(sim)
        wait_for(lambda: latest_agg_id(sim) >= down_at + 20, 20, "trades while no parent runs")
        t0 = time.monotonic()
        second = Feedsup(config, tmp_path, "second.log")
        wait_for(lambda: max(ids(col)) > latest_agg_id(sim) - 5, 20, "the new parent to catch up")
        timing(f"parent {how} -> new parent caught up", time.monotonic() - t0)
        got = ids(col)
        gaps = [f["gap"] for f in list(col.frames) if f.get("gap")]
        assert sorted(set(got)) == list(range(got[0], max(got) + 1)), (
            f"no hole across the parent restart; gap notices {gaps}; new parent's log:\n"
            + "\n".join(second.log().splitlines()[-15:]))
        backfilled = [f for f in list(col.frames) if f["topic"] == TOPIC and f.get("backfill")]
        assert backfilled, "the gap while no parent ran must be backfilled"
        duplicates = len(got) - len(set(got))
        # Saved marks lag one save period (1 s) behind, saved once a second,
        # after a crash and a clean stop alike (PUB may have dropped the last
        # frames for a slow subscriber): at most about 2 s of frames (4
        # trades/s x speed 10) repeat, every repeat flagged backfill.
        assert duplicates <= 100, "only the last two seconds may repeat"
        live = [f["data"]["agg_id"] for f in list(col.frames)
                if f["topic"] == TOPIC and f.get("data") and not f.get("backfill")]
        assert len(live) == len(set(live)), "a repeat is always a backfilled frame"
        assert any(g.restart for g in col.gaps), "consumers see the parent restart as seq going back"
        assert "state restored" in second.log()
        started, spawned = _event_time(second.log(), "started"), _event_time(second.log(), "spawn")
        assert spawned - started >= REJOIN_GRACE_S - 0.05, "subscribers get time to rejoin first"
    finally:
        col.close()
        for fs in (first, second):
            if fs is not None:
                fs.close()


@pytest.mark.parametrize("poison", ["2^62", "testnet"])
def test_a_poisoned_state_file_does_not_silence_the_topic(sim, tmp_path, poison):
    """A mark far beyond the live ids (corrupt, or saved against another
    exchange) would suppress every live frame as a duplicate, and be saved
    again. The parent drops it with a warning and publishes."""
    from feedsup.config import load_config

    state_path = tmp_path / "state"
    config = write_config(tmp_path, sim, [PRICE], feedsup={"state_file": str(state_path)})
    loaded = load_config(str(config))
    if poison == "2^62":
        marks, origins = {TOPIC: (2**62, 0, True)}, saved.Origins(loaded)
    else:
        marks = {TOPIC: (10**12, 0, True)}     # plausible, and far above the live ids
        testnet = dataclasses.replace(loaded.spot, ws_url="wss://stream.testnet.binance.vision",
                                      rest_url="https://testnet.binance.vision")
        origins = saved.Origins(dataclasses.replace(loaded, spot=testnet))
    saved.save(str(state_path), saved.SavedState(marks, [], time.time()), origins)
    fs = Feedsup(config, tmp_path)
    col = Collector(fs.pub)
    try:
        col.wait_count(5, timeout=20, topic_prefix=TOPIC)
        assert "state mark dropped" in fs.log() and TOPIC in fs.log()
        wait_for(lambda: 0 < _saved_marks(state_path).get(TOPIC, (2**62,))[0] < 2**40, 10,
                 "a sane mark saved instead of the poisoned one")
    finally:
        col.close()
        fs.close()


def test_a_restarted_parent_remembers_the_connection_attempts_of_the_one_before(sim, tmp_path):
    """Binance counts connection attempts per IP, whichever process made
    them: a parent restarted from the state file starts with the budget its
    predecessor left, not a full one."""
    config = write_config(tmp_path, sim, [PRICE], feedsup={"state_file": str(tmp_path / "state")})
    first = Feedsup(config, tmp_path, "first.log")
    second = None
    try:
        row = first.wait_running("price")
        for _ in range(3):   # three more connections: four attempts in all
            pid = row["pid"]
            request(first.control, "restart", stream="price")
            row = wait_for(lambda: (r := first._running("price")) and r["pid"] != pid and r, 15, "a new worker")
        left = first.stream("price")["budget_remaining"]
        assert left == CONNECT_BUDGET - 4
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(10) == 0
        second = Feedsup(config, tmp_path, "second.log")
        second.wait_running("price")
        assert second.stream("price")["budget_remaining"] == left - 1, "the first parent's attempts still count"
    finally:
        for fs in (first, second):
            if fs is not None:
                fs.close()


def test_without_a_state_file_the_time_no_parent_ran_is_not_backfilled(sim, tmp_path):
    """The README's promise has a condition: with no ``state_file`` a new
    parent knows nothing of the old one's watermarks, so it starts live and
    backfills nothing (a consumer sees the restart as seq going back)."""
    config = write_config(tmp_path, sim, [PRICE])
    first = Feedsup(config, tmp_path, "first.log")
    col = Collector(first.pub)
    second = None
    try:
        col.wait_count(10, timeout=20, topic_prefix=TOPIC)
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(10) == 0
        seen = len(col.frames)
        last = max(ids(col))
        wait_for(lambda: latest_agg_id(sim) >= last + 20, 20, "trades while no parent runs")
        second = Feedsup(config, tmp_path, "second.log")
        wait_for(lambda: len([f for f in list(col.frames)[seen:] if f["topic"] == TOPIC]) >= 5, 20,
                 "data from the new parent")
        after = [f for f in list(col.frames)[seen:] if f["topic"] == TOPIC]
        assert not [f for f in after if f.get("backfill")], "nothing is backfilled without a state file"
        assert after[0]["data"]["agg_id"] >= last + 20, "the new parent starts live, past the down time"
        assert "state restored" not in second.log()
    finally:
        col.close()
        for fs in (first, second):
            if fs is not None:
                fs.close()


def test_after_catch_up_a_restarted_parent_s_frames_below_the_snapshot_seq_are_delivered(sim, tmp_path):
    """catch_up skips live frames up to its snapshot's seq: those were in
    flight. A restarted parent numbers every topic from 1 again, so its
    frames below that seq are new ones and must be delivered, not skipped."""
    from feedsup.ipc.client import Subscriber

    config = write_config(tmp_path, sim, [PRICE], feedsup={"state_file": str(tmp_path / "state")})
    first = Feedsup(config, tmp_path, "first.log")
    col = Collector(first.pub)
    sub = Subscriber(first.pub, (TOPIC,))
    second = None
    try:
        col.wait_count(40, timeout=20, topic_prefix=TOPIC)
        wait_for(lambda: TOPIC in _saved_marks(tmp_path / "state"), 5, "a saved watermark")
        (snap,) = sub.catch_up(first.control, (TOPIC,))
        assert snap["seq"] >= 40
        first.proc.kill()
        first.proc.wait(10)
        second = Feedsup(config, tmp_path, "second.log")
        delivered = [snap]

        def new_parent_past_the_snapshot() -> bool:
            frame = sub.recv(timeout=0.2)
            if frame is not None:
                delivered.append(frame)
            return any(f["epoch"] != snap["epoch"] and f["data"]["agg_id"] > snap["data"]["agg_id"] + 5
                       for f in delivered if f.get("data"))
        wait_for(new_parent_past_the_snapshot, 20, "the new parent's frames past the snapshot")
        new = [f for f in delivered if f["epoch"] != snap["epoch"]]
        assert [f["seq"] for f in new] == list(range(1, len(new) + 1)), "none of the new parent's frames skipped"
        assert any(g.restart for g in sub.gaps), "the restart is reported"
        got = sorted({f["data"]["agg_id"] for f in delivered if f.get("data")})
        assert got == list(range(got[0], got[-1] + 1)), "no agg_id lost across the restart"
    finally:
        sub.close()
        col.close()
        for fs in (first, second):
            if fs is not None:
                fs.close()
