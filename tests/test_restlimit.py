"""The shared REST weight budget: pure decisions with a fake clock, the
file-locked shell shared by several budgets (as by several workers), and the
REST client on loopback against the simulator's 429/418/5xx answers."""

from __future__ import annotations

import os
import threading
import time

import pytest

from feedsup import restlimit
from feedsup.workers.rest import RestClient, RestFailed
from feedsup.restlimit import BudgetState, BudgetUnavailable, SharedBudget, observe, reserve

T0 = 1_800_000_000.0   # a clock minute boundary (divisible by 60)


def test_reserve_counts_weight_within_the_minute():
    s = BudgetState()
    assert reserve(s, 10, T0, limit=100).granted
    assert reserve(s, 70, T0 + 1, limit=100).granted
    assert s.used == 80


def test_reserve_stops_at_the_safe_fraction_until_the_next_minute():
    s = BudgetState()
    assert reserve(s, 75, T0, limit=100, fraction=0.8).granted
    grant = reserve(s, 10, T0 + 20, limit=100, fraction=0.8)
    assert not grant.granted
    assert grant.wait == pytest.approx(40.0)
    assert "75+10" in grant.why
    assert reserve(s, 10, T0 + 60, limit=100, fraction=0.8).granted   # new window
    assert s.used == 10


def test_a_request_heavier_than_the_cap_goes_alone_in_an_empty_window():
    s = BudgetState()
    assert reserve(s, 500, T0, limit=100).granted
    assert not reserve(s, 1, T0 + 1, limit=100).granted


def test_exchange_header_raises_our_count_but_never_lowers_it():
    s = BudgetState()
    reserve(s, 10, T0, limit=6000)
    observe(s, T0 + 1, 200, used_weight=4700, retry_after=None)
    assert s.used == 4700
    assert not reserve(s, 200, T0 + 2, limit=6000).granted    # 4900 > 4800
    observe(s, T0 + 3, 200, used_weight=5, retry_after=None)
    assert s.used == 4700
    observe(s, T0 + 61, 200, used_weight=7, retry_after=None)  # next minute
    assert s.used == 7


def test_429_retry_after_pauses_every_request_until_it_passes():
    s = BudgetState()
    observe(s, T0, 429, used_weight=None, retry_after=7)
    grant = reserve(s, 1, T0 + 2, limit=6000)
    assert grant.wait == pytest.approx(5.0) and "429" in grant.why
    assert reserve(s, 1, T0 + 7, limit=6000).granted


def test_429_without_retry_after_waits_the_default():
    s = BudgetState()
    observe(s, T0, 429, used_weight=None, retry_after=None)
    assert reserve(s, 1, T0 + 59, limit=6000).wait == pytest.approx(1.0)


def test_418_is_a_ban_and_a_shorter_retry_after_never_shortens_a_pause():
    s = BudgetState()
    observe(s, T0, 418, used_weight=None, retry_after=120)
    observe(s, T0 + 1, 429, used_weight=None, retry_after=5)
    grant = reserve(s, 1, T0 + 10, limit=6000)
    assert grant.wait == pytest.approx(110.0) and "418" in grant.why
    assert s.banned
    assert reserve(s, 1, T0 + 120, limit=6000).granted
    assert not s.banned


def test_header_int_is_case_insensitive_and_tolerant():
    assert restlimit.header_int({"x-mbx-used-weight-1m": "12"}, "X-MBX-USED-WEIGHT-1M") == 12
    assert restlimit.header_int({"Retry-After": "soon"}, "retry-after") is None
    assert restlimit.header_int({}, "Retry-After") is None


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_budgets_sharing_a_file_share_weight_and_pauses(tmp_path):
    clock = FakeClock(T0)
    path = str(tmp_path / "restweight-spot.json")
    a = SharedBudget(path, 100, 0.8, clock, monotonic=clock)
    b = SharedBudget(path, 100, 0.8, clock, monotonic=clock)
    a.acquire(50, deadline=T0 + 1)
    with pytest.raises(BudgetUnavailable, match="weight 50\\+40"):
        b.acquire(40, deadline=T0 + 1)       # would have to wait 60 s
    clock.t = T0 + 61
    b.observe(429, {"Retry-After": "30"})
    with pytest.raises(BudgetUnavailable, match="429"):
        a.acquire(1, deadline=T0 + 70)       # b's 429 pauses a as well
    assert a.state().paused_until == pytest.approx(T0 + 91)


def test_a_429_seen_by_one_budget_pauses_the_other_until_retry_after(tmp_path):
    clock = FakeClock(T0)
    path = str(tmp_path / "w.json")
    a = SharedBudget(path, 6000, 0.8, clock, monotonic=clock)
    b = SharedBudget(path, 6000, 0.8, clock, monotonic=clock)
    a.observe(429, {"Retry-After": "10", "X-MBX-USED-WEIGHT-1M": "6001"})
    with pytest.raises(BudgetUnavailable, match="429"):
        b.acquire(1, deadline=T0 + 5)
    clock.t = T0 + 10
    with pytest.raises(BudgetUnavailable, match="6001"):
        b.acquire(1, deadline=T0 + 20)       # pause over, but the minute is spent
    clock.t = T0 + 60
    b.acquire(1, deadline=T0 + 61)


def test_acquire_waits_for_the_window_and_stop_interrupts_it(tmp_path):
    clock = FakeClock(T0 + 30)
    budget = SharedBudget(str(tmp_path / "w.json"), 10, 1.0, clock, monotonic=clock)
    budget.acquire(10, deadline=T0 + 100)
    stop = threading.Event()
    stop.set()
    with pytest.raises(BudgetUnavailable, match="stopped"):
        budget.acquire(1, deadline=T0 + 100, stop=stop)


def test_corrupt_state_file_starts_afresh(tmp_path):
    path = tmp_path / "w.json"
    path.write_text("[not a map")
    clock = FakeClock(T0)
    budget = SharedBudget(str(path), 100, 1.0, clock, monotonic=clock)
    budget.acquire(5, deadline=T0 + 1)
    assert budget.state().used == 5


def test_in_memory_budget_without_a_rundir():
    budget = SharedBudget.for_market("", "usdm")
    assert budget.path == "" and budget.limit == 2400
    budget.acquire(10, deadline=1e12)
    assert budget.state().used >= 10


# -- the REST client on loopback, against the simulator --------------------------------

@pytest.fixture
def sim(start_sim):
    return start_sim(symbols=("BTCUSDT",))


def client(sim, path, **kw) -> RestClient:
    return RestClient(sim.base_url, "spot", SharedBudget(str(path), 6000), timeout=2, **kw)


def test_a_429_pauses_every_client_sharing_the_budget_then_both_succeed(sim, tmp_path):
    path = tmp_path / "restweight-spot.json"
    a, b = client(sim, path), client(sim, path)
    sim.inject("rest_error", status=429, retry_after=1, count=1)
    t0 = time.monotonic()
    rows = a.fetch("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": 5}, deadline=time.monotonic() + 10)
    assert isinstance(rows, list) and a.failures == 1
    assert time.monotonic() - t0 >= 0.9, "a waited out Retry-After"
    assert SharedBudget(str(path), 6000).state().paused_until > 0
    b.fetch("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 5}, deadline=time.monotonic() + 10)
    assert b.failures == 0
    assert SharedBudget(str(path), 6000).state().used >= 4 + 2


def test_transient_errors_are_retried_and_a_deadline_ends_the_call(sim, tmp_path):
    c = client(sim, tmp_path / "w.json", retry_initial=0.05)
    sim.inject("rest_error", status=503, count=2)
    c.fetch("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": 5}, deadline=time.monotonic() + 5)
    assert c.failures == 2
    sim.inject("rest_error", status=502, duration=30)
    t0 = time.monotonic()
    with pytest.raises(RestFailed, match="deadline.*HTTP 502"):
        c.fetch("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": 5}, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 1.5


def test_a_ban_longer_than_the_deadline_fails_at_once_and_bad_requests_are_fatal(sim, tmp_path):
    c = client(sim, tmp_path / "w.json")
    sim.inject("rest_error", status=418, retry_after=120, count=1)
    t0 = time.monotonic()
    with pytest.raises(RestFailed, match="banned"):
        c.fetch("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": 5}, deadline=time.monotonic() + 10)
    assert time.monotonic() - t0 < 1.0
    ok = client(sim, tmp_path / "other.json")
    with pytest.raises(RestFailed, match="rejected: HTTP 400"):
        ok.fetch("/api/v3/aggTrades", {"symbol": "NOPEUSDT", "limit": 5}, deadline=time.monotonic() + 5)


def _charge_many(path: str, times: int) -> None:
    budget = SharedBudget(path, 10**9, 1.0, lambda: T0 + 1, monotonic=lambda: T0 + 1)
    for _ in range(times):
        budget.acquire(1, deadline=T0 + 2)


def test_processes_sharing_the_file_never_lose_an_update(tmp_path):
    import multiprocessing
    path = str(tmp_path / "w.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_charge_many, args=(path, 200)) for _ in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert SharedBudget(path, 10**9, 1.0, lambda: T0 + 1).state().used == 800


# -- one clock per purpose: deadlines are monotonic ------------------------------------

def test_rest_deadlines_ignore_a_stepped_wall_clock(monkeypatch):
    # NTP steps the wall clock an hour forward between two attempts: the
    # call's deadline (monotonic) has not passed, so the retry goes out.
    from feedsup.workers import rest
    wall = [1_767_225_600.0]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    answers = [rest.Response(503, None, {}), rest.Response(200, [1, 2], {})]

    def fake_get(base, path, params=None, timeout=10.0, headers=None, method="GET"):
        wall[0] += 3600.0
        return answers.pop(0)
    monkeypatch.setattr(rest, "get", fake_get)
    c = RestClient("http://127.0.0.1:9", "spot", SharedBudget("", 6000), retry_initial=0.01)
    assert c.fetch("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": 5}, time.monotonic() + 5) == [1, 2]
    assert c.failures == 1


def test_budget_wait_deadline_is_monotonic_while_windows_follow_the_wall_clock(monkeypatch):
    wall = [T0 + 59.9]
    budget = SharedBudget("", 10, 1.0, clock=lambda: wall[0])
    budget.acquire(10, deadline=time.monotonic() + 1)
    # The next minute starts in 0.1 s of wall time: worth waiting for within
    # a 1 s monotonic deadline, whatever the wall clock reads in absolute terms.
    stop = threading.Event()

    def step_wall() -> None:
        wall[0] = T0 + 60.5
    timer = threading.Timer(0.05, step_wall)
    timer.start()
    try:
        budget.acquire(1, deadline=time.monotonic() + 1, stop=stop)
    finally:
        timer.cancel()
    assert budget.state().used == 1


# -- where the budget lives --------------------------------------------------------------

def test_budget_dir_outlives_the_parent(tmp_path, monkeypatch):
    state = tmp_path / "state.json"
    assert restlimit.budget_dir(str(state), "/run/p1", "https://api.binance.com") == str(tmp_path)
    # loopback without a state file: the parent's own run directory (simulators reuse ports)
    assert restlimit.budget_dir("", "/run/p1", "http://127.0.0.1:4000") == "/run/p1"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert restlimit.budget_dir("", "/run/p1", "https://api.binance.com") == str(tmp_path / "feedsup")
    assert os.stat(tmp_path / "feedsup").st_mode & 0o777 == 0o700
    a = restlimit.budget_file("spot", "https://api.binance.com")
    assert a != restlimit.budget_file("spot", "https://api1.binance.com") and a.startswith("restweight-spot-")


def test_a_runtime_dir_that_is_not_ours_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    os.mkdir(tmp_path / "feedsup", 0o777)
    os.chmod(tmp_path / "feedsup", 0o777)
    assert restlimit.user_runtime_dir() == ""
    assert restlimit.budget_dir("", "/run/p1", "https://api.binance.com") == "/run/p1"
