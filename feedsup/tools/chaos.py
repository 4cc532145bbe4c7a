"""Chaos run: random faults against simulator -> feedsup -> consumer, then
check the consumer's data against the simulator's REST truth.

    python -m feedsup.tools.chaos --sim-minutes 60 --faults 30 --speed 120

Starts ``feedsup sim`` and ``feedsup run`` as real processes, subscribes to
every kline and aggTrade topic, injects seeded random faults from the
simulator's catalogue plus worker SIGKILL and SIGSTOP, and measures how
long each recovery took. At the end it checks, per symbol:

* every closed 1m kline exactly once and in order, equal field for field to
  REST ``klines`` (a halted span has no klines: nothing to deliver);
* every aggTrade id exactly once and in order, equal to REST ``aggTrades``;
* every hole covered by an announced gap frame.

Used by ``tests/test_chaos.py`` (short run in CI) and ``bench/chaos.py``
(the long one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedsup.ipc.client import Subscriber, request
from feedsup.procs import alive, read_line, tied

# Faults that end the targeted connection (recovery = a new worker streams).
# ``outage`` is exchange-wide: every connection drops, upgrades and REST fail.
BREAKING = ("drop", "close", "stall", "data_stall", "server_shutdown", "lifetime", "sigkill", "sigstop",
            "outage")
# Faults the stream rides through (recovery = data keeps flowing). ``halt``
# stops trading on one symbol (no trades, no klines for the span: nothing to
# deliver, nothing to announce); ``rest_lag`` makes REST trail the streams,
# its newest kline row still open there.
NON_BREAKING = ("latency", "malformed", "rest_error", "refuse", "halt", "rest_lag")
CATALOGUE = BREAKING + NON_BREAKING


@dataclass(frozen=True)
class ChaosOptions:
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    speed: float = 120.0
    sim_minutes: float = 60.0
    faults: int = 30
    seed: int = 7
    trade_rate: float = 2.0


@dataclass
class FaultRecord:
    at: float
    kind: str
    stream: str
    detail: str
    recovery: float | None = None


@dataclass
class Report:
    faults: list[FaultRecord] = field(default_factory=list)
    klines: dict[str, int] = field(default_factory=dict)     # symbol -> closed klines checked
    trades: dict[str, int] = field(default_factory=dict)     # symbol -> aggTrades checked
    backfilled: int = 0
    gap_frames: int = 0
    problems: list[str] = field(default_factory=list)
    sim_minutes: float = 0.0
    wall_seconds: float = 0.0

    def recovery_times(self) -> list[float]:
        return [f.recovery for f in self.faults if f.recovery is not None]

    def summary(self) -> str:
        lines = [f"chaos: {len(self.faults)} faults over {self.sim_minutes:.0f} simulated minutes "
                 f"({self.wall_seconds:.0f} s wall)"]
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        lines.append("  faults: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
        rec = self.recovery_times()
        if rec:
            lines.append(f"  recovery (breaking faults, fault -> fresh live data): p50 {statistics.median(rec):.2f} s,"
                         f" max {max(rec):.2f} s, n={len(rec)}")
        lines.append("  closed 1m klines checked: " + ", ".join(f"{s} {n}" for s, n in self.klines.items()))
        lines.append("  aggTrade ids checked:     " + ", ".join(f"{s} {n}" for s, n in self.trades.items()))
        lines.append(f"  backfilled frames {self.backfilled}, gap frames {self.gap_frames}, "
                     f"problems {len(self.problems)}")
        lines += [f"  PROBLEM: {p}" for p in self.problems[:20]]
        return "\n".join(lines)


class _Consumer(threading.Thread):
    def __init__(self, endpoint: str, prefixes: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.frames: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self._sub = Subscriber(endpoint, prefixes)

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                frame = self._sub.recv(timeout=0.05)
                if frame is not None:
                    frame["_t"] = time.monotonic()
                    self.frames.append(frame)
        finally:
            self._sub.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    @property
    def seq_gaps(self) -> int:
        return self._sub.tracker.missed


class ChaosRun:
    PREFIXES = ("kline.", "aggTrade.")     # what the consumer takes
    def __init__(self, options: ChaosOptions, workdir: Path, log=print) -> None:
        self.o = options
        self.dir = workdir
        self.log = log
        self.rng = random.Random(options.seed)
        self.sim: subprocess.Popen | None = None
        self.fs: subprocess.Popen | None = None
        self.urls: dict[str, str] = {}
        self.control = f"ipc://{workdir}/ctl"
        self.consumer: _Consumer | None = None
        self.report = Report()

    # -- processes ---------------------------------------------------------------

    def start(self) -> None:
        self.sim = subprocess.Popen(
            tied([sys.executable, "-m", "feedsup.sim", "--seed", str(self.o.seed), "--speed", str(self.o.speed),
                  "--symbols", ",".join(self.o.symbols), "--trade-rate", str(self.o.trade_rate),
                  "--ping-interval", "2", "--pong-timeout", "5"]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.urls = json.loads(read_line(self.sim, 30))
        config = self._write_config()
        self.consumer = _Consumer(f"ipc://{self.dir}/pub", self.PREFIXES)
        self.consumer.start()
        self.fs = subprocess.Popen(tied([sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]),
                                   stdout=subprocess.DEVNULL, stderr=open(self.dir / "feedsup.log", "wb"))

    def _config_head(self, backoff_initial: float, backoff_max: float, intensity: int) -> str:
        """Endpoints, fast detection (a 2 s ping, 3 s staleness) and the restart policy."""
        return f"""
[feedsup]
pub = "ipc://{self.dir}/pub"
control = "{self.control}"
[binance.spot]
ws_url = "{self.urls['ws_url']}"
rest_url = "{self.urls['rest_url']}"
[connection]
ping_interval = 2
ping_timeout = 1
stale_after = 3
liveness_interval = 0.2
liveness_timeout = 1.5
connect_timeout = 3
[restart]
backoff_initial = {backoff_initial}
backoff_max = {backoff_max}
intensity = {intensity}
period = 60
stop_timeout = 1
"""

    def _write_config(self) -> Path:
        syms = json.dumps(list(self.o.symbols))
        path = self.dir / "chaos.toml"
        path.write_text(self._config_head(backoff_initial=0.1, backoff_max=1, intensity=1000) + f"""
[[stream]]
name = "klines"
market = "spot"
channel = "kline"
symbols = {syms}
intervals = ["1m"]
[[stream]]
name = "trades"
market = "spot"
channel = "aggTrade"
symbols = {syms}
""")
        return path

    def close(self) -> None:
        """Stop everything; each step runs even if an earlier one fails."""
        try:
            if self.consumer is not None:
                self.consumer.stop()
        finally:
            for proc in (self.fs, self.sim):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    # -- observation ---------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        try:
            return {s["name"]: s for s in request(self.control, "status", timeout=2)["streams"]}
        except Exception:
            return {}

    def sim_now_ms(self) -> int:
        # The control API, not /api/v3/time: injected REST errors must not hit the referee.
        with urllib.request.urlopen(self.urls["control_url"] + "/state", timeout=5) as resp:
            return json.loads(resp.read())["sim_time"]

    def _wait(self, cond, timeout: float, what: str) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            time.sleep(0.05)  # polling period of a deadline-bounded wait
        self.report.problems.append(f"timed out after {timeout:g} s waiting for {what}")
        return False

    def _fresh_live(self, stream: str, since: float) -> bool:
        prefix = "kline." if stream == "klines" else "aggTrade."
        for f in reversed(self.consumer.frames[-200:]):
            if f["_t"] <= since:
                return False
            if f["topic"].startswith(prefix) and not f.get("backfill") and f.get("data") is not None:
                return True
        return False

    # -- faults ---------------------------------------------------------------------

    def inject(self, kind: str, stream: str, row: dict[str, Any]) -> str:
        pid = row.get("pid")
        if kind == "sigkill":
            os.kill(pid, signal.SIGKILL)
            return f"pid {pid}"
        if kind == "sigstop":
            os.kill(pid, signal.SIGSTOP)
            return f"pid {pid}"
        target = self._connection_of(pid)
        params: dict[str, Any] = {}
        if kind == "close":
            params["code"] = self.rng.choice((1001, 1008, 1011))
        elif kind in ("stall", "data_stall"):
            params["duration"] = 30
        elif kind == "latency":
            params.update(ms=self.rng.choice((50, 200, 500)), duration=2)
        elif kind == "malformed":
            params.update(variant=self.rng.choice(("invalid_json", "unknown_event", "truncated", "oversized")),
                          count=2)
        elif kind == "refuse":
            target = {}
            params["duration"] = 2
        elif kind == "rest_error":
            target = {}
            params.update(status=self.rng.choice((500, 503, 429)), count=3, retry_after=1)
        elif kind == "server_shutdown":
            params["delay"] = 0.5
        elif kind == "halt":
            target = {}
            params.update(symbol=self.rng.choice(self.o.symbols), duration=self.rng.choice((1, 2)))
        elif kind == "rest_lag":
            target = {}
            params.update(ms=self.rng.choice((5_000, 30_000, 90_000)), duration=3)
        elif kind == "outage":
            target = {}
            params.update(duration=self.rng.choice((1, 2)), mode=self.rng.choice(("503", "reset")),
                          status=self.rng.choice((500, 502, 503, 504)))
        body = json.dumps({"kind": kind, "target": target, **params}).encode()
        req = urllib.request.Request(self.urls["control_url"] + "/faults", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        return json.dumps({"target": target, **params}, separators=(",", ":"))

    def _connection_of(self, pid: int | None) -> dict[str, Any]:
        """The sim connection the worker holds: match by the worker's local port."""
        port = _local_ports(pid) if pid else set()
        with urllib.request.urlopen(self.urls["control_url"] + "/connections", timeout=5) as resp:
            conns = json.loads(resp.read())
        conns = conns.get("connections", conns) if isinstance(conns, dict) else conns
        for c in conns:
            if int(c.get("client", ":0").rsplit(":", 1)[1]) in port:
                return {"conn": c["id"]}
        return {"conn": -1}

    def run(self) -> Report:
        started = time.monotonic()
        self.start()
        try:
            self._wait(lambda: all(s.get("state") == "RUNNING" for s in self.status().values())
                       and len(self.status()) == 2, 30, "both streams RUNNING")
            sim_start = self.sim_now_ms()
            wall_budget = self.o.sim_minutes * 60 / self.o.speed
            spacing = wall_budget / max(1, self.o.faults)
            kinds = list(CATALOGUE)
            for i in range(self.o.faults):
                kind = kinds[i] if i < len(kinds) else self.rng.choice(kinds)   # every kind at least once
                stream = self.rng.choice(("klines", "trades"))
                self._fault(kind, stream, spacing)
            # Keep going until the market covered the requested simulated time.
            self._wait(lambda: self.sim_now_ms() - sim_start >= self.o.sim_minutes * 60_000,
                       wall_budget * 3 + 60, "the simulated period to elapse")
            self._settle()
            self.report.sim_minutes = (self.sim_now_ms() - sim_start) / 60_000
            self.consumer.stop()
            self.verify(list(self.consumer.frames))   # against REST, while the sim still runs
        finally:
            self.report.wall_seconds = time.monotonic() - started
            self.close()
        return self.report

    def _fault(self, kind: str, stream: str, spacing: float) -> None:
        row = self.status().get(stream, {})
        if not row.get("pid"):
            self._wait(lambda: self.status().get(stream, {}).get("state") == "RUNNING", 20, f"{stream} RUNNING")
            row = self.status().get(stream, {})
        t0 = time.monotonic()
        detail = self.inject(kind, stream, row)
        record = FaultRecord(t0, kind, stream, detail)
        self.report.faults.append(record)
        self.log(f"  fault {len(self.report.faults):2d}: {kind:15s} {stream:7s} {detail}")
        old = row.get("pid")
        if kind in BREAKING:
            def recovered() -> bool:
                now_row = self.status().get(stream, {})
                return (now_row.get("state") == "RUNNING" and now_row.get("pid") not in (None, old)
                        and self._fresh_live(stream, t0))
            if self._wait(recovered, 30, f"{stream} to recover from {kind}"):
                record.recovery = time.monotonic() - t0
        if kind == "sigstop" and old:
            self._wait(lambda: not alive(old), 10, "the stopped worker to be killed")
        rest = spacing - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)  # pacing between faults, not synchronisation

    def _settle(self) -> None:
        """Let the last recovery finish: both streams up and two more kline closes seen."""
        urllib.request.urlopen(urllib.request.Request(self.urls["control_url"] + "/faults", method="DELETE"),
                               timeout=5).read()
        self._wait(lambda: all(s.get("state") == "RUNNING" for s in self.status().values()), 30, "calm")
        target = self.sim_now_ms() + 2 * 60_000
        self._wait(lambda: self.sim_now_ms() >= target + 5_000, 60, "two more minutes")
        closes = self._count_closed()
        self._wait(lambda: self._count_closed() > closes, 30, "one more kline close")

    def _count_closed(self) -> int:
        return sum(1 for f in list(self.consumer.frames) if f["topic"].startswith("kline.")
                   and f.get("data") and f["data"].get("closed"))

    # -- verification -------------------------------------------------------------

    def verify(self, frames: list[dict[str, Any]]) -> None:
        gaps: dict[str, list[dict[str, Any]]] = {}
        for f in frames:
            if f.get("gap"):
                gaps.setdefault(f["topic"], []).append(f["gap"])
                self.report.gap_frames += 1
            elif f.get("backfill"):
                self.report.backfilled += 1
        if self.consumer and self.consumer.seq_gaps:
            self.report.problems.append(f"{self.consumer.seq_gaps} frames lost between parent and consumer")
        for symbol in self.o.symbols:
            self._verify_trades(symbol, frames, gaps.get(f"aggTrade.{symbol}", []))
            self._verify_klines(symbol, frames, gaps.get(f"kline.{symbol}.1m", []))

    def _rest(self, path: str, **params: Any) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with urllib.request.urlopen(f"{self.rest_url}{path}?{query}", timeout=10) as resp:
            return json.loads(resp.read())

    def _verify_trades(self, symbol: str, frames: list[dict[str, Any]], gaps: list[dict[str, Any]]) -> None:
        got = [f["data"] for f in frames if f["topic"] == f"aggTrade.{symbol}" and f.get("data")]
        ids = [d["agg_id"] for d in got]
        if not ids:
            self.report.problems.append(f"{symbol}: no aggTrades")
            return
        if ids != sorted(set(ids)):
            self.report.problems.append(f"{symbol}: aggTrade ids duplicated or out of order")
        truth = self._agg_truth(symbol, ids[0], ids[-1])
        by_id = {d["agg_id"]: d for d in got}
        missing = [t["a"] for t in truth if t["a"] not in by_id]
        unannounced = [a for a in missing if not any(_covers_id(g, a) for g in gaps)]
        if unannounced:
            self.report.problems.append(f"{symbol}: {len(unannounced)} aggTrades missing without a gap notice "
                                        f"(first {unannounced[:5]})")
        wrong = [t["a"] for t in truth if t["a"] in by_id and (by_id[t["a"]]["price"], by_id[t["a"]]["qty"])
                 != (t["p"], t["q"])]
        if wrong:
            self.report.problems.append(f"{symbol}: {len(wrong)} aggTrades differ from REST (first {wrong[:5]})")
        self.report.trades[symbol] = len(ids)

    def _agg_truth(self, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        nxt = first
        while nxt <= last:
            page = self._rest("/api/v3/aggTrades", symbol=symbol, fromId=nxt, limit=1000)
            if not page:
                break
            out += [t for t in page if t["a"] <= last]
            nxt = page[-1]["a"] + 1
        return out

    def _verify_klines(self, symbol: str, frames: list[dict[str, Any]], gaps: list[dict[str, Any]]) -> None:
        closed = [f["data"] for f in frames if f["topic"] == f"kline.{symbol}.1m" and f.get("data")
                  and f["data"].get("closed")]
        opens = [k["open_time"] for k in closed]
        if not opens:
            self.report.problems.append(f"{symbol}: no closed klines")
            return
        if opens != sorted(set(opens)):
            self.report.problems.append(f"{symbol}: closed klines duplicated or out of order")
        truth = []
        start = opens[0]
        while start <= opens[-1]:
            page = self._rest("/api/v3/klines", symbol=symbol, interval="1m", startTime=start,
                              endTime=opens[-1], limit=1000)
            if not page:
                break
            truth += page
            start = page[-1][0] + 60_000
        by_open = {k["open_time"]: k for k in closed}
        missing = [row[0] for row in truth if row[0] not in by_open]
        unannounced = [t for t in missing if not any(_covers_ms(g, t) for g in gaps)]
        if unannounced:
            self.report.problems.append(f"{symbol}: {len(unannounced)} closed klines missing without a gap notice")
        # Field for field: a closed kline is the exchange's final record.
        wrong = [row[0] for row in truth if row[0] in by_open and
                 tuple(by_open[row[0]][f] for f in _KLINE_FIELDS) != tuple(row[i] for i in _KLINE_COLUMNS)]
        if wrong:
            row = next(r for r in truth if r[0] == wrong[0])
            got = by_open[wrong[0]]
            diff = {f: (got[f], row[i]) for f, i in zip(_KLINE_FIELDS, _KLINE_COLUMNS) if got[f] != row[i]}
            self.report.problems.append(f"{symbol}: {len(wrong)} closed klines differ from REST (first {wrong[:3]}; "
                                        f"{wrong[0]} got/REST {diff}, backfill {bool(got.get('event_time') is None)})")
        self.report.klines[symbol] = len(opens)

    @property
    def rest_url(self) -> str:
        return self.urls["rest_url"]



# -- an exchange-wide outage across many streams -------------------------------------

@dataclass(frozen=True)
class OutageOptions:
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    speed: float = 120.0
    outage_s: float = 90.0
    mode: str = "reset"               # upgrades refused by a reset, or "503"
    backoff_max: float = 10.0
    intensity: int = 5                # low on purpose: an outage must never count
    seed: int = 7
    trade_rate: float = 2.0


@dataclass
class OutageReport(Report):
    streams: int = 0
    fatal: list[str] = field(default_factory=list)          # streams seen FATAL at any time
    resumed: dict[str, float] = field(default_factory=dict)  # stream -> outage end -> data delivered
    live: dict[str, float] = field(default_factory=dict)     # stream -> outage end -> fresh live data
    unannounced: list[str] = field(default_factory=list)     # no-history topics silent without a notice

    def summary(self) -> str:
        lines = [super().summary()]
        slow = max(self.resumed.values(), default=float("nan"))
        lines.append(f"  outage across {self.streams} streams: FATAL {len(self.fatal)} {self.fatal or ''}; "
                     f"every stream delivering again {slow:.2f} s after the outage ended (slowest of "
                     f"{len(self.resumed)})")
        lines += [f"  {name}: data {t:.2f} s, fresh live data {self.live.get(name, float('nan')):.2f} s "
                  f"after the outage" for name, t in sorted(self.resumed.items())]
        return "\n".join(lines)


class OutageRun(ChaosRun):
    """One exchange-wide outage (every connection reset, upgrades refused,
    REST 5xx) across eight streams: a kline and an aggTrade stream per symbol,
    bookTicker and depth. Checked: no stream ever FATAL, each delivers fresh
    live data again within ``backoff_max`` + 2 s of the outage's end, every
    aggTrade and closed kline against REST truth, and a gap notice on every
    no-history topic."""

    NO_HISTORY = ("bookTicker", "depth")
    PREFIXES = ("kline.", "aggTrade.", "bookTicker.", "depth.")

    def __init__(self, options: OutageOptions, workdir: Path, log=print) -> None:
        super().__init__(ChaosOptions(symbols=options.symbols, speed=options.speed, seed=options.seed,
                                      trade_rate=options.trade_rate), workdir, log)
        self.oo = options
        self.report = OutageReport()
        self.names = ([f"klines-{s}" for s in options.symbols] + [f"trades-{s}" for s in options.symbols]
                      + ["book", "depth"])

    def _write_config(self) -> Path:
        o = self.oo
        syms = json.dumps(list(o.symbols))
        streams = "".join(f"""
[[stream]]
name = "klines-{s}"
market = "spot"
channel = "kline"
symbols = ["{s}"]
intervals = ["1m"]
[[stream]]
name = "trades-{s}"
market = "spot"
channel = "aggTrade"
symbols = ["{s}"]
""" for s in o.symbols)
        path = self.dir / "outage.toml"
        path.write_text(self._config_head(backoff_initial=0.5, backoff_max=o.backoff_max,
                                          intensity=o.intensity) + f"""
{streams}
[[stream]]
name = "book"
market = "spot"
channel = "bookTicker"
symbols = {syms}
[[stream]]
name = "depth"
market = "spot"
channel = "depth"
symbols = {syms}
""")
        return path

    def run(self) -> OutageReport:
        started = time.monotonic()
        self.start()
        try:
            self._wait(lambda: self._all_running(), 60, "every stream RUNNING")
            self.report.streams = len(self.status())
            self._wait(lambda: self._count_closed() >= 3, 30, "three kline closes before the outage")
            sim_start = self.sim_now_ms()
            t0 = time.monotonic()
            detail = self.inject("outage", "all", {})
            self.report.faults.append(FaultRecord(t0, "outage", "all", detail))
            self.log(f"  outage {self.oo.outage_s:g} s ({detail})")
            end = t0 + self.oo.outage_s
            while time.monotonic() < end:
                self._note_fatal()
                time.sleep(0.25)      # sampling period of the FATAL watch
            self._await_resumed(end)
            self._settle()
            self.report.sim_minutes = (self.sim_now_ms() - sim_start) / 60_000
            self.consumer.stop()
            frames = list(self.consumer.frames)
            self.verify(frames)
            self._verify_announced(frames, t0, end)
        finally:
            self.report.wall_seconds = time.monotonic() - started
            self.close()
        return self.report

    def inject(self, kind: str, stream: str, row: dict[str, Any]) -> str:
        if kind != "outage":
            return super().inject(kind, stream, row)
        params = {"duration": self.oo.outage_s, "mode": self.oo.mode, "status": 503}
        body = json.dumps({"kind": kind, "target": {}, **params}).encode()
        req = urllib.request.Request(self.urls["control_url"] + "/faults", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        return json.dumps(params, separators=(",", ":"))

    def _all_running(self) -> bool:
        rows = self.status()
        self._note_fatal(rows)
        return len(rows) == len(self.names) and all(r.get("state") == "RUNNING" for r in rows.values())

    def _note_fatal(self, rows: dict[str, dict[str, Any]] | None = None) -> None:
        for name, row in (rows if rows is not None else self.status()).items():
            if row.get("state") == "FATAL" and name not in self.report.fatal:
                self.report.fatal.append(name)

    def _await_resumed(self, end: float) -> None:
        bound = self.oo.backoff_max + 30
        pending = set(self.names)

        def all_resumed() -> bool:
            self._note_fatal()
            # One snapshot per check: the consumer thread appends while we
            # read, and the first-data and first-live times must come from
            # the same frames (a frame landing between two reads once marked
            # a stream live without ever marking it resumed).
            frames = list(self.consumer.frames)
            for name in list(pending):
                first, live = first_after(frames, self._prefixes(name), end)
                if first is not None:
                    self.report.resumed.setdefault(name, first - end)
                if live is not None:
                    self.report.live[name] = live - end
                    pending.discard(name)
            return not pending
        self._wait(all_resumed, bound, "every stream delivering after the outage")

    def _prefixes(self, name: str) -> tuple[str, ...]:
        kind, _, symbol = name.partition("-")
        if kind == "klines":
            return (f"kline.{symbol}.",)
        if kind == "trades":
            return (f"aggTrade.{symbol}",)
        return ("bookTicker.",) if name == "book" else ("depth.",)

    def _verify_announced(self, frames: list[dict[str, Any]], t0: float, end: float) -> None:
        """Each no-history topic that went silent over the outage said so."""
        for channel in self.NO_HISTORY:
            for symbol in self.o.symbols:
                topic = f"{channel}.{symbol}"
                notices = [f for f in frames if f["topic"] == topic and f.get("gap") and t0 <= f["_t"]]
                if not notices:
                    self.report.unannounced.append(topic)
                    self.report.problems.append(f"{topic}: silent over the outage without a gap notice")

    def _settle(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.urls["control_url"] + "/faults", method="DELETE"),
                               timeout=5).read()
        self._wait(lambda: self._all_running(), 60, "every stream RUNNING after the outage")
        target = self.sim_now_ms() + 2 * 60_000
        self._wait(lambda: self.sim_now_ms() >= target + 5_000, 60, "two more minutes")
        closes = self._count_closed()
        self._wait(lambda: self._count_closed() > closes, 30, "one more kline close")

_KLINE_FIELDS = ("open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
                 "taker_buy_volume", "taker_buy_quote_volume")
_KLINE_COLUMNS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)     # the same, in a REST klines row


def _covers_id(gap: dict[str, Any], agg_id: int) -> bool:
    lo, hi = gap.get("from_id"), gap.get("to_id")
    return lo is not None and lo <= agg_id and (hi is None or agg_id <= hi)


def _covers_ms(gap: dict[str, Any], open_time: int) -> bool:
    lo, hi = gap.get("from_ms"), gap.get("to_ms")
    return lo is not None and lo <= open_time and (hi is None or open_time <= hi)


def _local_ports(pid: int) -> set[int]:
    """Local TCP ports of ``pid``'s sockets (from /proc; loopback only here)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim-minutes", type=float, default=60)
    ap.add_argument("--faults", type=int, default=30)
    ap.add_argument("--speed", type=float, default=120)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,BNBUSDT")
    args = ap.parse_args(argv)
    opts = ChaosOptions(symbols=tuple(args.symbols.split(",")), speed=args.speed, sim_minutes=args.sim_minutes,
                        faults=args.faults, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="feedsup-chaos-") as tmp:
        report = ChaosRun(opts, Path(tmp)).run()
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())


def first_after(frames: list[dict[str, Any]], prefixes: tuple[str, ...],
                since: float) -> tuple[float | None, float | None]:
    """When the first data frame, and the first live (not backfilled) one, on
    ``prefixes`` arrived after ``since``; ``None`` for what has not come yet.
    A live frame is a data frame, so the first is never later than the live."""
    first = live = None
    for f in reversed(frames):
        if f["_t"] <= since:
            break
        if f["topic"].startswith(prefixes) and f.get("data") is not None:
            first = f["_t"]
            if not f.get("backfill"):
                live = f["_t"]
    return first, live
