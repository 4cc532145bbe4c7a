"""Prometheus end to end: ``feedsup run`` with ``metrics_port``, scraped over
loopback, checked against ``feedsup status --json`` of the same parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedsup.sim import SimOptions, SimServer
from harness import REPO, Feedsup, wait_for, write_config

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT", "ETHUSDT"]}
RATE = 40   # aggTrade msgs/s on the price stream: 2 symbols x trade_rate 20 at speed 1
STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def restarts_total(metrics: dict, stream: str) -> float:
    """feedsup_restarts_total summed over every reason."""
    return sum(v for (name, labels), v in metrics.items()
               if name == "feedsup_restarts_total" and dict(labels).get("stream") == stream)


def replaced(fs: Feedsup, old_pid: int) -> bool:
    row = fs.stream("price")
    return row["state"] == "RUNNING" and row["pid"] not in (None, old_pid)


def status_json(fs: Feedsup) -> dict:
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "status", "-c", str(fs.config), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def price_row(status: dict) -> dict:
    return next(s for s in status["streams"] if s["name"] == "price")


@pytest.fixture
def metered(tmp_path):
    sim = SimServer(SimOptions(speed=1, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=20))
    sim.start()
    fs = None
    try:
        # "any": feedsup binds a free port itself and reports it (a port
        # found free here and released could be taken before feedsup binds it).
        fs = Feedsup(write_config(tmp_path, sim, [PRICE], feedsup={"metrics_port": "any"}), tmp_path)
        fs.wait_running("price")
        port = fs.status()["metrics_port"]
        assert isinstance(port, int) and port > 0
        yield fs, port
    finally:
        if fs is not None:
            fs.close()
        sim.stop()


def test_metrics_match_status(metered):
    fs, port = metered
    wait_for(lambda: value(scrape(port), "feedsup_messages_total", stream="price") > 20, 10, "messages counted")

    # Scrape, then ask the CLI: /metrics trails the parent's status by up to
    # one metrics period (1 s), the CLI's answer comes a moment later.
    metrics, status = scrape(port), status_json(fs)
    row = price_row(status)
    for state in STATES:
        assert value(metrics, "feedsup_stream_state", stream="price", state=state) == (state == row["state"])
    msgs = value(metrics, "feedsup_messages_total", stream="price")
    assert 0 < msgs <= row["stats"]["msgs"] <= msgs + 5 * RATE   # roughly: within 5 s of traffic
    assert value(metrics, "feedsup_connect_budget_remaining") == row["budget_remaining"]
    assert value(metrics, "feedsup_last_message_age_seconds", stream="price") < 2
    assert row["last_msg_age"] < 2
    assert value(metrics, "feedsup_exchange_lag_ms_count", stream="price") > 0
    assert 0 <= status["uptime"] - value(metrics, "feedsup_uptime_seconds") < 5
    assert restarts_total(metrics, "price") == row["restarts"] == 0
    assert value(metrics, "feedsup_published_total") <= status["published"]


def test_restart_after_sigkill_shows_in_metrics_and_status(metered):
    fs, port = metered
    wait_for(lambda: value(scrape(port), "feedsup_messages_total", stream="price") > 20, 10, "messages counted")
    before = value(scrape(port), "feedsup_messages_total", stream="price")
    old = fs.stream("price")
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: replaced(fs, old["pid"]), 15, "the replacement worker")
    wait_for(lambda: value(scrape(port), "feedsup_restarts_total", stream="price", reason="killed") == 1,
             5, "the restart in /metrics")

    metrics, row = scrape(port), price_row(status_json(fs))
    assert row["restarts"] == 1 and "SIGKILL" in row["last_reason"]
    assert restarts_total(metrics, "price") == row["restarts"]
    assert value(metrics, "feedsup_stream_state", stream="price", state="RUNNING") == 1
    # A new worker counts from 0; the exported total never goes down.
    wait_for(lambda: value(scrape(port), "feedsup_messages_total", stream="price") > before + 20, 10,
             "messages from the new worker")
    # The restart took one connection from the budget; /metrics shows it
    # within one metrics period.
    assert row["budget_remaining"] == old["budget_remaining"] - 1
    wait_for(lambda: value(scrape(port), "feedsup_connect_budget_remaining") == row["budget_remaining"], 3,
             "the budget in /metrics")
