"""The supervisor policy under a fake clock: no processes, no sockets, no sleep.

Time is the ``now`` argument; tests move it by hand.
"""

import random

import pytest
from hypothesis import given, settings, strategies as st

from feedsup.config import Connection, Restart, Stream
from feedsup.supervisor.policy import (
    Exit,
    IllegalTransition,
    Kill,
    Policy,
    Spawn,
    State,
    StateChanged,
    Terminate,
    UnknownStream,
    check_transition,
    is_stale,
)

CONN = Connection(connect_timeout=10.0, liveness_timeout=5.0, stale_after=10.0, max_age=1000.0)
RESTART = Restart(
    backoff_initial=1.0, backoff_max=8.0, intensity=3, period=60.0,
    connect_budget=100, budget_window=300.0, stable_after=30.0, stop_timeout=3.0,
)


class MaxRandom(random.Random):
    """Always draws the top of the range, so backoff delays are exact ceilings."""

    def uniform(self, a, b):
        return b


def stream(name="s1", **conn):
    connection = Connection(**{**CONN.__dict__, **conn})
    return Stream(name=name, market="spot", channel="aggTrade", symbols=("BTCUSDT",), connection=connection)


def make(names=("s1",), rng=None, conn=None, **restart):
    streams = [stream(n, **(conn or {})) for n in names]
    return Policy(streams, Restart(**{**RESTART.__dict__, **restart}), rng or random.Random(0))


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def one(actions, kind):
    found = of(actions, kind)
    assert len(found) == 1, actions
    return found[0]


def state(policy, name="s1"):
    return next(s for s in policy.status(0.0) if s["name"] == name)["state"]


def info(policy, now, name="s1"):
    return next(s for s in policy.status(now) if s["name"] == name)


def running(policy, now=0.0, name="s1"):
    """Start a one-stream policy and bring its worker to RUNNING; return the instance."""
    instance = one(policy.start(now), Spawn).instance
    policy.on_ready(instance, now)
    assert state(policy, name) == "RUNNING"
    return instance


def live_until(policy, instance, start, end, idle=0.0):
    """Feed one liveness ping per second (fresh data) and tick; return all actions."""
    actions, t = [], start
    while t <= end:
        actions += policy.on_liveness(instance, {"idle": idle}, t)
        actions += policy.tick(t)
        t += 1.0
    return actions


# --- start, READY, start timeout --------------------------------------------

def test_start_spawns_every_stream_with_unique_increasing_instances():
    policy = make(("a", "b", "c"))
    actions = policy.start(0.0)
    spawns = of(actions, Spawn)
    assert [s.stream for s in spawns] == ["a", "b", "c"]
    assert [s.instance for s in spawns] == sorted({s.instance for s in spawns})
    assert of(actions, StateChanged) == [
        StateChanged(n, State.EXITED, State.STARTING, "start") for n in ("a", "b", "c")
    ]
    assert policy.start(1.0) == []  # idempotent


def test_ready_moves_starting_to_running():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    assert policy.on_ready(instance, 2.0) == [StateChanged("s1", State.STARTING, State.RUNNING, "ready")]
    assert info(policy, 5.0)["uptime"] == 3.0


def test_no_ready_within_connect_plus_liveness_timeout_terminates():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    assert policy.next_deadline() == 15.0
    assert policy.tick(14.9) == []
    actions = policy.tick(15.0)
    assert one(actions, Terminate) == Terminate(instance, "start timeout")
    assert one(actions, StateChanged).new is State.STOPPING
    actions = policy.on_exit(instance, -15, "SIGTERM", False, 15.5)
    assert one(actions, StateChanged) == StateChanged("s1", State.STOPPING, State.BACKOFF, "start timeout")


# --- liveness: TERM, then KILL ------------------------------------------------

def test_missed_liveness_terms_then_kills_then_restarts():
    policy = make()
    instance = running(policy)
    policy.on_liveness(instance, {"idle": 0.1}, 2.0)
    assert policy.next_deadline() == 7.0
    assert policy.tick(6.9) == []
    actions = policy.tick(7.0)
    assert one(actions, Terminate) == Terminate(instance, "liveness timeout")
    assert state(policy) == "STOPPING"
    # A SIGSTOPped worker ignores TERM: KILL after stop_timeout, once.
    assert policy.next_deadline() == 10.0
    assert policy.tick(9.9) == []
    assert one(policy.tick(10.0), Kill).instance == instance
    assert policy.tick(20.0) == []
    actions = policy.on_exit(instance, -9, "SIGKILL", False, 20.5)
    assert one(actions, StateChanged).new is State.BACKOFF
    retry_at = info(policy, 20.5)["backoff_until"]
    assert 20.5 <= retry_at <= 21.5
    spawn = one(policy.tick(retry_at), Spawn)
    assert spawn.instance > instance and spawn.reason == "restart"
    assert state(policy) == "STARTING"


def test_liveness_pings_keep_a_worker_alive():
    policy = make()
    instance = running(policy)
    actions = live_until(policy, instance, 1.0, 100.0)
    assert of(actions, Terminate) == [] and of(actions, Spawn) == []


# --- stale data ---------------------------------------------------------------

def test_stale_verdict():
    assert not is_stale(10.0, 50.0, 10.0)
    assert is_stale(10.01, 0.0, 10.0)
    assert not is_stale(1e9, 1e9, 0.0)       # 0 disables
    assert not is_stale(None, 9.0, 10.0)     # no data yet: time since READY counts
    assert is_stale(None, 11.0, 10.0)
    assert is_stale("garbage", 11.0, 10.0)   # a malformed counter never crashes


def test_stale_data_restarts_a_running_worker():
    policy = make()
    instance = running(policy)
    assert policy.on_liveness(instance, {"idle": 9.5}, 1.0) == []
    actions = policy.on_liveness(instance, {"idle": 10.5}, 2.0)
    assert one(actions, Terminate).reason.startswith("stale")
    assert one(actions, StateChanged).new is State.STOPPING
    actions = policy.on_exit(instance, -15, "SIGTERM", False, 2.1)
    assert one(actions, StateChanged).new is State.BACKOFF


def test_stale_disabled_never_restarts():
    policy = make(conn={"stale_after": 0.0})
    instance = running(policy)
    assert policy.on_liveness(instance, {"idle": 1e6}, 1.0) == []


def test_subscribed_but_never_any_data_is_stale():
    policy = make()
    instance = running(policy)
    assert policy.on_liveness(instance, {"idle": None}, 9.0) == []
    assert one(policy.on_liveness(instance, {"idle": None}, 11.0), Terminate).reason.startswith("stale")


# --- backoff ----------------------------------------------------------------------

def fail_and_respawn(policy, instance, now, ran_for=0.0):
    """Bring ``instance`` to RUNNING for ``ran_for`` s, let it die; return (delay, next instance, time)."""
    policy.on_ready(instance, now)
    if ran_for:
        live_until(policy, instance, now + 1.0, now + ran_for)
    died = now + ran_for
    policy.on_exit(instance, 75, "connection reset", False, died)
    retry_at = info(policy, died)["backoff_until"]
    spawn = one(policy.tick(retry_at), Spawn)
    return retry_at - died, spawn.instance, retry_at


def test_backoff_doubles_up_to_its_cap():
    policy = make(rng=MaxRandom(), intensity=100)
    instance, now, delays = one(policy.start(0.0), Spawn).instance, 0.0, []
    for _ in range(6):
        delay, instance, now = fail_and_respawn(policy, instance, now)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_delays_are_jittered_within_bounds():
    policy = make(rng=random.Random(3), intensity=100)
    instance, now, delays = one(policy.start(0.0), Spawn).instance, 0.0, []
    for _ in range(30):
        delay, instance, now = fail_and_respawn(policy, instance, now)
        delays.append(delay)
    bounds = [min(8.0, 2.0**k) for k in range(30)]
    assert all(0.0 <= d <= b for d, b in zip(delays, bounds))
    assert len(set(delays)) == 30


def test_backoff_resets_after_a_stable_period():
    policy = make(rng=MaxRandom(), intensity=100)
    instance, now = one(policy.start(0.0), Spawn).instance, 0.0
    for _ in range(3):
        _, instance, now = fail_and_respawn(policy, instance, now)
    delay, instance, now = fail_and_respawn(policy, instance, now, ran_for=29.0)
    assert delay == 8.0  # 29 s is not stable: the backoff kept growing
    delay, instance, now = fail_and_respawn(policy, instance, now, ran_for=30.0)
    assert delay == 1.0  # 30 s RUNNING: a fresh incident


# --- restart intensity and fatal errors -----------------------------------------

def test_more_than_intensity_restarts_within_period_is_fatal():
    policy = make(rng=MaxRandom(), intensity=3, period=60.0)
    instance, now = one(policy.start(0.0), Spawn).instance, 0.0
    for _ in range(3):
        _, instance, now = fail_and_respawn(policy, instance, now)
    actions = policy.on_exit(instance, 75, "connection reset", False, now + 1.0)
    change = one(actions, StateChanged)
    assert change.new is State.FATAL
    assert "restart intensity exceeded" in change.reason and "connection reset" in change.reason
    assert one(actions, Exit).code == 1
    assert of(policy.tick(now + 1000.0), Spawn) == []
    assert policy.next_deadline() is None


def test_restarts_spread_beyond_the_period_never_go_fatal():
    policy = make(rng=MaxRandom(), intensity=2, period=10.0, backoff_max=1.0)
    instance, now = one(policy.start(0.0), Spawn).instance, 0.0
    for _ in range(20):
        delay, instance, now = fail_and_respawn(policy, instance, now + 5.0)
    assert state(policy) == "STARTING"


def test_fatal_exit_goes_straight_to_fatal_with_the_workers_reason():
    policy = make(("a", "b"))
    a, b = (s.instance for s in of(policy.start(0.0), Spawn))
    actions = policy.on_exit(a, 78, "invalid symbol BTCUSDX", True, 1.0)
    assert actions == [StateChanged("a", State.STARTING, State.FATAL, "invalid symbol BTCUSDX")]
    # One FATAL stream is not the end while another can still run.
    assert of(policy.tick(100.0), Spawn) == []
    # Exit code 78 counts as fatal even without the flag.
    actions = policy.on_exit(b, 78, "credentials rejected", False, 101.0)
    assert one(actions, StateChanged).new is State.FATAL
    exit_ = one(actions, Exit)
    assert exit_.code == 1 and "invalid symbol" in exit_.reason and "credentials" in exit_.reason


# --- connection budget -------------------------------------------------------------

def test_exhausted_budget_waits_in_backoff_until_a_token_frees():
    policy = make(("a", "b", "c"), connect_budget=2, budget_window=100.0)
    actions = policy.start(0.0)
    assert [s.stream for s in of(actions, Spawn)] == ["a", "b"]
    assert StateChanged("c", State.EXITED, State.BACKOFF, "connect budget exhausted") in actions
    assert info(policy, 0.0, "c")["backoff_until"] == 100.0
    assert policy.next_deadline() == 15.0  # start timeouts come first
    for s in of(actions, Spawn):
        policy.on_ready(s.instance, 1.0)
        live_until(policy, s.instance, 2.0, 2.0)
    assert of(policy.tick(99.9), Spawn) == []
    spawn = one(policy.tick(100.0), Spawn)
    assert spawn.stream == "c" and spawn.reason == "start"
    assert info(policy, 100.0, "c")["restarts"] == 0


KINDS = (
    ["exit"] * 4 + ["reap"] * 4 + ["ready"] * 4 + ["streaming"] * 3 + ["stale"] * 2 + ["notice"] * 2
    + ["restart", "fatal_exit", "nothing"]
)


def event_script():
    step = st.tuples(st.sampled_from(KINDS), st.integers(0, 7), st.floats(0.0, 4.0), st.booleans())
    return st.lists(step, min_size=30, max_size=150)


@settings(max_examples=150, deadline=None)
@given(script=event_script(), seed=st.integers(0, 2**16))
def test_no_failure_pattern_exceeds_the_connect_budget(script, seed):
    """Random worker behaviour, with the shell ticking at every deadline."""
    budget, window = 6, 20.0
    policy = make(("a", "b", "c"), rng=random.Random(seed), connect_budget=budget, budget_window=window,
                  intensity=1000, backoff_initial=0.01, backoff_max=0.5, stop_timeout=1.0,
                  conn={"max_age": 15.0})
    now, spawned, instances, alive, terminated, states = 0.0, [], [], [], set(), {}

    def apply(actions):
        for a in actions:
            if isinstance(a, Spawn):
                spawned.append(now)
                instances.append(a.instance)
                alive.append(a.instance)
            elif isinstance(a, (Terminate, Kill)):
                assert a.instance in alive
                terminated.add(a.instance)
            elif isinstance(a, StateChanged):
                # Every state change is announced, from the state the stream was in.
                assert states.get(a.stream, State.EXITED) is a.old
                states[a.stream] = a.new
        for s in policy.status(now):
            assert states.get(s["name"], State.EXITED).name == s["state"]

    def exit_(instance, fatal):
        alive.remove(instance)
        apply(policy.on_exit(instance, 78 if fatal else 75, "boom", fatal, now))

    apply(policy.start(now))
    for kind, pick, gap, heartbeat in script:
        target = now + gap
        # The shell ticks at every deadline on the way.
        while (deadline := policy.next_deadline()) is not None and deadline <= target:
            now = max(now, deadline)
            apply(policy.tick(now))
            assert (policy.next_deadline() or float("inf")) > now
        now = target
        if heartbeat:
            for instance in list(alive):
                apply(policy.on_liveness(instance, {"idle": 0.0}, now))
        victims = [i for i in alive if i in terminated] if kind == "reap" else alive
        if not victims:
            continue
        instance = victims[pick % len(victims)]
        if kind in ("exit", "reap", "fatal_exit"):
            exit_(instance, kind == "fatal_exit")
        elif kind == "ready":
            apply(policy.on_ready(instance, now))
        elif kind == "streaming":
            apply(policy.on_streaming(instance, now))
        elif kind == "stale":
            apply(policy.on_liveness(instance, {"idle": 100.0}, now))
        elif kind == "notice":
            apply(policy.on_notice(instance, "serverShutdown", now))
        elif kind == "restart":
            apply(policy.request_restart("abc"[pick % 3], now))
        apply(policy.tick(now))
    assert instances == sorted(set(instances))
    for start in spawned:
        assert sum(1 for t in spawned if start <= t < start + window) <= budget


def test_a_tight_crash_loop_is_held_to_the_budget():
    policy = make(("a", "b"), connect_budget=4, budget_window=60.0, intensity=10_000,
                  backoff_initial=0.0, backoff_max=0.0)
    now, spawned = 0.0, []
    actions = policy.start(now)
    while now < 600.0:
        spawned += [(now, a.instance) for a in of(actions, Spawn)]
        actions = []
        for _, instance in spawned[-2:]:
            actions += policy.on_exit(instance, 75, "refused", False, now)
        actions += policy.tick(now)
        now = max(now + 0.1, min(policy.next_deadline() or now, now + 0.1))
    times = [t for t, _ in spawned]
    assert len(times) == 4 * 10  # exactly the budget, every window
    for start in times:
        assert sum(1 for t in times if start <= t < start + 60.0) <= 4


# --- planned rotation (make before break) ------------------------------------------

def test_server_shutdown_rotation_makes_before_it_breaks():
    policy = make()
    old = running(policy)
    actions = policy.on_notice(old, "serverShutdown", 10.0)
    new = one(actions, Spawn)
    assert new.reason == "rotation (serverShutdown)"
    assert of(actions, StateChanged) == [] and of(actions, Terminate) == []
    assert policy.on_ready(new.instance, 11.0) == []  # subscribed is not enough
    assert info(policy, 11.0)["instance"] == old
    actions = policy.on_streaming(new.instance, 12.0)
    assert actions == [Terminate(old, "rotated")]
    status = info(policy, 12.0)
    assert status["state"] == "RUNNING" and status["instance"] == new.instance and status["rotations"] == 1
    assert policy.on_exit(old, -15, "SIGTERM", False, 12.5) == []
    assert of(live_until(policy, new.instance, 13.0, 120.0), Spawn) == []
    assert info(policy, 120.0)["restarts"] == 0


def test_old_worker_ignoring_term_after_rotation_is_killed():
    policy = make()
    old = running(policy)
    new = one(policy.on_notice(old, "serverShutdown", 1.0), Spawn).instance
    policy.on_ready(new, 2.0)
    policy.on_streaming(new, 2.0)
    policy.on_liveness(new, {"idle": 0.0}, 4.0)
    assert policy.tick(5.0) == [Kill(old, "still alive 3s after TERM (rotated)")]


def test_rotation_at_max_age():
    policy = make(conn={"max_age": 100.0})
    old = running(policy)
    actions = live_until(policy, old, 1.0, 99.0)
    assert of(actions, Spawn) == []
    assert policy.next_deadline() == 100.0
    new = one(live_until(policy, old, 100.0, 100.0), Spawn)
    assert new.reason == "rotation (max_age)"
    policy.on_ready(new.instance, 101.0)
    assert policy.on_streaming(new.instance, 101.5) == [Terminate(old, "rotated")]


def test_old_worker_dying_first_hands_over_to_the_successor():
    policy = make()
    old = running(policy)
    new = one(policy.on_notice(old, "serverShutdown", 5.0), Spawn).instance
    actions = policy.on_exit(old, 75, "server closed 1001", False, 6.0)
    assert of(actions, Spawn) == []
    assert one(actions, StateChanged).new is State.STARTING  # the successor was not READY yet
    assert policy.on_ready(new, 7.0) == [StateChanged("s1", State.STARTING, State.RUNNING, "ready")]
    assert info(policy, 7.0)["instance"] == new
    assert policy.on_streaming(new, 8.0) == []


def test_a_ready_successor_takes_over_without_a_state_change():
    policy = make()
    old = running(policy)
    new = one(policy.on_notice(old, "serverShutdown", 5.0), Spawn).instance
    policy.on_ready(new, 5.5)
    assert policy.on_exit(old, 75, "server closed 1001", False, 6.0) == []
    assert info(policy, 6.0)["instance"] == new and state(policy) == "RUNNING"


def test_failed_successor_keeps_the_old_worker_and_retries_with_backoff():
    policy = make(rng=MaxRandom(), intensity=1, conn={"liveness_timeout": 1000.0})
    old = running(policy)
    now, delays = 1.0, []
    successor = one(policy.on_notice(old, "serverShutdown", now), Spawn).instance
    for _ in range(5):  # more failures than the intensity: rotations do not count
        actions = policy.on_exit(successor, 75, "handshake failed", False, now)
        assert of(actions, StateChanged) == [] and of(actions, Spawn) == []
        assert info(policy, now)["instance"] == old and state(policy) == "RUNNING"
        retry_at = policy.next_deadline()
        delays.append(retry_at - now)
        now = retry_at
        policy.on_liveness(old, {"idle": 0.0}, now)
        successor = one(policy.tick(now), Spawn).instance
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert "rotation failed: handshake failed" == info(policy, now)["last_reason"]


def test_successor_that_never_gets_ready_is_terminated_and_the_old_one_stays():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 0.0), Spawn).instance
    actions = live_until(policy, old, 1.0, 15.0)
    assert of(actions, Terminate) == [Terminate(successor, "start timeout")]
    assert of(actions, StateChanged) == []
    assert policy.on_exit(successor, -15, "SIGTERM", False, 15.5) == []
    assert info(policy, 15.5)["instance"] == old


def test_successor_that_subscribes_but_never_streams_is_stale_and_retried():
    policy = make(conn={"liveness_timeout": 1000.0})
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 0.0), Spawn).instance
    policy.on_ready(successor, 1.0)
    assert policy.on_liveness(successor, {"idle": None}, 11.0) == []
    actions = policy.on_liveness(successor, {"idle": None}, 11.5)
    assert actions == [Terminate(successor, "stale: no data for 10.5s")]
    assert info(policy, 11.5)["instance"] == old and state(policy) == "RUNNING"
    assert policy.on_exit(successor, -15, "SIGTERM", False, 12.0) == []
    retry_at = policy.next_deadline()
    assert 11.5 < retry_at <= 12.5
    assert one(policy.tick(retry_at), Spawn).reason == "rotation (serverShutdown)"


def test_fatal_successor_does_not_loop_rotations():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 1.0), Spawn).instance
    assert policy.on_exit(successor, 78, "credentials rejected", True, 2.0) == []
    assert state(policy) == "RUNNING"
    assert of(live_until(policy, old, 3.0, 200.0), Spawn) == []


def test_server_shutdown_before_ready_rotates_once_ready():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    assert policy.on_notice(instance, "serverShutdown", 1.0) == []
    actions = policy.on_ready(instance, 2.0)
    assert one(actions, Spawn).reason == "rotation (serverShutdown)"


def test_rotation_spawns_take_budget_tokens_and_wait_for_one():
    policy = make(connect_budget=1, budget_window=100.0, conn={"liveness_timeout": 1000.0})
    old = running(policy)
    assert policy.on_notice(old, "serverShutdown", 10.0) == []  # the start used the only token
    assert state(policy) == "RUNNING" and info(policy, 10.0)["budget_remaining"] == 0
    assert policy.next_deadline() == 100.0
    assert policy.tick(99.0) == []
    assert one(policy.tick(100.0), Spawn).reason == "rotation (serverShutdown)"


def test_successor_streaming_rescues_a_stream_whose_old_worker_hung():
    policy = make()
    old = running(policy)
    new = one(policy.on_notice(old, "serverShutdown", 1.0), Spawn).instance
    policy.on_ready(new, 2.0)
    policy.on_liveness(new, {"idle": None}, 5.0)
    assert Terminate(old, "liveness timeout") in policy.tick(5.0)
    assert state(policy) == "STOPPING"
    actions = policy.on_streaming(new, 5.5)
    assert actions == [StateChanged("s1", State.STOPPING, State.RUNNING, "rotated")]
    assert policy.on_exit(old, -15, "SIGTERM", False, 6.0) == []
    assert info(policy, 6.0)["instance"] == new and state(policy) == "RUNNING"


# --- manual restart ------------------------------------------------------------------

def test_manual_restart_respawns_at_once_on_exit():
    policy = make(intensity=1)
    instance = running(policy)
    for now in (10.0, 20.0, 30.0):  # more than the intensity: manual restarts are not failures
        actions = policy.request_restart("s1", now)
        assert one(actions, Terminate) == Terminate(instance, "restart requested")
        assert state(policy) == "STOPPING"
        actions = policy.on_exit(instance, -15, "SIGTERM", False, now + 0.5)
        spawn = one(actions, Spawn)
        assert one(actions, StateChanged) == StateChanged("s1", State.STOPPING, State.STARTING, "restart requested")
        instance = spawn.instance
        policy.on_ready(instance, now + 1.0)
    assert info(policy, 31.0)["restarts"] == 3


def test_manual_restart_while_a_failed_worker_is_stopping_respawns_without_backoff():
    policy = make(rng=MaxRandom())
    instance = running(policy)
    policy.tick(5.0)  # liveness timeout: TERM sent
    assert state(policy) == "STOPPING"
    assert policy.request_restart("s1", 5.5) == []  # TERM already on its way
    actions = policy.on_exit(instance, -15, "SIGTERM", False, 6.0)
    assert one(actions, Spawn).instance > instance
    assert one(actions, StateChanged).new is State.STARTING


def test_manual_restart_skips_backoff():
    policy = make(rng=MaxRandom())
    instance = running(policy)
    policy.on_exit(instance, 75, "reset", False, 1.0)
    assert state(policy) == "BACKOFF"
    spawn = one(policy.request_restart("s1", 1.1), Spawn)
    assert spawn.instance > instance and state(policy) == "STARTING"


def test_manual_restart_clears_fatal():
    policy = make(("a", "b"))
    a, _ = (s.instance for s in of(policy.start(0.0), Spawn))
    policy.on_exit(a, 78, "invalid symbol", True, 1.0)
    assert state(policy, "a") == "FATAL"
    actions = policy.request_restart("a", 2.0)
    assert one(actions, Spawn).stream == "a"
    assert one(actions, StateChanged) == StateChanged("a", State.FATAL, State.STARTING, "restart requested")


def test_manual_restart_during_rotation_discards_the_successor():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 1.0), Spawn).instance
    actions = policy.request_restart("s1", 2.0)
    assert set(of(actions, Terminate)) == {
        Terminate(old, "restart requested"), Terminate(successor, "restart requested"),
    }
    assert policy.on_exit(successor, -15, "SIGTERM", False, 2.1) == []
    new = one(policy.on_exit(old, -15, "SIGTERM", False, 2.2), Spawn)
    assert new.reason == "restart" and info(policy, 2.2)["instance"] == new.instance


def test_restart_of_an_unknown_stream_raises():
    policy = make()
    policy.start(0.0)
    with pytest.raises(UnknownStream):
        policy.request_restart("nope", 1.0)


# --- shutdown -----------------------------------------------------------------------------

def test_stop_terms_everything_kills_stragglers_and_exits_zero():
    policy = make(("a", "b", "c"), rng=MaxRandom())
    a, b, c = (s.instance for s in of(policy.start(0.0), Spawn))
    for i in (a, b, c):
        policy.on_ready(i, 1.0)
    policy.on_exit(c, 75, "reset", False, 2.0)  # c waits in BACKOFF
    actions = policy.request_stop(2.5)
    assert set(of(actions, Terminate)) == {Terminate(a, "shutdown"), Terminate(b, "shutdown")}
    assert StateChanged("c", State.BACKOFF, State.EXITED, "shutdown") in actions
    assert {state(policy, n) for n in "ab"} == {"STOPPING"}
    assert policy.request_stop(2.6) == []
    assert of(policy.tick(100.0), Spawn) == []  # c's backoff ended: no spawn while stopping
    assert policy.on_exit(a, 0, "SIGTERM", False, 3.0) == [StateChanged("a", State.STOPPING, State.EXITED, "shutdown")]
    assert policy.request_restart("a", 3.1) == []


def test_stop_kills_a_worker_that_ignores_term_then_exits_zero():
    policy = make()
    instance = running(policy)
    policy.request_stop(10.0)
    assert policy.next_deadline() == 13.0
    assert policy.tick(12.9) == []
    assert one(policy.tick(13.0), Kill).instance == instance
    actions = policy.on_exit(instance, -9, "SIGKILL", False, 13.1)
    assert one(actions, StateChanged).new is State.EXITED
    assert one(actions, Exit) == Exit(0, "all workers stopped")
    assert policy.tick(50.0) == [] and policy.next_deadline() is None


def test_stop_with_nothing_running_exits_at_once():
    policy = make()
    assert policy.request_stop(0.0) == [Exit(0, "all workers stopped")]
    assert policy.start(1.0) == []


def test_stop_during_rotation_waits_for_every_worker():
    policy = make()
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 1.0), Spawn).instance
    actions = policy.request_stop(2.0)
    assert set(of(actions, Terminate)) == {Terminate(old, "shutdown"), Terminate(successor, "shutdown")}
    assert of(policy.on_exit(old, 0, "SIGTERM", False, 2.1), Exit) == []
    assert policy.on_exit(successor, 0, "SIGTERM", False, 2.2) == [Exit(0, "all workers stopped")]
    assert state(policy) == "EXITED"


# --- unknown and stale messages ---------------------------------------------------------

def test_messages_from_unknown_or_dead_instances_are_ignored():
    policy = make()
    instance = running(policy)
    for call in (
        lambda: policy.on_ready(999, 1.0),
        lambda: policy.on_streaming(999, 1.0),
        lambda: policy.on_liveness(999, {"idle": 1e9}, 1.0),
        lambda: policy.on_notice(999, "serverShutdown", 1.0),
        lambda: policy.on_exit(999, 75, "?", False, 1.0),
        lambda: policy.on_notice(instance, "somethingElse", 1.0),
        lambda: policy.on_liveness(instance, "not a mapping", 1.0),
    ):
        assert call() == []
    assert state(policy) == "RUNNING"
    policy.on_exit(instance, 75, "reset", False, 2.0)
    assert state(policy) == "BACKOFF"
    # Late messages from the dead worker change nothing.
    assert policy.on_exit(instance, 75, "reset", False, 2.1) == []
    assert policy.on_ready(instance, 2.2) == []
    assert policy.on_liveness(instance, {"idle": 1e9}, 2.3) == []
    assert state(policy) == "BACKOFF"


def test_streaming_before_ready_counts_as_ready():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    assert policy.on_streaming(instance, 1.0) == [StateChanged("s1", State.STARTING, State.RUNNING, "ready")]


# --- the transition table -------------------------------------------------------------

@pytest.mark.parametrize("old,new", [
    (State.EXITED, State.RUNNING),
    (State.FATAL, State.RUNNING),
    (State.BACKOFF, State.RUNNING),
    (State.STARTING, State.STARTING),
    (State.RUNNING, State.RUNNING),
])
def test_illegal_transitions_raise(old, new):
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_duplicate_stream_names_are_rejected():
    with pytest.raises(ValueError):
        Policy([stream("a"), stream("a")], RESTART, random.Random(0))


def test_status_reports_per_stream_facts():
    policy = make(("a",))
    instance = running(policy, 0.0, "a")
    policy.on_liveness(instance, {"idle": 0.2, "messages": 42}, 3.0)
    status = policy.status(10.0)
    assert status == [{
        "name": "a", "state": "RUNNING", "state_reason": "ready", "instance": instance, "successor": None,
        "uptime": 10.0, "restarts": 0, "rotations": 0, "last_reason": "",
        "stats": {"idle": 0.2, "messages": 42}, "backoff_until": None, "budget_remaining": 99,
    }]
