"""``python -m feedsup.sim`` as a subprocess: the URL line, serving, clean exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from simhelpers import collect, get

import websocket

from feedsup.procs import read_line

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_cli():
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, dict]:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "feedsup.sim", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        line = read_line(proc, 20)  # the child flushes it once bound
        assert line, proc.communicate(timeout=10)[1]
        return proc, json.loads(line)

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_urls_serves_and_exits_cleanly(run_cli, sig):
    proc, urls = run_cli("--port", "0", "--seed", "3", "--speed", "30", "--symbols", "BTCUSDT,SOLUSDT")
    assert set(urls) == {"rest_url", "ws_url", "ws_api_url", "control_url"}
    port = int(urls["rest_url"].rsplit(":", 1)[1])
    assert urls == {"rest_url": f"http://127.0.0.1:{port}", "ws_url": f"ws://127.0.0.1:{port}",
                    "ws_api_url": f"ws://127.0.0.1:{port}/ws-api/v3", "control_url": f"http://127.0.0.1:{port}/_sim"}
    info = get(urls["rest_url"] + "/api/v3/exchangeInfo").body
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "SOLUSDT"]
    ws = websocket.create_connection(urls["ws_url"] + "/ws/solusdt@aggTrade", timeout=5)
    try:
        assert collect(ws, lambda m: len(m) >= 2)[0]["s"] == "SOLUSDT"
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    finally:
        ws.close()


def test_cli_scenario_file(run_cli, tmp_path):
    scenario = tmp_path / "faults.toml"
    # A lasting fault, observed when it shows (a close at 0.3 s would miss a
    # client connected after it on a loaded machine).
    scenario.write_text('[[faults]]\nat = 0.3\nkind = "rest_error"\nstatus = 503\nduration = 60\n')
    proc, urls = run_cli("--speed", "60", "--scenario", str(scenario))
    deadline = time.monotonic() + 15
    while get(urls["rest_url"] + "/api/v3/ping").status != 503:
        assert time.monotonic() < deadline, "the scheduled rest_error never showed"
        time.sleep(0.05)   # polling period of a deadline-bounded wait
    proc.terminate()
    assert proc.wait(10) == 0


def test_cli_rejects_a_bad_scenario(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"at": 1, "kind": "explode"}]')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "feedsup.sim", "--scenario", str(bad)], capture_output=True,
                          text=True, env=env, timeout=20)
    assert done.returncode == 2 and "unknown kind" in done.stderr and done.stdout == ""


def test_same_seed_same_trades_across_processes(run_cli):
    (_, a), (_, b) = run_cli("--seed", "9", "--speed", "120"), run_cli("--seed", "9", "--speed", "120")
    first = collect_rows(a)
    second = collect_rows(b)
    n = min(len(first), len(second))
    assert n >= 10 and first[:n] == second[:n]


def collect_rows(urls):
    from simhelpers import wait_until
    return wait_until(lambda: [r for r in [get(urls["rest_url"] + "/api/v3/aggTrades", symbol="BTCUSDT",
                                                startTime=1767225600000, limit=50).body] if len(r) >= 20], what="trades")[0]


def test_cli_reports_a_busy_port():
    import socket
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "feedsup.sim", "--port", str(port)], capture_output=True,
                              text=True, env=env, timeout=20)
    assert done.returncode == 1 and "address already in use" in done.stderr and done.stdout == ""
