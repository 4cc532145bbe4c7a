"""End to end: how restarts play out with real processes against the simulator.

- an exchange-wide outage (refused upgrades, reset connections) longer than
  the restart intensity allows leaves no stream FATAL, and every stream
  delivers again within ``backoff_max`` + 2 s after it ends;
- a stream that does go FATAL says so on every topic it owned, in status and
  in metrics, and the parent exits 1 once every stream is FATAL;
- a SIGSTOPped worker that is still STARTING is replaced within
  ``liveness_timeout`` + 1 s (the RUNNING case is in test_supervision.py).

Each recovery time is printed under "measured times".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import REPO, Collector, alive, wait_for

LIVENESS_TIMEOUT = 1.5   # harness default ([connection] liveness_timeout)


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4, ping_interval=1, pong_timeout=3)


def stream(name: str, channel: str, *symbols: str) -> dict:
    return {"name": name, "market": "spot", "channel": channel, "symbols": list(symbols)}


def regular_after(col: Collector, prefix: str, wall_ns: int) -> dict | None:
    """The first regular frame on ``prefix`` the worker received after ``wall_ns``."""
    return next((f for f in list(col.frames) if f["topic"].startswith(prefix) and f.get("data") is not None
                 and not f.get("gap") and f["recv_ns"] > wall_ns), None)


def gap_notices(col: Collector, prefix: str = "") -> list[dict]:
    return [f for f in list(col.frames) if f["topic"].startswith(prefix) and f.get("gap")]


# -- an exchange-wide outage ------------------------------------------------------------

OUTAGE_STREAMS = (
    stream("agg", "aggTrade", "BTCUSDT"),
    stream("trades", "trade", "ETHUSDT"),
    stream("book_btc", "bookTicker", "BTCUSDT"),
    stream("book_eth", "bookTicker", "ETHUSDT"),
)
OUTAGE_TOPICS = ("aggTrade.BTCUSDT", "trade.ETHUSDT", "bookTicker.BTCUSDT", "bookTicker.ETHUSDT")


def test_an_outage_longer_than_the_intensity_allows_leaves_no_stream_fatal(sim, start_feedsup, timing):
    backoff_max, intensity, period, outage = 2.0, 2, 30, 12.0
    fs, col = start_feedsup(sim, OUTAGE_STREAMS,
                            restart={"backoff_max": backoff_max, "intensity": intensity, "period": period})
    for s in OUTAGE_STREAMS:
        fs.wait_running(s["name"])
    for topic in OUTAGE_TOPICS:
        col.wait_count(3, timeout=20, topic_prefix=topic)

    # Every connection is reset, and every new one refused: first by resets,
    # then by HTTP 503, as whole-venue incidents do.
    t0 = time.monotonic()
    sim.inject("refuse", mode="reset", duration=outage / 2)
    sim.inject("refuse", mode="503", duration=outage * 10)
    sim.inject("drop")
    try:
        wait_for(lambda: time.monotonic() - t0 >= outage, outage + 1, "the outage")
        during = {s["name"]: fs.stream(s["name"]) for s in OUTAGE_STREAMS}
    finally:
        sim.clear_faults()
    end_ns, end = time.time_ns(), time.monotonic()

    log = fs.log()
    spawns = log.count("event=spawn")
    # The test is only meaningful if the streams failed more often than the
    # intensity allows within its period.
    assert spawns >= len(OUTAGE_STREAMS) * (intensity + 2), log
    assert "new=FATAL" not in log
    assert all(row["state"] != "FATAL" for row in during.values()), during

    recovered = {}
    for topic in OUTAGE_TOPICS:
        frame = wait_for(lambda: regular_after(col, topic, end_ns), backoff_max + 10, f"{topic} after the outage")
        recovered[topic] = frame["_t"] - end
    slowest = max(recovered.values())
    timing(f"outage end -> every stream delivering (slowest {max(recovered, key=recovered.get)}; "
           f"{spawns} spawns during a {outage:g} s outage; backoff_max {backoff_max:g} s)", slowest)
    assert slowest <= backoff_max + 2.0, recovered
    assert all(fs.stream(s["name"])["state"] == "RUNNING" for s in OUTAGE_STREAMS)


# -- a FATAL stream ------------------------------------------------------------------------

def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def kill_twice(fs, name: str) -> None:
    """SIGKILL the stream's worker twice: a signal feedsup did not send is a
    counted failure, and the second one exceeds the restart intensity (1)."""
    pid = fs.wait_running(name)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: fs.stream(name)["pid"] not in (None, pid), 10, f"{name}: a replacement of {pid}")
    os.kill(fs.wait_running(name)["pid"], signal.SIGKILL)


def test_a_fatal_stream_announces_gaps_everywhere_and_all_fatal_exits_1(sim, start_feedsup, timing):
    price = stream("price", "aggTrade", "BTCUSDT", "ETHUSDT")
    book = stream("book", "bookTicker", "BTCUSDT")
    fs, col = start_feedsup(sim, (price, book), feedsup={"metrics_port": "any"},
                            restart={"intensity": 1, "period": 60})
    fs.wait_running("price")
    port = fs.status()["metrics_port"]
    fs.wait_running("book")
    for topic in ("aggTrade.BTCUSDT", "aggTrade.ETHUSDT", "bookTicker.BTCUSDT"):
        col.wait_count(3, timeout=20, topic_prefix=topic)

    t0 = time.monotonic()
    kill_twice(fs, "price")
    wait_for(lambda: fs.stream("price")["state"] == "FATAL", 10, "price FATAL")
    # aggTrade has REST history, yet a FATAL stream never backfills: both
    # of its topics say so.
    for topic in ("aggTrade.BTCUSDT", "aggTrade.ETHUSDT"):
        wait_for(lambda: any("FATAL" in g["gap"]["reason"] for g in gap_notices(col, topic)), 5,
                 f"a FATAL gap notice on {topic}")
    timing("2nd SIGKILL -> FATAL gap notices on every topic", time.monotonic() - t0)
    notice = next(g for g in gap_notices(col, "aggTrade.BTCUSDT") if "FATAL" in g["gap"]["reason"])
    assert "restart intensity exceeded" in notice["gap"]["reason"]
    assert notice["gap"]["from_ms"] is not None and notice["gap"]["to_ms"] is None
    assert gap_notices(col, "bookTicker.") == []

    # Visible in status and metrics; the parent stays up for the other stream.
    assert fs.stream("price")["state"] == "FATAL" and fs.proc.poll() is None

    def fatal_in_metrics():
        m = scrape(port)
        return m.get(("feedsup_stream_state", (("state", "FATAL"), ("stream", "price")))) == 1 and m
    metrics = wait_for(fatal_in_metrics, 5, "FATAL in /metrics")
    restarts = {dict(labels)["reason"]: v for (name, labels), v in metrics.items()
                if name == "feedsup_restarts_total" and dict(labels)["stream"] == "price"}
    assert restarts["killed"] == 1 and restarts["fatal"] == 1 and sum(restarts.values()) == 2

    # The last stream goes FATAL: gap notice, then exit 1.
    kill_twice(fs, "book")
    assert fs.proc.wait(10) == 1
    wait_for(lambda: any("FATAL" in g["gap"]["reason"] for g in gap_notices(col, "bookTicker.BTCUSDT")), 5,
             "a FATAL gap notice on bookTicker.BTCUSDT")
    assert "every stream is FATAL" in fs.log()


def test_feedsup_restart_brings_a_fatal_stream_back(sim, start_feedsup, timing):
    """Restart intensity exceeded -> FATAL, and the operator's ``feedsup
    restart`` (the real command) clears it: a new worker whose backfill
    fills the time the stream was FATAL (aggTrade has REST history), the
    other stream untouched."""
    price = stream("price", "aggTrade", "BTCUSDT")
    book = stream("book", "bookTicker", "BTCUSDT")
    fs, col = start_feedsup(sim, (price, book), restart={"intensity": 1, "period": 60})
    other = fs.wait_running("book")
    col.wait_count(3, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    kill_twice(fs, "price")
    wait_for(lambda: fs.stream("price")["state"] == "FATAL", 10, "price FATAL")
    assert fs.stream("price")["pid"] is None
    fatal_at = len(col.frames)
    now_ns = time.time_ns()
    wait_for(lambda: regular_after(col, "bookTicker.", now_ns), 10, "time passing while price is FATAL")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "restart", "-c", str(fs.config), "price"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    row = fs.wait_running("price")
    col.wait_count(col.count("aggTrade.BTCUSDT") + 5, 15, "aggTrade.BTCUSDT")
    timing("FATAL -> feedsup restart -> data again", time.monotonic() - t0)
    assert row["pid"] in fs.workers()
    ids = [f["data"]["agg_id"] for f in list(col.frames) if f["topic"] == "aggTrade.BTCUSDT" and f.get("data")]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "the FATAL time is backfilled, once each"
    assert any(f.get("backfill") for f in list(col.frames)[fatal_at:] if f["topic"] == "aggTrade.BTCUSDT")
    assert fs.stream("book")["pid"] == other["pid"]
    assert fs.proc.poll() is None


# -- a worker SIGSTOPped while STARTING ---------------------------------------------------

class HoldingProxy:
    """TCP proxy to the simulator that, while ``holding``, accepts
    connections and never answers: a worker connecting through it stays in
    its WebSocket upgrade (STARTING), its ticker still pinging the parent."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.holding = True
        self.held: list[socket.socket] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(conn)
            if self.holding:
                self.held.append(conn)
                continue
            upstream = socket.create_connection(self.target)
            self._sockets.append(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        for s in [self.listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass


@dataclass
class ProxiedSim:
    """What write_config reads from a simulator: WebSocket through the proxy, REST direct."""
    ws_url: str
    base_url: str


@pytest.fixture
def proxy(sim):
    p = HoldingProxy(int(sim.ws_url.rsplit(":", 1)[1]))
    try:
        yield p
    finally:
        p.close()


def test_a_worker_sigstopped_while_starting_is_replaced_within_liveness_timeout(sim, proxy, start_feedsup,
                                                                                 timing):
    target = ProxiedSim(f"ws://127.0.0.1:{proxy.port}", sim.base_url)
    # connect_timeout 10: the held worker never gives up by itself here.
    fs, col = start_feedsup(target, (stream("price", "aggTrade", "BTCUSDT"),), connection={"connect_timeout": 10})

    def held_and_pinging():
        row = fs.stream("price")
        return proxy.held and row["state"] == "STARTING" and row["stats"] and row["pid"] and row
    row = wait_for(held_and_pinging, 15, "the worker held in its upgrade, pinging")
    pid = row["pid"]
    proxy.holding = False
    stop_ns, t0 = time.time_ns(), time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        frame = wait_for(lambda: regular_after(col, "aggTrade.BTCUSDT", stop_ns), 15, "data from the replacement")
        took = frame["_t"] - t0
        timing(f"worker SIGSTOP while STARTING -> data (liveness_timeout {LIVENESS_TIMEOUT:g} s)", took)
        wait_for(lambda: not alive(pid), 5, "the stopped worker to be killed")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert took <= LIVENESS_TIMEOUT + 1.0
    assert fs.stream("price")["last_reason"] == "liveness timeout"
