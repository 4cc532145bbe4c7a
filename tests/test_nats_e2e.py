"""Two feedsup instances (A/B) -> a real 3-node JetStream cluster -> a durable consumer.

Faults in a seeded random order: one parent SIGKILLed and restarted, a worker
killed, the stream leader's NATS node killed and restarted, every exchange
connection dropped, the consumer stopped and killed. Then JetStream must hold
every aggTrade id and closed kline exactly once and in order per topic, equal
to the simulator's REST truth, and the consumer must have seen every stream
message, repeating only what it was processing when SIGKILLed (flagged).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.harness import REPO, Feedsup, tied, wait_for, write_config

nats = pytest.importorskip("nats")

from feedsup.sinks.cluster import NatsCluster  # noqa: E402
from natscluster import running_cluster  # noqa: E402
from feedsup.supervisor import state as saved  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
STREAMS = [
    {"name": "trades", "market": "spot", "channel": "aggTrade", "symbols": SYMBOLS},
    {"name": "klines", "market": "spot", "channel": "kline", "symbols": ["BTCUSDT"], "intervals": ["1m"]},
]


@pytest.fixture
def nats_cluster():
    """A 3-node JetStream cluster on loopback, always stopped at teardown."""
    with running_cluster(3) as cluster:
        yield cluster


def stream_state(urls: list[str], stream: str = "FEEDSUP") -> dict:
    """The stream's state; retried while a leader election leaves it unanswered."""
    return wait_for(lambda: _try_stream_state(urls, stream), 30, "stream info")


def _try_stream_state(urls: list[str], stream: str) -> dict | None:
    async def main() -> dict:
        nc = await nats.connect(urls, connect_timeout=2)
        try:
            info = await nc.jetstream(timeout=3).stream_info(stream)
            return {"last_seq": info.state.last_seq, "messages": info.state.messages,
                    "leader": info.cluster.leader if info.cluster else None}
        finally:
            await nc.close()
    try:
        return asyncio.run(main())
    except Exception:
        return None


class Instance:
    """One feedsup parent with its own folder, state file and [sink.nats]."""

    def __init__(self, root: Path, name: str, sim, cluster: NatsCluster) -> None:
        self.dir = root / name
        self.dir.mkdir()
        self.config = write_config(self.dir, sim, STREAMS,
                                   feedsup={"instance": name, "state_file": str(self.dir / "state")})
        servers = ", ".join(json.dumps(u) for u in cluster.urls)
        self.config.write_text(self.config.read_text() + (
            f"[sink.nats]\nservers = [{servers}]\nreplicas = 3\nack_timeout = 2\n"))
        self.runs: list[Feedsup] = []
        self.start()

    def start(self) -> None:
        self.runs.append(Feedsup(self.config, self.dir, log_name=f"feedsup{len(self.runs)}.log"))

    @property
    def fs(self) -> Feedsup:
        return self.runs[-1]

    def sink(self) -> dict:
        return self.fs.status()["sink"]

    def close(self) -> None:
        for run in reversed(self.runs):
            run.close()


class Consumer:
    def __init__(self, out: Path, urls: list[str]) -> None:
        self.out, self.urls = out, urls
        self.proc: subprocess.Popen | None = None
        self.kills = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(tied([sys.executable, str(REPO / "tests" / "jsconsume.py"), str(self.out),
                                           ",".join(self.urls), "check"]), cwd=REPO)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.kills += sig == signal.SIGKILL

    def rows(self) -> list[dict]:
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        if lines and not lines[-1].endswith("}"):
            lines.pop()                       # a line cut by SIGKILL
        return [r for r in map(json.loads, lines) if "js_seq" in r]


@pytest.mark.timeout(240)
def test_active_active_into_jetstream_with_faults(start_sim, nats_cluster, tmp_path, timing):
    sim = start_sim(speed=60, seed=11, trade_rate=10, symbols=tuple(SYMBOLS))
    a = Instance(tmp_path, "a", sim, nats_cluster)
    b = Instance(tmp_path, "b", sim, nats_cluster)      # both at once, on an empty stream
    consumer = Consumer(tmp_path / "consumed.jsonl", nats_cluster.urls)
    try:
        consumer.start()
        for inst in (a, b):
            inst.fs.wait_running("trades", 20)
            wait_for(lambda inst=inst: inst.sink()["acked"] > 20, 30, f"sink of {inst.dir.name} acked")

        def progress(more: int = 150) -> None:
            base = stream_state(nats_cluster.urls)["last_seq"]
            wait_for(lambda: stream_state(nats_cluster.urls)["last_seq"] >= base + more, 45, "JetStream growing")

        def kill_parent() -> None:
            victim = random.Random(1).choice((a, b))
            # its saved watermarks (one save behind) let the restart backfill
            wait_for(lambda: (st := saved.load(str(victim.dir / "state"))) and st.marks, 10, "state saved")
            victim.fs.proc.send_signal(signal.SIGKILL)
            victim.fs.proc.wait(timeout=10)
            wait_for(lambda: not victim.fs.workers(), 10, "workers gone with their parent")
            progress()                        # the other instance carries on alone
            victim.start()
            victim.fs.wait_running("trades", 20)

        def kill_worker() -> None:
            def killed() -> bool:
                pid = b.fs.wait_running("trades", 20)["pid"]
                try:
                    os.kill(pid, signal.SIGKILL)
                    return True
                except ProcessLookupError:   # it had just ended (a dropped connection): kill its successor
                    return False
            wait_for(killed, 20, "a running worker SIGKILLed")
            progress()

        def kill_leader() -> None:
            leader = stream_state(nats_cluster.urls)["leader"]
            node = int(leader[1:]) if leader else 0
            nats_cluster.kill(node)
            progress()                        # the two survivors keep a quorum
            nats_cluster.start(node)

        def drop_connections() -> None:
            urllib.request.urlopen(urllib.request.Request(
                sim.control_url + "/faults", data=json.dumps({"kind": "drop", "target": {}}).encode(),
                method="POST"), timeout=5).read()
            progress()

        def restart_consumer() -> None:
            consumer.stop(signal.SIGTERM)
            progress(50)
            consumer.start()

        def kill_consumer() -> None:
            consumer.stop(signal.SIGKILL)
            progress(50)
            consumer.start()

        faults = [kill_parent, kill_worker, kill_leader, drop_connections, restart_consumer, kill_consumer]
        random.Random(7).shuffle(faults)
        progress()
        for fault in faults:
            fault()
        for inst in (a, b):
            inst.fs.wait_running("trades", 20)
            inst.fs.wait_running("klines", 20)
        progress(200)
        for inst in (a, b):
            inst.fs.close()                   # SIGTERM: each sink flushes what it holds
        last = stream_state(nats_cluster.urls)["last_seq"]
        wait_for(lambda: consumer.rows() and consumer.rows()[-1]["js_seq"] >= last, 60, "consumer caught up")
        consumer.stop()
        timing("faults and catch-up", 0)
        verify(consumer, last, sim.base_url)
        assert all("sink connected" in r.log_path.read_text() for inst in (a, b) for r in inst.runs)
    finally:
        consumer.stop(signal.SIGKILL)
        a.close()
        b.close()


def verify(consumer: Consumer, last: int, rest_url: str) -> None:
    rows = consumer.rows()
    seen: dict[int, dict] = {}
    repeats = []
    for r in rows:
        if r["js_seq"] in seen:
            repeats.append(r)
            continue
        seen[r["js_seq"]] = r
    # every stream message reached the consumer, first time in stream order; a repeat only for a SIGKILL, flagged
    assert list(seen) == list(range(1, last + 1))
    assert all(r["redelivered"] for r in repeats) and len(repeats) <= consumer.kills, repeats[:3]
    ordered = [seen[s] for s in sorted(seen)]
    assert not [r for r in ordered if r["gap"]], "no gap notice expected: each instance covers the other"
    sources = {r["source"] for r in ordered}
    assert sources <= {"a", "b"} and sources
    for symbol in SYMBOLS:
        trades = [r for r in ordered if r["topic"] == f"aggTrade.{symbol}"]
        ids = [r["agg_id"] for r in trades]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: aggTrade ids not once and in order"
        truth = rest(rest_url, "/api/v3/aggTrades", symbol=symbol, fromId=ids[0], limit=1000)
        truth = [t for t in truth if t["a"] <= ids[-1]]
        assert [(t["a"], t["p"], t["q"]) for t in truth] == [(r["agg_id"], r["price"], r["qty"])
                                                              for r in trades[:len(truth)]]
    klines = [r for r in ordered if r["topic"] == "kline.BTCUSDT.1m" and r["closed"]]
    opens = [k["open_time"] for k in klines]
    assert len(opens) >= 10
    assert opens == list(range(opens[0], opens[0] + 60_000 * len(opens), 60_000)), "closed klines once, in order"
    truth = rest(rest_url, "/api/v3/klines", symbol="BTCUSDT", interval="1m", startTime=opens[0],
                 endTime=opens[-1], limit=1000)
    assert [row[0] for row in truth] == opens
    assert [row[1:6] for row in truth] == [k["ohlcv"] for k in klines]


def rest(base: str, path: str, **params) -> list:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{base}{path}?{query}", timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(120)
def test_pair_starting_together_on_an_empty_stream_stays_in_order(start_sim, nats_cluster, tmp_path):
    """Both instances start at once and JetStream has never seen the topics:
    the first publish of each topic must find its subject empty; the loser
    of that race follows its partner instead of storing later events first."""
    from feedsup.ipc.jetstream import JetStreamConsumer

    sim = start_sim(speed=60, seed=5, trade_rate=10, symbols=tuple(SYMBOLS))
    pair = [Instance(tmp_path, "a", sim, nats_cluster)]
    try:
        pair[0].fs.wait_running("trades", 20)   # b a moment later: its first events are newer than a's
        pair.append(Instance(tmp_path, "b", sim, nats_cluster))
        pair[1].fs.wait_running("trades", 20)
        wait_for(lambda: stream_state(nats_cluster.urls)["last_seq"] > 2000, 60, "2000 frames stored")
        for inst in pair:
            inst.fs.close()
        stored = []
        with JetStreamConsumer(nats_cluster.urls) as c:
            while (f := c.next(timeout=2.0)) is not None:
                stored.append(f)
        for symbol in SYMBOLS:
            ids = [f["data"]["agg_id"] for f in stored if f["topic"] == f"aggTrade.{symbol}" and f.get("data")]
            assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: not once and in order"
        opens = [f["data"]["open_time"] for f in stored if f["topic"] == "kline.BTCUSDT.1m" and f.get("data")
                 and f["data"]["closed"]]
        assert opens == sorted(set(opens))
        assert sum(inst.runs[0].log_path.read_text().count("sink connected") for inst in pair) == 2
    finally:
        for inst in pair:
            inst.close()
