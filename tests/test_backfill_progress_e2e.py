"""A long REST backfill is visible while it runs: ``feedsup status`` (table
and --json) and the metrics show the topic being fetched, the rows so far,
the span still to fetch and an estimate of the time left."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from feedsup.supervisor.metrics import Metrics
from harness import REPO, Collector, wait_for
from test_backfill_e2e import new_pid
from test_metrics import row, scrape, status, value

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
AGGS = {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS}


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=60, symbols=tuple(SYMBOLS), trade_rate=20, ping_interval=1, pong_timeout=3)


def cli_status(fs) -> dict:
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "status", "--json", "--control", fs.control],
                         capture_output=True, text=True, timeout=20, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_long_backfill_shows_its_progress_in_status(sim, start_feedsup, timing):
    fs, col = start_feedsup(sim, (AGGS,), restart={"intensity": 100},
                            collect=lambda fs: Collector(fs.pub, ("aggTrade.",)))
    fs.wait_running("aggs")
    col.wait_count(50, 15, "aggTrade.BTCUSDT")
    # 4 s down at 60x with 20 aggTrades a simulated second: ~4800 ids a
    # symbol to page through, each REST answer 300 ms late.
    sim.inject("latency", ms=300, rest=True, duration=60)
    sim.inject("refuse", duration=4)
    old = fs.stream("aggs")["pid"]
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: new_pid(fs, "aggs", old), 20, "replacement")
    seen = wait_for(lambda: (fs.stream("aggs")["stats"].get("backfill") or {}).get("remaining"), 20,
                    "backfill progress with a known end")
    assert seen > 0
    stream = next(s for s in cli_status(fs)["streams"] if s["name"] == "aggs")
    progress = stream["stats"].get("backfill")
    assert progress, "status --json carries the running backfill"
    assert progress["topic"].startswith("aggTrade.") and progress["unit"] == "ids"
    assert progress["rows"] >= 0 and progress["remaining"] >= 0 and "eta_s" in progress
    later = wait_for(lambda: (fs.stream("aggs")["stats"].get("backfill") or {}).get("eta_s"), 20,
                     "a time estimate once pages come in")
    assert later > 0
    wait_for(lambda: "backfill" not in fs.stream("aggs")["stats"] and fs.stream("aggs")["stats"]["backfilled"],
             60, "backfill done, progress gone")
    timing("long backfill (REST 300 ms per page) -> done", time.monotonic() - t0)
    sim.clear_faults()


def test_metrics_carry_the_backfill_progress():
    m = Metrics(port=0)
    m.start()
    try:
        progress = {"topic": "aggTrade.BTCUSDT", "rows": 3000, "done": 3000, "remaining": 9000, "unit": "ids",
                    "eta_s": 6.5, "topics_left": 0}
        m.update(status(row("s1", msgs=1, backfill=progress), row("s2", msgs=1)))
        s = scrape(m)
        assert value(s, "feedsup_backfill_rows", stream="s1") == 3000
        assert value(s, "feedsup_backfill_eta_seconds", stream="s1") == 6.5
        assert value(s, "feedsup_backfill_rows", stream="s2") == 0
        assert math.isnan(value(s, "feedsup_backfill_eta_seconds", stream="s2"))
    finally:
        m.stop()
