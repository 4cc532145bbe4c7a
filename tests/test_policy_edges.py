"""Edges of the policy that mutation testing showed no test pinned down:
messages, boundaries (exactly ``period`` apart, ``stale_after`` below 1 s),
what status shows in each state, and the operator's restart before start or
during shutdown. Same fake clock as test_policy.py."""

from __future__ import annotations

import random

import pytest

from feedsup.supervisor.policy import (
    Exit, IllegalTransition, Kill, Policy, Restarted, Spawn, State, StateChanged, Terminate, UnknownStream,
    check_transition, classify_exit, is_stale,
)
from test_policy import RESTART, make, of, one, info, running, stream


class MinRandom(random.Random):
    """Always draws the bottom of the range."""

    def uniform(self, a, b):
        return a


def test_illegal_transition_names_both_states():
    with pytest.raises(IllegalTransition, match="^FATAL -> STOPPING is not allowed$"):
        check_transition(State.FATAL, State.STOPPING)


def test_a_spawn_that_never_started_is_retried_as_not_started():
    verdict = classify_exit(None, "", False)
    assert verdict.reason == "not started"
    assert classify_exit(3, "", False).reason == "exited with code 3"


def test_the_exit_code_decides_fatality_not_the_reported_flag():
    # A worker that finds its end fatal exits with EX_CONFIG (78); a fatal
    # flag under another code comes from a worker killed after it reported.
    policy = make()
    instance = running(policy)
    assert one(policy.on_exit(instance, 78, "invalid symbol: NOPE", True, 1.0), StateChanged).new is State.FATAL
    policy = make()
    instance = running(policy)
    assert one(policy.on_exit(instance, 75, "invalid symbol: NOPE", True, 1.0), StateChanged).new is State.BACKOFF


def test_a_sub_second_stale_after_still_works():
    assert is_stale(0.6, 0.0, 0.5)
    assert not is_stale(0.4, 0.0, 0.5)


def test_duplicate_stream_names_are_refused_by_name():
    with pytest.raises(ValueError, match="^duplicate stream name 's1'$"):
        Policy([stream("s1"), stream("s1")], RESTART, random.Random(0))


def test_restart_of_an_unknown_stream_names_it():
    with pytest.raises(UnknownStream, match="nope"):
        make().request_restart("nope", 0.0)


def test_restart_before_start_or_during_shutdown_does_nothing():
    policy = make()
    assert policy.request_restart("s1", 0.0) == []
    running(policy, 1.0)
    policy.request_stop(2.0)
    assert policy.request_restart("s1", 3.0) == []


def test_a_restart_out_of_fatal_is_counted_and_named():
    policy = make(intensity=1)
    instance = running(policy)
    policy.on_exit(instance, 1, "boom", False, 1.0)
    retry = policy.next_deadline()
    second = one(policy.tick(retry), Spawn).instance
    policy.on_ready(second, retry + 0.1)
    assert one(policy.on_exit(second, 1, "boom", False, retry + 0.2), StateChanged).new is State.FATAL
    actions = policy.request_restart("s1", retry + 1.0)
    assert one(actions, Restarted) == Restarted("s1", "restart requested")
    assert one(actions, StateChanged) == StateChanged("s1", State.FATAL, State.STARTING, "restart requested")


def test_a_backoff_ends_with_its_reason_and_status_shows_it():
    policy = make()
    instance = running(policy)
    policy.on_exit(instance, 1, "boom", False, 1.0)
    row = info(policy, 1.0)
    retry = policy.next_deadline()
    assert row["state"] == "BACKOFF" and row["backoff_until"] == retry and row["uptime"] is None
    actions = policy.tick(retry)
    assert one(actions, StateChanged) == StateChanged("s1", State.BACKOFF, State.STARTING, "backoff elapsed")
    row = info(policy, retry)
    assert row["backoff_until"] is None and row["uptime"] is None


def test_failures_exactly_a_period_apart_do_not_add_up():
    """The intensity window is half-open: a failure ``period`` seconds old no
    longer counts."""
    policy = make(intensity=1, period=60.0)
    instance = running(policy)
    policy.on_exit(instance, 1, "boom", False, 0.0)
    retry = policy.next_deadline()
    second = one(policy.tick(retry), Spawn).instance
    policy.on_ready(second, retry)
    actions = policy.on_exit(second, 1, "boom", False, 60.0)
    assert one(actions, StateChanged).new is State.BACKOFF, "the first failure expired at 60.0 exactly"


def test_every_fatal_stream_is_named_in_the_exit_reason():
    policy = make(("a", "b"))
    spawns = of(policy.start(0.0), Spawn)
    actions = []
    for s in spawns:
        actions += policy.on_exit(s.instance, 78, f"bad {s.stream}", True, 1.0)
    assert one(actions, Exit) == Exit(1, "every stream is FATAL: a: bad a; b: bad b")


def test_stale_reason_says_how_long_there_was_no_data():
    policy = make()
    instance = running(policy)
    assert one(policy.on_liveness(instance, {"idle": 10.5}, 2.0), Terminate).reason == "stale: no data for 10.5s"
    policy = make()
    instance = running(policy)
    # A counter that is no number (a bool is none) falls back to the time since READY.
    assert one(policy.on_liveness(instance, {"idle": True}, 11.0), Terminate).reason == "stale: no data for 11.0s"


def test_rotations_count_up_and_status_shows_the_successor():
    policy = make()
    old = running(policy)
    for n in (1, 2):
        new = one(policy.on_notice(old, "serverShutdown", 10.0 * n), Spawn).instance
        assert info(policy, 10.0 * n)["successor"] == new
        policy.on_ready(new, 10.0 * n + 0.5)
        policy.on_streaming(new, 10.0 * n + 1)
        row = info(policy, 10.0 * n + 1)
        assert row["successor"] is None and row["instance"] == new and row["rotations"] == n
        assert row["uptime"] == 0.5, "uptime counts from the successor's READY"
        policy.on_exit(old, 0, "terminated", False, 10.0 * n + 2)
        old = new


def test_max_age_rotation_with_the_smallest_spread_is_at_max_age():
    policy = make(rng=MinRandom())
    instance = running(policy)
    assert policy.next_deadline() <= 1000.0
    t = 0.0
    while t < 999.5:
        t += 0.5
        policy.on_liveness(instance, {"idle": 0.0}, t)
        assert of(policy.tick(t), Spawn) == [], f"rotated early at {t}"
    policy.on_liveness(instance, {"idle": 0.0}, 1000.0)
    assert one(policy.tick(1000.0), Spawn).reason.startswith("rotation")


def test_restored_connection_attempts_count_and_are_kept():
    policy = make(connect_budget=10, budget_window=300.0)
    policy.restore_connect_attempts([1.0, 2.0, 50.0], 40.0)     # 50.0 is in the future: ignored
    running(policy, 40.0)
    assert policy.connect_attempts(41.0) == [1.0, 2.0, 40.0]
    assert info(policy, 41.0)["budget_remaining"] == 7


def test_a_successor_streaming_while_the_old_worker_stops_brings_the_stream_back():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 10.0), Spawn).instance
    actions = policy.on_liveness(old, {"idle": 10.5}, 11.0)
    assert one(actions, StateChanged) == StateChanged("s1", State.RUNNING, State.STOPPING,
                                                      "stale: no data for 10.5s")
    assert info(policy, 11.0)["uptime"] is None, "no uptime while STOPPING"
    assert policy.on_streaming(successor, 12.0) == [
        Restarted("s1", "rotated"), StateChanged("s1", State.STOPPING, State.RUNNING, "rotated")]


def test_a_successor_not_yet_ready_takes_over_when_the_old_worker_dies():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 10.0), Spawn).instance
    reason = "successor took over (boom)"
    assert policy.on_exit(old, 1, "boom", False, 11.0) == [
        Restarted("s1", reason), StateChanged("s1", State.RUNNING, State.STARTING, reason)]
    row = info(policy, 11.0)
    assert row["instance"] == successor and row["last_reason"] == reason


def test_an_exit_is_shown_as_the_last_reason():
    policy = make()
    instance = running(policy)
    policy.on_exit(instance, 1, "boom", False, 1.0)
    assert info(policy, 1.0)["last_reason"] == "boom"


@pytest.mark.parametrize("how", ["restart", "stop"])
def test_a_worker_that_ignores_term_is_killed_stop_timeout_later(how):
    policy = make()
    instance = running(policy)
    if how == "restart":
        actions = policy.request_restart("s1", 1.0)
        reason = "restart requested"
    else:
        actions = policy.request_stop(1.0)
        reason = "shutdown"
    assert one(actions, Terminate) == Terminate(instance, reason)
    assert one(actions, StateChanged) == StateChanged("s1", State.RUNNING, State.STOPPING, reason)
    assert of(policy.tick(3.9), Kill) == []
    assert one(policy.tick(4.0), Kill) == Kill(instance, f"still alive 3s after TERM ({reason})")


@pytest.mark.parametrize("how", ["restart", "stop"])
def test_a_successor_is_retired_and_killed_too(how):
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 10.0), Spawn).instance
    if how == "restart":
        policy.request_restart("s1", 11.0)
    else:
        policy.request_stop(11.0)
    killed = {k.instance for k in of(policy.tick(14.0), Kill)}
    assert killed == {old, successor}


def test_restart_requested_in_backoff_starts_at_once_saying_why():
    policy = make()
    instance = running(policy)
    policy.on_exit(instance, 1, "boom", False, 1.0)
    actions = policy.request_restart("s1", 1.1)
    assert one(actions, Spawn).reason == "restart"
    assert one(actions, StateChanged) == StateChanged("s1", State.BACKOFF, State.STARTING, "restart requested")


def test_a_successor_that_never_gets_ready_is_retired_killed_if_it_must_be_and_reported():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 10.0), Spawn).instance
    actions, t = [], 10.0
    while t < 50.0:          # start timeout: 4 x connect_timeout after its spawn
        t += 1.0
        policy.on_liveness(old, {"idle": 0.0}, t)
        policy.on_liveness(successor, {}, t)
        actions += policy.tick(t)
    assert of(actions, Terminate) == [Terminate(successor, "start timeout")]
    assert of(actions, StateChanged) == [], "the old worker keeps serving"
    row = info(policy, t)
    assert row["successor"] is None and row["instance"] == old
    assert row["last_reason"] == "rotation failed: start timeout"
    policy.on_liveness(old, {"idle": 0.0}, t + 3.0)
    assert one(policy.tick(t + 3.0), Kill) == Kill(successor, "still alive 3s after TERM (start timeout)")


def test_a_hung_successor_is_reported_as_a_failed_rotation():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 10.0), Spawn).instance
    policy.on_liveness(successor, {}, 10.5)
    policy.on_liveness(old, {"idle": 0.0}, 15.0)
    assert one(policy.tick(15.5), Kill) == Kill(successor, "liveness timeout")
    assert info(policy, 15.5)["last_reason"] == "rotation failed: liveness timeout"
