"""REST weight budget edges that mutation testing found unpinned
(docs/mutation.md): the state file read back field by field, the exact
pause and ban rules, where a budget lives and under which name, and the
private runtime directory's refusals. Pure or on tmp files; no network.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import threading
import types

import pytest

from feedsup import restlimit
from feedsup.restlimit import SAFE_FRACTION, BudgetState, BudgetUnavailable, SharedBudget, observe, reserve

T0 = 1_800_000_000.0   # a clock minute boundary

FULL = BudgetState(window=7, used=55, paused_until=T0 + 9.5, banned=True)


# -- the state file, field by field --------------------------------------------------

def test_a_state_reads_back_as_it_was_written():
    assert BudgetState.from_dict(dataclasses.asdict(FULL)) == FULL


@pytest.mark.parametrize("missing", ["window", "used", "paused_until", "banned"])
def test_a_missing_field_takes_its_default_and_keeps_the_others(missing):
    raw = {k: v for k, v in dataclasses.asdict(FULL).items() if k != missing}
    default = getattr(BudgetState(), missing)
    got = BudgetState.from_dict(raw)
    assert got == dataclasses.replace(FULL, **{missing: default})
    assert type(got.banned) is bool


@pytest.mark.parametrize("content", [b"[1, 2]", b"42", b"\"banned\""])
def test_a_state_file_holding_json_but_not_an_object_starts_afresh(tmp_path, content):
    path = tmp_path / "restweight-spot.json"
    path.write_bytes(content)
    budget = SharedBudget(str(path), 100, clock=lambda: T0)
    budget.acquire(10, deadline=1e18)
    assert budget.state().used == 10


def test_budget_files_are_private_to_the_user(tmp_path):
    path = tmp_path / "restweight-spot.json"
    old = os.umask(0)
    try:
        SharedBudget(str(path), 100, clock=lambda: T0).acquire(1, deadline=1e18)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(str(path) + ".lock").st_mode & 0o777 == 0o600


def test_reading_the_budget_does_not_rewrite_its_file(tmp_path):
    path = tmp_path / "restweight-spot.json"
    budget = SharedBudget(str(path), 100, clock=lambda: T0)
    budget.acquire(1, deadline=1e18)
    before = os.stat(path).st_ino
    assert budget.state().used == 1
    assert os.stat(path).st_ino == before      # no write: the file was replaced by nobody


# -- pauses and bans ---------------------------------------------------------------

def test_a_pause_names_its_cause():
    s = BudgetState()
    observe(s, T0, 429, used_weight=None, retry_after=5)
    assert reserve(s, 1, T0, limit=6000).why == "backing off (429)"
    observe(s, T0, 418, used_weight=None, retry_after=50)
    assert reserve(s, 1, T0, limit=6000).why == "banned (418)"


def test_a_heavy_request_waits_for_a_window_that_already_has_weight():
    s = BudgetState()
    assert reserve(s, 1, T0, limit=100).granted
    grant = reserve(s, 80, T0 + 1, limit=100)
    assert grant.wait == pytest.approx(59.0)


def test_a_retry_after_of_zero_still_pauses_one_second():
    s = BudgetState()
    observe(s, T0, 429, used_weight=None, retry_after=0)
    assert reserve(s, 1, T0 + 0.5, limit=6000).wait == pytest.approx(0.5)
    assert reserve(s, 1, T0 + 1.0, limit=6000).granted


def test_a_429_ending_with_the_ban_does_not_lift_it():
    s = BudgetState()
    observe(s, T0, 418, used_weight=None, retry_after=60)
    observe(s, T0 + 10, 429, used_weight=None, retry_after=50)     # same end: T0 + 60
    assert s.banned and reserve(s, 1, T0 + 30, limit=6000).why == "banned (418)"


def test_a_short_418_inside_a_longer_429_pause_marks_the_ban():
    s = BudgetState()
    observe(s, T0, 429, used_weight=None, retry_after=60)
    observe(s, T0 + 1, 418, used_weight=None, retry_after=5)
    assert s.banned is True and s.paused_until == T0 + 60


def test_a_short_429_inside_a_longer_429_pause_is_no_ban():
    s = BudgetState()
    observe(s, T0, 429, used_weight=None, retry_after=60)
    observe(s, T0 + 1, 429, used_weight=None, retry_after=5)
    assert s.banned is False and s.paused_until == T0 + 60


# -- where a budget lives ----------------------------------------------------------

def test_budget_file_names():
    assert restlimit.budget_file("spot") == "restweight-spot.json"
    keyed = restlimit.budget_file("usdm", "https://fapi.binance.com")
    assert re.fullmatch(r"restweight-usdm-[0-9a-f]{12}\.json", keyed)
    assert restlimit.budget_file("usdm", "https://fapi.binance.com/") == keyed     # one host, one budget


def test_for_market_places_the_budget_and_takes_the_markets_limit(tmp_path):
    b = SharedBudget.for_market(str(tmp_path), "usdm", 0.5, rest_url="https://fapi.binance.com")
    assert b.path == str(tmp_path / restlimit.budget_file("usdm", "https://fapi.binance.com"))
    assert (b.limit, b.fraction) == (2400, 0.5)
    plain = SharedBudget.for_market(str(tmp_path), "spot")
    assert (plain.path, plain.limit, plain.fraction) == (str(tmp_path / "restweight-spot.json"), 6000,
                                                         SAFE_FRACTION)
    memory = SharedBudget.for_market("", "spot", 0.5)
    assert (memory.path, memory.limit, memory.fraction) == ("", 6000, 0.5)


def spec(rundir: str, restdir: str, market: str = "usdm") -> types.SimpleNamespace:
    return types.SimpleNamespace(rundir=rundir, restdir=restdir, stream=types.SimpleNamespace(market=market),
                                 endpoint=types.SimpleNamespace(rest_url="https://fapi.binance.com"))


def test_for_spec_keys_the_budget_by_rest_url_only_outside_the_run_directory(tmp_path):
    kept = SharedBudget.for_spec(spec("/run/p1", str(tmp_path)))
    assert kept.path == str(tmp_path / restlimit.budget_file("usdm", "https://fapi.binance.com"))
    assert kept.limit == 2400
    own = SharedBudget.for_spec(spec(str(tmp_path), "", "spot"))
    assert (own.path, own.limit) == (str(tmp_path / "restweight-spot.json"), 6000)


# -- acquire -----------------------------------------------------------------------

def test_acquire_uses_the_budgets_own_fraction():
    b = SharedBudget("", 100, fraction=1.0, clock=lambda: T0, monotonic=lambda: 0.0)
    b.acquire(90, deadline=0.0)
    b.acquire(5, deadline=0.0)          # 95 of 100: within a fraction of 1
    assert b.state().used == 95


def test_a_deadline_exactly_at_the_end_of_the_wait_is_met():
    clock = iter([T0 + 59.75, T0 + 60.0])
    b = SharedBudget("", 100, fraction=1.0, clock=lambda: next(clock), monotonic=lambda: 0.0)
    b._memory = BudgetState(window=int(T0 // 60), used=100)
    b.acquire(1, deadline=0.25)         # waits 0.25 s for the next minute, then gets it
    assert b.state().used == 1


def test_a_stopped_acquire_says_so():
    b = SharedBudget("", 100, clock=lambda: T0 + 1, monotonic=lambda: 0.0)
    b._memory = BudgetState(window=int(T0 // 60), used=100)
    stop = threading.Event()
    stop.set()
    with pytest.raises(BudgetUnavailable, match="^stopped$"):
        b.acquire(1, deadline=1e9, stop=stop)


# -- the private runtime directory --------------------------------------------------

def test_loopback_hosts():
    assert restlimit.loopback_host("localhost") and restlimit.loopback_host("127.0.0.2")
    assert restlimit.loopback_host("::1") and not restlimit.loopback_host("api.binance.com")


def test_an_xdg_runtime_dir_that_does_not_exist_falls_back_to_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "gone"))
    assert restlimit.user_runtime_dir() == f"/tmp/feedsup-{os.getuid()}"


@pytest.mark.parametrize("make", ["file", "symlink", "shared"])
def test_a_runtime_path_that_is_not_our_private_directory_is_refused(tmp_path, monkeypatch, make):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    target = tmp_path / "feedsup"
    if make == "file":
        target.write_bytes(b"")
        os.chmod(target, 0o600)
    elif make == "symlink":
        os.mkdir(tmp_path / "elsewhere", 0o700)
        os.symlink(tmp_path / "elsewhere", target)
    else:
        os.mkdir(target)
        os.chmod(target, 0o755)
    assert restlimit.user_runtime_dir() == ""


@pytest.mark.parametrize("failing", ["mkdir", "lstat"])
def test_a_runtime_dir_that_cannot_be_made_or_examined_is_refused(tmp_path, monkeypatch, failing):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))

    def fail(*args, **kwargs):
        raise OSError(errno.EACCES, "denied")

    monkeypatch.setattr(restlimit.os, failing, fail)
    assert restlimit.user_runtime_dir() == ""
