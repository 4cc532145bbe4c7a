"""A consumer in a second language (issue 13): examples/node/consumer.mjs
(zeromq + @msgpack/msgpack from npm, installed by bin/setup) against the
simulator-fed feedsup, and against a publisher that breaks the contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import msgpack
import pytest
import zmq

from feedsup.procs import tied
from harness import REPO

NODE_DIR = REPO / "examples" / "node"
NODE = shutil.which("node")


def _node_ready() -> str | None:
    """Why the Node consumer cannot run here, or None."""
    if NODE is None:
        return "node is not installed"
    probe = subprocess.run([NODE, "-e", "require('zeromq'); require('@msgpack/msgpack')"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"examples/node's packages do not load (bin/setup installs them): {probe.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def node() -> str:
    why = _node_ready()
    if why is not None:
        if os.environ.get("CI") and NODE is not None:
            pytest.fail(f"CI has node, so the second-language consumer must run: {why}")
        pytest.skip(why)
    assert NODE is not None
    return NODE


def run_consumer(node: str, endpoint: str, *args: str, timeout: float = 90) -> tuple[int, dict]:
    proc = subprocess.run(tied([node, str(NODE_DIR / "consumer.mjs"), endpoint, *args]), cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no verdict (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-1000:]}"
    return proc.returncode, json.loads(lines[-1])


@pytest.mark.timeout(180)
def test_node_consumer_sees_every_channel_continuous_and_well_typed(node, start_sim, start_feedsup):
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4, book_rate=4)
    streams = [
        {"name": "aggs", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT", "ETHUSDT"]},
        {"name": "klines", "market": "spot", "channel": "kline", "intervals": ["1m"], "symbols": ["BTCUSDT"]},
        {"name": "book", "market": "spot", "channel": "bookTicker", "symbols": ["BTCUSDT"]},
        {"name": "depth", "market": "spot", "channel": "depth", "depth_levels": 5, "symbols": ["BTCUSDT"]},
        {"name": "mark", "market": "usdm", "channel": "markPrice", "symbols": ["BTCUSDT"], "topic_prefix": "usdm."},
    ]
    fs, col = start_feedsup(sim, streams)
    col.wait_count(1, 30)
    code, verdict = run_consumer(node, fs.pub, "--frames", "400", "--seconds", "60")
    assert verdict["verdict"] == "OK" and code == 0, verdict
    assert verdict["frames"] == 400 and verdict["holes"] == 0 and verdict["errors"] == []
    assert verdict["topics"] >= 5, verdict


@pytest.mark.timeout(120)
def test_node_consumer_reports_holes_and_wrong_types(node, tmp_path):
    """The checks check: a publisher that skips seqs and sends a float price gets a FAIL."""
    endpoint = f"ipc://{tmp_path}/pub"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    proc = subprocess.Popen(tied([node, str(NODE_DIR / "consumer.mjs"), endpoint, "--frames", "30", "--seconds", "60"]),
                            cwd=NODE_DIR, stdout=subprocess.PIPE, text=True)
    try:
        seq = 0
        while proc.poll() is None:
            seq += 1 + (seq % 5 == 4)                  # every fifth seq is skipped
            data = {"symbol": "BTCUSDT", "agg_id": seq, "price": 100.5, "qty": "1", "first_trade_id": 1,
                    "last_trade_id": 1, "time": 1, "buyer_maker": False, "event_time": 1}
            pub.send_multipart([b"aggTrade.BTCUSDT", msgpack.packb(
                {"topic": "aggTrade.BTCUSDT", "seq": seq, "epoch": 7, "stream": "s", "recv_ns": 1 << 62,
                 "data": data})])
            try:
                proc.wait(0.01)                          # a paced publisher: the consumer may join late
            except subprocess.TimeoutExpired:
                pass
            assert seq < 100_000, "the consumer never finished"
        out = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        pub.close(linger=0)
        ctx.term()
    verdict = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 1 and verdict["verdict"] == "FAIL", verdict
    assert verdict["holes"] >= 1 and verdict["missed"] == verdict["holes"]
    assert any("price=100.5 is not dec" in e for e in verdict["errors"]), verdict["errors"]
