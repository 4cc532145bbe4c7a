"""The parent's exchangeInfo re-read (feedsup/supervisor/refresh.py): off the
loop, under the shared REST budget, a failure logged and retried next period."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from feedsup import restlimit
from feedsup.procs import wait_for
from feedsup.supervisor.refresh import Answer, Refresher, Source, budgeted_fetch


def test_a_failed_fetch_is_reported_and_retried_next_period():
    calls = []

    def fetch(source, deadline, stop):
        calls.append(deadline - time.monotonic())
        if len(calls) == 1:
            raise OSError("connection refused")
        return {"symbols": []}

    r = Refresher([Source("spot", "http://x", "")], period=0.05, fetch=fetch)
    r.start()
    try:
        got: list[Answer] = []
        wait_for(lambda: got.extend(r.take()) or len(got) >= 2, 10, "two answers")
    finally:
        r.stop()
    assert got[0] == Answer("spot", None, "OSError: connection refused") and got[1] == Answer("spot", {"symbols": []})
    assert r.failures == 1 and all(0 < left <= 30 for left in calls), "each fetch is bounded in time"


def test_nothing_is_fetched_before_the_first_period():
    r = Refresher([Source("spot", "http://x", "")], period=60, fetch=lambda *a: pytest.fail("fetched at start"))
    r.start()
    r.stop()
    assert r.take() == [] and not r.pending


def post(sim, **body):
    req = urllib.request.Request(sim.control_url + "/faults", json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_budgeted_fetch_retries_a_server_error_and_charges_the_shared_budget(start_sim, tmp_path):
    sim = start_sim(symbols=("BTCUSDT", "ETHUSDT"))
    post(sim, kind="rest_error", status=503, count=1)
    source = Source("spot", sim.base_url, str(tmp_path))
    body = budgeted_fetch(source, time.monotonic() + 10, threading.Event())
    assert sorted(e["symbol"] for e in body["symbols"]) == ["BTCUSDT", "ETHUSDT"]
    state = restlimit.SharedBudget.for_market(str(tmp_path), "spot", rest_url=sim.base_url).state()
    assert state.used >= 40, "two tries of weight 20, in the file the workers share"


def test_budgeted_fetch_gives_up_at_its_deadline(start_sim, tmp_path):
    sim = start_sim(symbols=("BTCUSDT",))
    post(sim, kind="rest_error", status=503, duration=30)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="HTTP 503"):
        budgeted_fetch(Source("spot", sim.base_url, str(tmp_path)), start + 1.5, threading.Event())
    assert time.monotonic() - start < 5


def test_run_at_start_honours_a_ban_a_previous_parent_met(start_sim, tmp_path):
    """The start-time exchangeInfo of symbols = "*" goes through the shared
    REST budget: during a saved 418 ban, ``feedsup run`` asks nothing and exits 69."""
    import subprocess
    import sys

    from tests.harness import REPO

    sim = start_sim(symbols=("AUSDT", "BUSDT"))
    budget = tmp_path / restlimit.budget_file("spot", sim.base_url)
    budget.write_text(json.dumps({"window": -1, "used": 0, "paused_until": time.time() + 600, "banned": True}))
    path = tmp_path / "f.toml"
    path.write_text(f'[feedsup]\npub = "ipc://{tmp_path}/pub"\ncontrol = "ipc://{tmp_path}/ctl"\n'
                    f'state_file = "{tmp_path}/state"\n'
                    f'[binance.spot]\nrest_url = "{sim.base_url}"\nws_url = "{sim.ws_url}"\n'
                    '[[stream]]\nname = "all"\nmarket = "spot"\nchannel = "trade"\nsymbols = "*"\n')
    run = subprocess.run([sys.executable, "-m", "feedsup.cli", "run", "-c", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 69 and "REST weight unavailable" in run.stderr, run.stderr
    assert not [p for _, p in sim.core.rest_log if p.endswith("exchangeInfo")], "nothing asked during the ban"
