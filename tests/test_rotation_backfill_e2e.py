"""Make-before-break rotation hands over only once the successor serves.

A successor that still has to backfill over REST (here REST fails for a
while) must not take over: the old worker keeps publishing until the
successor has sent its backfill and its live frames flow.
"""

from __future__ import annotations

import time

import pytest

from harness import Collector, wait_for
from test_backfill_e2e import gap_frames, new_pid

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
AGGS = {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS}


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=60, symbols=tuple(SYMBOLS), trade_rate=4, ping_interval=1, pong_timeout=3)


def test_rotation_waits_for_a_successor_whose_rest_backfill_is_failing(sim, start_feedsup, timing):
    fs, col = start_feedsup(sim, (AGGS,), collect=lambda fs: Collector(fs.pub, ("aggTrade.",)))
    fs.wait_running("aggs")
    col.wait_count(50, 15, "aggTrade.BTCUSDT")
    old = fs.stream("aggs")["pid"]
    sim.inject("rest_error", status=503, duration=5)       # the successor's backfill fails for 5 s
    t0 = time.monotonic()
    sim.inject("server_shutdown", target={"stream": "btcusdt@aggTrade"}, delay=30)
    wait_for(lambda: new_pid(fs, "aggs", old), 25, "the successor took over")
    handover = time.monotonic() - t0
    more = col.count("aggTrade.")
    col.wait_count(more + 100, 10, "aggTrade.")
    timing("rotation with REST failing 5 s -> handed over", handover)
    arrivals = [f["_t"] for f in list(col.frames) if f["topic"].startswith("aggTrade.") and f["_t"] >= t0]
    worst = max(b - a for a, b in zip(arrivals, arrivals[1:]))
    timing("rotation with REST failing 5 s -> longest pause at the consumer", worst)
    assert worst < 2.5, f"consumers waited {worst:.1f} s: the successor took over before it served"
    assert handover > 4.0, "the successor could not have caught up before REST recovered"
    assert not gap_frames(col), "no gap notice for ids the old worker delivered"
    for symbol in SYMBOLS:
        ids = [f["data"]["agg_id"] for f in list(col.frames) if f["topic"] == f"aggTrade.{symbol}"]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: ids once each, in order"
