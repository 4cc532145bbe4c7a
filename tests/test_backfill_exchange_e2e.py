"""End to end against exchange-side failures: a trading halt (no trades, no
klines for a span) and REST trailing the streams, each with worker kills.

Every closed kline a consumer receives must equal the exchange's final
record field for field (REST truth fetched after the fact), and every kline
REST knows must arrive once, in order, or inside an announced gap.

The simulator runs at 60x: one simulated minute per wall second.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from feedsup.sim import SimServer
from harness import Collector, Feedsup, wait_for
from test_backfill_e2e import gap_frames, new_pid, rest, sim_now

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
KLINES = {"name": "klines", "market": "spot", "channel": "kline", "symbols": SYMBOLS, "intervals": ["1m"]}
SPEED = 60
FIELDS = {"open": 1, "high": 2, "low": 3, "close": 4, "volume": 5, "close_time": 6, "quote_volume": 7,
          "trades": 8, "taker_buy_volume": 9, "taker_buy_quote_volume": 10}


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=SPEED, symbols=tuple(SYMBOLS), trade_rate=4, ping_interval=1, pong_timeout=3)


@pytest.fixture
def feedsup_run(start_feedsup):
    def start(sim: SimServer, **config) -> tuple[Feedsup, Collector]:
        return start_feedsup(sim, (KLINES,), restart={"intensity": 100},
                             collect=lambda fs: Collector(fs.pub, ("kline.",)), **config)
    return start


def closed(col: Collector, symbol: str) -> list[dict]:
    """Closed klines and gap notices of one topic, in arrival order."""
    return [f for f in list(col.frames)
            if f["topic"] == f"kline.{symbol}.1m" and (f.get("gap") or f["data"]["closed"])]


def latest_closed(col: Collector, symbol: str) -> int:
    data = [f["data"]["open_time"] for f in closed(col, symbol) if not f.get("gap")]
    return data[-1] if data else 0


def check_against_truth(sim: SimServer, col: Collector, symbol: str) -> dict[str, int]:
    """Closed klines once each, in order; every one REST knows in the span is
    there (or inside an announced gap); each equals REST's final row."""
    entries = closed(col, symbol)
    data = [f["data"] for f in entries if not f.get("gap")]
    assert data, f"no closed klines for {symbol}"
    opens = [d["open_time"] for d in data]
    assert opens == sorted(set(opens)), f"{symbol}: closed klines once each, in order"
    first, last = opens[0], opens[-1]
    truth: dict[int, list] = {}
    start = first
    while start <= last:
        page = rest(sim, "/api/v3/klines", symbol=symbol, interval="1m", startTime=start, limit=1000)
        truth.update((r[0], r) for r in page if r[0] <= last)
        if len(page) < 1000:
            break
        start = page[-1][0] + 1
    announced = [(f["gap"]["from_ms"], f["gap"]["to_ms"]) for f in entries if f.get("gap")]
    missing = [t for t in truth if t not in set(opens)
               and not any(a <= t <= (b if b is not None else t) for a, b in announced)]
    assert not missing, f"{symbol}: klines REST knows were neither delivered nor announced: {missing}"
    wrong = []
    for d in data:
        row = truth.get(d["open_time"])
        assert row is not None, f"{symbol}: delivered a kline REST does not know: {d}"
        diff = {k: (d[k], row[i]) for k, i in FIELDS.items() if d[k] != row[i]}
        if diff:
            wrong.append((d["open_time"], diff))
    assert not wrong, f"{symbol}: closed klines differ from the exchange's final values: {wrong}"
    return {"delivered": len(data), "backfilled": sum(1 for f in entries if f.get("backfill") and not f.get("gap")),
            "gaps": len(announced)}


def wait_first_closed(fs: Feedsup, col: Collector) -> None:
    fs.wait_running("klines")
    for symbol in SYMBOLS:
        wait_for(lambda: latest_closed(col, symbol), 15, f"a closed {symbol} kline")


def test_worker_killed_during_a_halt_backfills_across_it_and_ends(sim, feedsup_run, timing):
    fs, col = feedsup_run(sim)
    wait_first_closed(fs, col)
    # BTCUSDT halts for 4 s (4 simulated minutes); ETHUSDT keeps trading on
    # the same connection. The worker dies inside the halt, so its successor
    # must backfill across minutes REST has no klines for.
    halt = sim.inject("halt", symbol="BTCUSDT", duration=4)["params"]
    wait_for(lambda: sim_now(sim) > halt["from_ms"] + 90_000, 10, "the halt under way")
    old = fs.stream("klines")["pid"]
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: new_pid(fs, "klines", old), 20, "replacement")
    for symbol in SYMBOLS:
        wait_for(lambda: latest_closed(col, symbol) >= halt["to_ms"] + 2 * 60_000, 30,
                 f"{symbol} klines closing after the halt")
    timing("worker killed during a 4-minute halt -> live again after it", time.monotonic() - t0)
    assert not gap_frames(col, "kline."), "a span without klines is no loss: no gap notice"
    btc = check_against_truth(sim, col, "BTCUSDT")
    check_against_truth(sim, col, "ETHUSDT")
    opens = [f["data"]["open_time"] for f in closed(col, "BTCUSDT")]
    assert any(b - a > 60_000 for a, b in zip(opens, opens[1:])), "the halted minutes have no kline"
    assert btc["delivered"] >= 3


def test_closed_klines_equal_rest_truth_under_rest_lag_and_kills(sim, feedsup_run, timing):
    fs, col = feedsup_run(sim)
    wait_first_closed(fs, col)
    # REST trails the streams by 40 simulated seconds: its newest kline row is
    # usually still open there, with values that are not the final ones.
    sim.inject("rest_lag", ms=40_000)
    t0 = time.monotonic()
    for round_ in range(4):
        old = fs.stream("klines")["pid"]
        since = max(latest_closed(col, s) for s in SYMBOLS)
        sim.inject("refuse", duration=1.5)          # 90 simulated seconds down: klines close meanwhile
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: new_pid(fs, "klines", old), 20, f"replacement {round_}")
        for symbol in SYMBOLS:
            wait_for(lambda: latest_closed(col, symbol) > since + 60_000, 20, f"{symbol} klines after kill {round_}")
    timing("4 kills under a 40 s REST lag -> all closed klines final", time.monotonic() - t0)
    sim.clear_faults()      # the exchange's final record, fetched after the fact with no lag
    results = {s: check_against_truth(sim, col, s) for s in SYMBOLS}
    assert sum(r["backfilled"] for r in results.values()) >= 4, results
    assert not gap_frames(col, "kline."), results


def test_an_implausible_id_jump_is_malformed_not_a_hole(sim, start_feedsup, timing):
    aggs = {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS}
    fs, col = start_feedsup(sim, (aggs,), collect=lambda fs: Collector(fs.pub, ("aggTrade.",)))
    fs.wait_running("aggs")
    col.wait_count(20, 15, "aggTrade.BTCUSDT")
    pid = fs.stream("aggs")["pid"]
    sim.inject("malformed", target={"stream": "btcusdt@aggTrade"}, variant="id_jump")
    before = col.count("aggTrade.BTCUSDT")
    t0 = time.monotonic()
    col.wait_count(before + 40, 5, "aggTrade.BTCUSDT")
    timing("aggTrade id jump of 2**62 -> skipped, live continues", time.monotonic() - t0)
    wait_for(lambda: fs.stream("aggs")["stats"].get("malformed", 0) >= 1, 5, "counted as malformed")
    assert fs.stream("aggs")["pid"] == pid, "no restart"
    assert not gap_frames(col), "no gap: nothing was lost"
    ids = [f["data"]["agg_id"] for f in list(col.frames) if f["topic"] == "aggTrade.BTCUSDT"]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "ids consecutive, the hostile one not among them"
    assert fs.stream("aggs")["stats"].get("holes", 0) == 0


def test_an_implausible_first_frame_after_a_reconnect_is_never_published(sim, start_feedsup, timing):
    aggs = {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS}
    fs, col = start_feedsup(sim, (aggs,), restart={"intensity": 100},
                            collect=lambda fs: Collector(fs.pub, ("aggTrade.",)))
    fs.wait_running("aggs")
    col.wait_count(20, 15, "aggTrade.BTCUSDT")
    # BTCUSDT's data is held back on every connection, so the first BTCUSDT
    # frame the replacement sees is the hostile one (id + 2**62).
    sim.inject("data_stall", target={"stream": "btcusdt@aggTrade"})
    old = fs.stream("aggs")["pid"]
    seen = {c["id"] for c in sim.connections()}
    os.kill(old, signal.SIGKILL)
    conn = wait_for(lambda: next((c["id"] for c in sim.connections()
                                  if c["id"] not in seen and "btcusdt@aggTrade" in c["streams"]), None),
                    15, "the replacement's connection")
    sim.inject("malformed", target={"conn": conn}, variant="id_jump")
    sim.clear_faults()
    t0 = time.monotonic()

    def live_btc() -> list[int]:
        return [f["data"]["agg_id"] for f in list(col.frames) if f["topic"] == "aggTrade.BTCUSDT"
                and f["data"] and not f.get("backfill") and f["_t"] > t0]
    wait_for(lambda: len(live_btc()) >= 100, 15, "live BTCUSDT aggTrades again")
    timing("hostile first frame after a reconnect -> dropped, live again", time.monotonic() - t0)
    ids = [f["data"]["agg_id"] for f in list(col.frames) if f["topic"] == "aggTrade.BTCUSDT" and f["data"]]
    assert max(ids) < 2**60, "the hostile frame was published (its watermark would silence the topic)"
    assert ids == list(range(ids[0], ids[0] + len(ids))), "ids consecutive across the episode"
    assert not gap_frames(col), "nothing was lost"
