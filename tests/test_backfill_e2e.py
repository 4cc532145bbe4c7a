"""End to end: a worker dies, the outage lasts simulated minutes, and the
consumer still gets every closed 1m kline and every aggTrade exactly once and
in order, checked against the simulator's REST truth. Where REST cannot
help (an IP ban), the loss is announced by a gap frame, never silent.

The simulator runs at 60x: one simulated minute per wall second.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from feedsup.sim import SimOptions, SimServer
from harness import Collector, Feedsup, alive, wait_for, write_config

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
KLINES = {"name": "klines", "market": "spot", "channel": "kline", "symbols": SYMBOLS, "intervals": ["1m"]}
AGGS = {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS}
TRADES = {"name": "trades", "market": "spot", "channel": "trade", "symbols": ["BTCUSDT"]}
SPEED = 60


@pytest.fixture
def sim():
    server = SimServer(SimOptions(speed=SPEED, symbols=tuple(SYMBOLS), trade_rate=4, ping_interval=1,
                                  pong_timeout=3))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def feedsup_run(tmp_path):
    started: list[tuple[Feedsup, Collector]] = []

    def start(sim: SimServer, streams: tuple[dict, ...] = (KLINES, AGGS)) -> tuple[Feedsup, Collector]:
        # Many quick restarts during a refused period must not end in FATAL.
        path = write_config(tmp_path, sim, list(streams), restart={"intensity": 100})
        fs = Feedsup(path, tmp_path)
        col = Collector(fs.pub, ("kline.", "aggTrade.", "trade."))
        started.append((fs, col))
        return fs, col

    try:
        yield start
    finally:
        for fs, col in started:
            col.close()
            fs.close()


# -- the simulator's REST truth ------------------------------------------------------

def rest(sim: SimServer, path: str, **params: Any) -> Any:
    url = f"{sim.base_url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def truth_aggs(sim: SimServer, symbol: str, first: int, last: int) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    while first <= last:
        page = rest(sim, "/api/v3/aggTrades", symbol=symbol, fromId=first, limit=1000)
        assert page, f"REST has no aggTrades from {first}"
        rows.update((r["a"], r) for r in page)
        first = page[-1]["a"] + 1
    return rows


def truth_klines(sim: SimServer, symbol: str, first: int, last: int) -> dict[int, list]:
    rows = rest(sim, "/api/v3/klines", symbol=symbol, interval="1m", startTime=first, limit=1000)
    return {r[0]: r for r in rows if first <= r[0] <= last}


# -- what the consumer saw -------------------------------------------------------------

def frames_of(col: Collector, topic: str) -> list[dict]:
    return [f for f in list(col.frames) if f["topic"] == topic]


def closed_klines(col: Collector, topic: str) -> list[dict]:
    return [f for f in frames_of(col, topic) if f.get("gap") or f["data"]["closed"]]


def check_aggs(sim: SimServer, col: Collector, symbol: str) -> dict[str, int]:
    """Every id once, in order, each hole announced; data equals REST truth."""
    entries = frames_of(col, f"aggTrade.{symbol}")
    data = [f["data"] for f in entries if not f.get("gap")]
    assert data, f"no aggTrades for {symbol}"
    expected = data[0]["agg_id"]
    lost = 0
    for f in entries:
        if f.get("gap"):
            gap = f["gap"]
            assert gap["from_id"] == expected, f"gap {gap} does not start where the data stopped"
            expected = gap["to_id"] + 1
            lost += gap["to_id"] - gap["from_id"] + 1
            continue
        assert f["data"]["agg_id"] == expected, "aggTrade ids must come once each, in order"
        expected += 1
    truth = truth_aggs(sim, symbol, data[0]["agg_id"], data[-1]["agg_id"])
    for d in data:
        row = truth[d["agg_id"]]
        assert (d["price"], d["qty"], d["time"], d["first_trade_id"], d["last_trade_id"]) == \
            (row["p"], row["q"], row["T"], row["f"], row["l"])
    return {"delivered": len(data), "backfilled": sum(1 for f in entries if f.get("backfill")), "lost": lost}


def check_klines(sim: SimServer, col: Collector, symbol: str) -> dict[str, int]:
    """Every closed kline once, in order, each hole announced; equals REST truth."""
    entries = closed_klines(col, f"kline.{symbol}.1m")
    data = [f["data"] for f in entries if not f.get("gap")]
    assert data, f"no closed klines for {symbol}"
    expected = data[0]["open_time"]
    lost = 0
    for f in entries:
        if f.get("gap"):
            gap = f["gap"]
            assert gap["from_ms"] == expected
            expected = gap["to_ms"] + 1
            lost += 1
            continue
        assert f["data"]["open_time"] == expected, "closed klines must come once each, in order"
        expected = f["data"]["close_time"] + 1
    truth = truth_klines(sim, symbol, data[0]["open_time"], data[-1]["open_time"])
    for d in data:
        row = truth[d["open_time"]]
        assert [d["open"], d["high"], d["low"], d["close"], d["volume"], d["close_time"], d["trades"]] == \
            [row[1], row[2], row[3], row[4], row[5], row[6], row[8]]
    return {"delivered": len(data), "backfilled": sum(1 for f in entries if f.get("backfill")), "lost": lost}


def check_trades(col: Collector, topic: str) -> dict[str, int]:
    """Recent trades fill what they can; older ones are an announced gap."""
    entries = frames_of(col, topic)
    data = [f["data"] for f in entries if not f.get("gap")]
    expected = data[0]["trade_id"]
    lost = 0
    for f in entries:
        if f.get("gap"):
            assert f["gap"]["from_id"] == expected and f["gap"]["to_id"] >= expected
            assert "recent-trades" in f["gap"]["reason"]
            expected = f["gap"]["to_id"] + 1
            lost += f["gap"]["to_id"] - f["gap"]["from_id"] + 1
            continue
        assert f["data"]["trade_id"] == expected, "trade ids once each, in order, holes announced"
        expected += 1
    return {"delivered": len(data), "backfilled": sum(1 for f in entries if f.get("backfill")), "lost": lost}


def gap_frames(col: Collector, prefix: str = "") -> list[dict]:
    return [f for f in list(col.frames) if f.get("gap") and f["topic"].startswith(prefix)]


def new_pid(fs: Feedsup, name: str, old: int) -> int | None:
    try:
        row = fs.stream(name)
    except Exception:
        return None
    return row["pid"] if row["state"] == "RUNNING" and row.get("pid") not in (None, old) else None


def latest_closed(col: Collector, symbol: str) -> int:
    closed = [f["data"]["open_time"] for f in closed_klines(col, f"kline.{symbol}.1m") if not f.get("gap")]
    return closed[-1] if closed else 0


def wait_started(fs: Feedsup, col: Collector) -> None:
    fs.wait_running("klines")
    fs.wait_running("aggs")
    for symbol in SYMBOLS:
        wait_for(lambda: latest_closed(col, symbol), 15, f"a closed {symbol} kline")
        col.wait_count(20, 15, f"aggTrade.{symbol}")


def wait_caught_up(sim: SimServer, col: Collector, fs: Feedsup, since_ms: int) -> None:
    """Live again: two more closed klines after the outage, on every symbol."""
    for symbol in SYMBOLS:
        wait_for(lambda: latest_closed(col, symbol) >= since_ms + 2 * 60_000, 20,
                 f"{symbol} klines closing after the outage")
    count = col.count("aggTrade.")
    col.wait_count(count + 20, 10, "aggTrade.")


def sim_now(sim: SimServer) -> int:
    return sim.call(lambda core: core.hub.advance())


def test_sigkill_with_a_long_outage_loses_and_duplicates_nothing(sim, feedsup_run, timing):
    fs, col = feedsup_run(sim, (KLINES, AGGS, TRADES))
    wait_started(fs, col)
    col.wait_count(20, 15, "trade.BTCUSDT")
    pids = {name: fs.stream(name)["pid"] for name in ("klines", "aggs", "trades")}
    t0, outage_from = time.monotonic(), sim_now(sim)
    # Kill both workers and refuse every reconnection for 4 s: 4 simulated minutes.
    sim.inject("refuse", duration=4)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for name, old in pids.items():
        wait_for(lambda: new_pid(fs, name, old), 20, f"{name} replaced")
    wait_caught_up(sim, col, fs, sim_now(sim))
    timing("SIGKILL + 4 simulated minutes refused -> backfilled and live", time.monotonic() - t0)
    assert not gap_frames(col, "kline.") and not gap_frames(col, "aggTrade."), \
        "REST could fill every kline and aggTrade: no gap may be announced"
    assert col.gaps == [], "no seq gap at the consumer"
    for symbol in SYMBOLS:
        k = check_klines(sim, col, symbol)
        a = check_aggs(sim, col, symbol)
        assert k["backfilled"] >= 3, f"{symbol}: the outage's closed klines come from backfill: {k}"
        # ~4 aggTrades per simulated second over 240 s; at least a quarter of those.
        assert a["backfilled"] >= 4 * 240 // 4, f"{symbol}: the outage's aggTrades come from backfill: {a}"
        backfilled = [f for f in closed_klines(col, f"kline.{symbol}.1m") if f.get("backfill")]
        assert all(outage_from - 60_000 <= f["data"]["open_time"] for f in backfilled)
    wait_for(lambda: fs.stream("aggs")["stats"].get("backfilled", 0) > 0, 5, "backfilled in liveness stats")
    assert fs.stream("aggs")["stats"]["gaps"] == 0
    # ~2 trades per aggTrade over 4 simulated minutes: more than the 1000
    # recent trades REST serves, so the rest is announced, never silent.
    wait_for(lambda: sum(1 for f in frames_of(col, "trade.BTCUSDT") if f.get("backfill")) >= 900, 10,
             "recent trades backfilled")
    t = check_trades(col, "trade.BTCUSDT")
    assert t["backfilled"] >= 900 and t["lost"] > 0, t


def test_sigstopped_worker_and_rest_errors_during_backfill_are_retried(sim, feedsup_run, timing):
    fs, col = feedsup_run(sim)
    wait_started(fs, col)
    old = fs.stream("aggs")["pid"]
    t0 = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    try:
        # The replacement's REST calls fail a few times: it must retry, not give up.
        sim.inject("rest_error", status=503, count=4)
        wait_for(lambda: new_pid(fs, "aggs", old), 20, "replacement of the frozen worker")
        wait_caught_up(sim, col, fs, sim_now(sim))
        timing("SIGSTOP + REST 503s during backfill -> backfilled and live", time.monotonic() - t0)
    finally:
        if alive(old):
            os.kill(old, signal.SIGKILL)
    assert not gap_frames(col)
    stats = wait_for(lambda: fs.stream("aggs")["stats"].get("backfilled") and fs.stream("aggs")["stats"], 5,
                     "backfill stats")
    assert stats["rest_errors"] >= 1, "the replacement met the injected REST errors and retried"
    for symbol in SYMBOLS:
        a = check_aggs(sim, col, symbol)
        assert a["backfilled"] > 0 and a["lost"] == 0
        check_klines(sim, col, symbol)


def test_a_rest_ban_during_backfill_is_announced_as_a_gap(sim, feedsup_run, timing):
    fs, col = feedsup_run(sim)
    wait_started(fs, col)
    old = fs.stream("aggs")["pid"]
    # Every REST call is answered 418 (banned for 120 s) while the worker comes
    # back: backfill cannot happen before its deadline, so it says so.
    sim.inject("rest_error", status=418, retry_after=120, duration=3)
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: new_pid(fs, "aggs", old), 20, "replacement")
    wait_for(lambda: len(gap_frames(col)) >= len(SYMBOLS), 15, "a gap frame per aggTrade topic")
    timing("REST ban during backfill -> gap announced", time.monotonic() - t0)
    sim.clear_faults()
    col.wait_more(10, 20, "aggTrade.")
    for f in gap_frames(col):
        assert f["topic"].startswith("aggTrade.")
        assert "418" in f["gap"]["reason"] or "banned" in f["gap"]["reason"]
    for symbol in SYMBOLS:
        a = check_aggs(sim, col, symbol)          # every missing id is inside an announced gap
        assert a["backfilled"] == 0
    wait_for(lambda: fs.stream("aggs")["stats"].get("gaps", 0) >= len(SYMBOLS), 5, "gaps in liveness stats")
