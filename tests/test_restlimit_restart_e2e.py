"""A REST ban (418 + Retry-After) outlives the parent that met it: a new
parent's workers send nothing to REST before the ban ends (asking during a
ban only lengthens it, FACTS.md)."""

from __future__ import annotations

import glob
import json
import os
import signal
import time

import pytest

from harness import Collector, wait_for
from test_backfill_e2e import new_pid

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
AGGS = {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS}
BAN_S = 8


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=60, symbols=tuple(SYMBOLS), trade_rate=4, ping_interval=1, pong_timeout=3)


def budget_files(folder) -> list[str]:
    return glob.glob(str(folder / "restweight-spot-*.json"))


def read_budget(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:          # caught between the writer's truncate and write
        return {}


def rest_calls_since(sim, t: float) -> list[str]:
    return sim.call(lambda core: [path for when, path in core.rest_log if when >= t])


def test_a_rest_ban_survives_a_parent_restart(sim, start_feedsup, tmp_path, timing):
    state = tmp_path / "state.json"
    config = {"feedsup": {"state_file": str(state)}, "restart": {"intensity": 100}}
    fs, col = start_feedsup(sim, (AGGS,), collect=lambda fs: Collector(fs.pub, ("aggTrade.",)), **config)
    fs.wait_running("aggs")
    col.wait_count(20, 15, "aggTrade.BTCUSDT")
    # The next REST call (the replacement's) is answered 418: banned for 8 s.
    sim.inject("rest_error", status=418, retry_after=BAN_S, count=1)
    old = fs.stream("aggs")["pid"]
    os.kill(old, signal.SIGKILL)
    # The ban as the budget recorded it (wall clock: Binance's), seen from the sim's monotonic log.
    paused = wait_for(lambda: next((b["paused_until"] for b in map(read_budget, budget_files(tmp_path))
                                    if b.get("banned")), None), 10, "the 418 recorded")
    ban_ends = paused - (time.time() - time.monotonic())
    assert ban_ends - time.monotonic() > BAN_S / 2, "test too slow to see the ban"
    wait_for(lambda: new_pid(fs, "aggs", old), 20, "replacement")
    fs.close()                                   # the parent goes away; the ban does not
    restarted = time.monotonic()
    fs2, col2 = start_feedsup(sim, (AGGS,), collect=lambda fs: Collector(fs.pub, ("aggTrade.",)), **config)
    fs2.wait_running("aggs")
    wait_for(lambda: time.monotonic() > ban_ends, BAN_S + 5, "the ban's end")
    early = sim.call(lambda core: [(round(w - restarted, 2), p) for w, p in core.rest_log
                                   if restarted <= w < ban_ends - 0.5])
    assert not early, (f"the new parent's workers asked REST during the ban (ends at "
                       f"{ban_ends - restarted:.2f} s): {early}; budget now {[read_budget(f) for f in budget_files(tmp_path)]}"
                       f"; paused {paused} wall {time.time()}")
    # then the resumed topics are backfilled as usual
    wait_for(lambda: rest_calls_since(sim, ban_ends - 0.5), 20, "REST used again after the ban")
    timing("REST ban carried across a parent restart", time.monotonic() - restarted)
    assert budget_files(tmp_path), "the budget lives beside the state file"
