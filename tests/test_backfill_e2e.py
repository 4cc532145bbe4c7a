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

from feedsup.sim import SimServer
from harness import Collector, Feedsup, alive, wait_for

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
KLINES = {"name": "klines", "market": "spot", "channel": "kline", "symbols": SYMBOLS, "intervals": ["1m"]}
AGGS = {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS}
TRADES = {"name": "trades", "market": "spot", "channel": "trade", "symbols": ["BTCUSDT"]}
SPEED = 60


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=SPEED, symbols=tuple(SYMBOLS), trade_rate=4, ping_interval=1, pong_timeout=3)


@pytest.fixture
def feedsup_run(start_feedsup):
    def start(sim: SimServer, streams: tuple[dict, ...] = (KLINES, AGGS)) -> tuple[Feedsup, Collector]:
        # Many quick restarts during a refused period must not end in FATAL.
        return start_feedsup(sim, streams, restart={"intensity": 100},
                             collect=lambda fs: Collector(fs.pub, ("kline.", "aggTrade.", "trade.")))
    return start


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


def test_a_hole_inside_a_live_stream_is_backfilled_without_a_restart(sim, feedsup_run, timing):
    fs, col = feedsup_run(sim)
    wait_started(fs, col)
    pids = {name: fs.stream(name)["pid"] for name in ("klines", "aggs")}
    # The server silently skips BTCUSDT's events for 1.5 s (90 simulated
    # seconds) while the connection stays up and other symbols flow: no
    # restart, so only the worker's own continuity check can notice.
    t0 = time.monotonic()
    sim.inject("data_stall", target={"stream": "btcusdt@aggTrade"}, duration=1.5)
    sim.inject("data_stall", target={"stream": "btcusdt@kline_1m"}, duration=1.5)
    wait_for(lambda: fs.stream("aggs")["stats"].get("holes", 0) >= 1, 10, "the aggTrade hole noticed")
    wait_for(lambda: fs.stream("klines")["stats"].get("holes", 0) >= 1, 10, "the kline hole noticed")
    wait_caught_up(sim, col, fs, sim_now(sim))
    timing("hole inside a live stream -> backfilled in place", time.monotonic() - t0)
    assert {name: fs.stream(name)["pid"] for name in ("klines", "aggs")} == pids, "no restart"
    assert not gap_frames(col)
    a, k = check_aggs(sim, col, "BTCUSDT"), check_klines(sim, col, "BTCUSDT")
    assert a["backfilled"] >= 100 and a["lost"] == 0, a
    assert k["backfilled"] >= 1 and k["lost"] == 0, k
    check_aggs(sim, col, "ETHUSDT")


# -- chaos: random faults from the whole catalogue --------------------------------------

# The CI run is short; a long one (issue 4 asks for >= 60 simulated minutes
# and >= 30 faults): FEEDSUP_CHAOS_FAULTS=80 python3 -m pytest -s -k chaos ...
CHAOS_FAULTS = int(os.environ.get("FEEDSUP_CHAOS_FAULTS", "20"))
CHAOS_EVERY_S = float(os.environ.get("FEEDSUP_CHAOS_EVERY_S", "0.5"))


def random_fault(rng, sim: SimServer, fs: Feedsup) -> str:
    """Inject one fault; return what it was."""
    kind = rng.choice(["drop", "close", "malformed", "server_shutdown", "lifetime", "stall", "data_stall",
                       "latency", "refuse", "rest_error", "sigkill", "sigstop"])
    if kind in ("sigkill", "sigstop"):
        name = rng.choice(["klines", "aggs"])
        pid = fs.stream(name).get("pid")
        if pid:
            os.kill(pid, signal.SIGKILL if kind == "sigkill" else signal.SIGSTOP)
        return f"{kind} {name} pid={pid}"
    params: dict[str, Any] = {}
    if kind == "stall":
        params = {"duration": rng.uniform(1.5, 3)}
    elif kind == "data_stall":
        params = {"duration": rng.uniform(1, 4)}
    elif kind == "latency":
        params = {"duration": 2, "ms": rng.randint(100, 800)}
    elif kind == "refuse":
        params = {"duration": rng.uniform(0.5, 2)}
    elif kind == "malformed":
        params = {"variant": rng.choice(["invalid_json", "unknown_event", "truncated", "oversized"]),
                  "count": 2, "size": 300_000}
    elif kind == "rest_error":
        status = rng.choice([429, 418, 500, 503, 504])
        params = {"status": status, "count": rng.randint(1, 3)}
        if status in (418, 429):
            params["retry_after"] = rng.choice([1, 2])
    elif kind == "close":
        params = {"code": rng.choice([1000, 1001, 1011, 1008])}
    sim.inject(kind, **params)
    return f"{kind} {params}" if params else kind


def test_chaos_every_kline_and_aggtrade_once_or_announced(sim, feedsup_run, timing):
    import random
    from statistics import median
    rng = random.Random(int(os.environ.get("FEEDSUP_CHAOS_SEED", "4")))
    fs, col = feedsup_run(sim)
    wait_started(fs, col)
    sim_start, t_start = sim_now(sim), time.monotonic()
    injected: list[str] = []
    recoveries: list[float] = []
    stopped: list[int] = []
    try:
        for _ in range(CHAOS_FAULTS):
            before = {s: col.count(f"aggTrade.{s}") for s in SYMBOLS}
            t0 = time.monotonic()
            what = random_fault(rng, sim, fs)
            injected.append(f"t+{t0 - t_start:5.1f}s {what}")
            pid = what.rsplit("=", 1)[-1]
            if what.startswith("sigstop") and pid.isdigit():
                stopped.append(int(pid))
            time.sleep(CHAOS_EVERY_S)  # the pace of the fault schedule, not a synchronisation
            # Recovery: aggTrades flowing again on every symbol after this fault.
            wait_for(lambda: all(col.count(f"aggTrade.{s}") > before[s] for s in SYMBOLS), 30,
                     f"data after {what}")
            recoveries.append(time.monotonic() - t0)
    finally:
        sim.clear_faults()
        for pid in stopped:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    wait_caught_up(sim, col, fs, sim_now(sim))
    sim_minutes = (sim_now(sim) - sim_start) / 60_000
    print(f"\nchaos: {len(injected)} faults over {sim_minutes:.0f} simulated minutes "
          f"({time.monotonic() - t_start:.1f} s)")
    for what, took in zip(injected, recoveries):
        print(f"  fault: {what}  (data again after {took:.2f} s)")
    print(f"  recovery p50 {median(recoveries):.2f} s, max {max(recoveries):.2f} s")
    if os.environ.get("FEEDSUP_CHAOS_DUMP"):
        dump = os.environ["FEEDSUP_CHAOS_DUMP"]
        with open(dump + ".frames", "w") as out:
            for f in list(col.frames):
                out.write(json.dumps({k: v for k, v in f.items() if k != "_t"}, default=str) + "\n")
        with open(dump + ".log", "w") as out:
            out.write(fs.log())
    counts = {s: (check_klines(sim, col, s), check_aggs(sim, col, s)) for s in SYMBOLS}
    for s, (k, a) in counts.items():
        print(f"  {s}: klines {k}, aggTrades {a}")
    for name in ("klines", "aggs"):
        stats = fs.stream(name)["stats"]
        print(f"  {name} worker now: restarts {fs.stream(name)['restarts']}, "
              f"holes {stats.get('holes')}, gaps {stats.get('gaps')}, rest_errors {stats.get('rest_errors')}")
    timing(f"chaos: {len(injected)} faults, recovery max", max(recoveries))
    assert col.gaps == [], "no seq gap at the consumer"
    for s, (k, a) in counts.items():
        assert k["lost"] == 0 and a["lost"] == 0, f"{s}: REST could have filled every hole"
