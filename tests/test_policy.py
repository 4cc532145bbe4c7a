"""The supervisor policy under a fake clock: no processes, no sockets, no sleep.

Time is the ``now`` argument; tests move it by hand.
"""

import random

import pytest
from hypothesis import given, settings, strategies as st

from feedsup.config import Connection, Restart, Stream
from feedsup.supervisor.policy import (
    MAX_AGE_SPREAD,
    SPAWN_ALLOWANCE_S,
    START_TIMEOUT_STEPS,
    CountedFailure,
    Exit,
    Fatal,
    IllegalTransition,
    Kill,
    Policy,
    Restarted,
    Retry,
    Spawn,
    State,
    StateChanged,
    Terminate,
    UnknownStream,
    check_transition,
    classify_exit,
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


def test_a_starting_worker_that_pings_but_never_gets_ready_is_terminated_at_the_start_timeout():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    start_timeout = START_TIMEOUT_STEPS * CONN.connect_timeout
    # Alive (pinging) but not progressing: TERM at the start timeout, not before.
    actions = live_until(policy, instance, 1.0, start_timeout - 1.0)
    assert of(actions, Terminate) == [] and of(actions, Kill) == []
    assert policy.next_deadline() == start_timeout
    policy.on_liveness(instance, {}, start_timeout - 0.5)
    actions = policy.tick(start_timeout)
    assert one(actions, Terminate) == Terminate(instance, "start timeout")
    assert one(actions, StateChanged).new is State.STOPPING
    actions = policy.on_exit(instance, 0, "terminated", False, start_timeout + 0.5)
    assert one(actions, StateChanged) == StateChanged("s1", State.STOPPING, State.BACKOFF, "start timeout")


# --- liveness: a hung worker is killed and replaced at once ---------------------

def test_a_hung_running_worker_is_killed_and_replaced_at_once():
    policy = make()
    instance = running(policy)
    policy.on_liveness(instance, {"idle": 0.1}, 2.0)
    assert policy.next_deadline() == 7.0
    assert policy.tick(6.9) == []
    actions = policy.tick(7.0)
    # A SIGSTOPped process cannot handle TERM: no TERM, no stop_timeout, no backoff.
    assert of(actions, Terminate) == []
    assert one(actions, Kill) == Kill(instance, "liveness timeout")
    spawn = one(actions, Spawn)
    assert spawn.instance > instance and spawn.reason == "restart"
    assert one(actions, StateChanged) == StateChanged("s1", State.RUNNING, State.STARTING, "liveness timeout")
    assert one(actions, Restarted) == Restarted("s1", "liveness timeout")
    assert info(policy, 7.0)["instance"] == spawn.instance
    # The killed worker's exit changes nothing.
    assert policy.on_exit(instance, -9, "killed by SIGKILL", False, 7.1) == []
    assert policy.on_ready(spawn.instance, 7.5) == [StateChanged("s1", State.STARTING, State.RUNNING, "ready")]
    assert info(policy, 7.5)["restarts"] == 1


def test_a_hung_starting_worker_is_judged_by_its_liveness_pings():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    policy.on_liveness(instance, {}, 0.4)     # the ticker pings before the worker connects
    assert policy.next_deadline() == 5.4
    actions = policy.tick(5.4)
    assert one(actions, Kill) == Kill(instance, "liveness timeout")
    assert one(actions, Spawn).instance > instance
    assert one(actions, StateChanged) == StateChanged("s1", State.STARTING, State.STARTING, "liveness timeout")


def test_a_worker_that_never_pings_gets_the_spawn_allowance_then_is_replaced():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    deadline = SPAWN_ALLOWANCE_S + CONN.liveness_timeout
    assert policy.next_deadline() == deadline
    assert policy.tick(deadline - 0.01) == []
    actions = policy.tick(deadline)
    assert one(actions, Kill).instance == instance and len(of(actions, Spawn)) == 1


def test_a_fresh_worker_on_a_loaded_host_has_seconds_for_its_first_ping():
    # Eight interpreters starting at once on a busy 2-core host took over
    # 2.5 s to send their first ping: killing them then (and their
    # replacements, for the same reason) ended streams FATAL in an outage.
    policy = make(conn={"liveness_timeout": 1.5})
    instance = one(policy.start(0.0), Spawn).instance
    assert of(policy.tick(4.0), Kill) == []
    policy.on_liveness(instance, {}, 4.0)
    assert of(policy.tick(5.4), Kill) == []
    assert one(policy.tick(5.5), Kill).instance == instance     # from the first ping on: liveness_timeout


def test_hung_workers_count_toward_the_restart_intensity():
    policy = make(intensity=2, period=60.0)
    instance, now, killed = one(policy.start(0.0), Spawn).instance, 0.0, []
    for _ in range(2):
        policy.on_liveness(instance, {}, now)
        now += CONN.liveness_timeout
        actions = policy.tick(now)
        killed.append(one(actions, Kill).instance)
        instance = one(actions, Spawn).instance
    policy.on_liveness(instance, {}, now)
    now += CONN.liveness_timeout
    actions = policy.tick(now)
    assert of(actions, Spawn) == []
    assert one(actions, Kill).instance == instance
    change = one(actions, StateChanged)
    assert change.new is State.FATAL and "restart intensity exceeded" in change.reason
    assert one(actions, Restarted) == Restarted("s1", "fatal")
    # Exit(1) only once the killed processes are gone.
    assert of(actions, Exit) == []
    for old in killed:
        assert policy.on_exit(old, -9, "killed by SIGKILL", False, now) == []
    assert one(policy.on_exit(instance, -9, "killed by SIGKILL", False, now + 0.1), Exit).code == 1


def test_a_hung_worker_is_replaced_only_as_the_budget_allows():
    policy = make(connect_budget=1, budget_window=100.0)
    instance = running(policy)
    actions = policy.tick(5.0)
    assert one(actions, Kill).instance == instance and of(actions, Spawn) == []
    assert one(actions, StateChanged) == StateChanged("s1", State.RUNNING, State.BACKOFF, "connect budget exhausted")
    assert one(policy.tick(100.0), Spawn).reason == "restart"


def test_a_hung_successor_is_killed_and_the_rotation_retried():
    policy = make(rng=MaxRandom())
    old = running(policy)
    successor = one(policy.on_notice(old, "serverShutdown", 1.0), Spawn).instance
    policy.on_liveness(successor, {}, 1.5)
    actions = live_until(policy, old, 2.0, 7.0)
    assert of(actions, Kill) == [Kill(successor, "liveness timeout")]
    assert of(actions, StateChanged) == [] and of(actions, Spawn) == []
    assert info(policy, 7.0)["instance"] == old
    assert policy.on_exit(successor, -9, "killed by SIGKILL", False, 7.1) == []
    assert one(policy.tick(policy.next_deadline()), Spawn).reason == "rotation (serverShutdown)"


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

def fail_and_respawn(policy, instance, now, ran_for=0.0, code=75, reason="connection reset"):
    """Bring ``instance`` to RUNNING for ``ran_for`` s, let it die; return (delay, next instance, time)."""
    policy.on_ready(instance, now)
    if ran_for:
        live_until(policy, instance, now + 1.0, now + ran_for)
    died = now + ran_for
    policy.on_exit(instance, code, reason, False, died)
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

def test_more_than_intensity_crashes_within_period_is_fatal():
    policy = make(rng=MaxRandom(), intensity=3, period=60.0)
    instance, now = one(policy.start(0.0), Spawn).instance, 0.0
    for _ in range(3):
        _, instance, now = fail_and_respawn(policy, instance, now, code=1, reason="exited with code 1")
    actions = policy.on_exit(instance, -9, "killed by SIGKILL", False, now + 1.0)
    change = one(actions, StateChanged)
    assert change.new is State.FATAL
    assert "restart intensity exceeded" in change.reason and "killed by SIGKILL" in change.reason
    assert one(actions, Exit).code == 1
    assert of(policy.tick(now + 1000.0), Spawn) == []
    assert policy.next_deadline() is None


def test_crashes_spread_beyond_the_period_never_go_fatal():
    policy = make(rng=MaxRandom(), intensity=2, period=10.0, backoff_max=1.0)
    instance, now = one(policy.start(0.0), Spawn).instance, 0.0
    for _ in range(20):
        delay, instance, now = fail_and_respawn(policy, instance, now + 5.0, code=1, reason="exited with code 1")
    assert state(policy) == "STARTING"


def test_fatal_exit_goes_straight_to_fatal_with_the_workers_reason():
    policy = make(("a", "b"), conn={"liveness_timeout": 1e9})
    a, b = (s.instance for s in of(policy.start(0.0), Spawn))
    actions = policy.on_exit(a, 78, "invalid symbol BTCUSDX", True, 1.0)
    assert actions == [Restarted("a", "fatal"),
                       StateChanged("a", State.STARTING, State.FATAL, "invalid symbol BTCUSDX")]
    # One FATAL stream is not the end while another can still run.
    assert of(policy.tick(30.0), Spawn) == []
    # Exit code 78 counts as fatal even without the flag.
    actions = policy.on_exit(b, 78, "credentials rejected", False, 31.0)
    assert one(actions, StateChanged).new is State.FATAL
    exit_ = one(actions, Exit)
    assert exit_.code == 1 and "invalid symbol" in exit_.reason and "credentials" in exit_.reason


# --- what an exit means: classify_exit -------------------------------------------

NETWORK_REASONS = (
    "connect failed: ConnectionRefusedError: [Errno 111] Connection refused",
    "connect failed: ConnectionResetError: [Errno 104] Connection reset by peer",
    "connect failed: WebSocketTimeoutException: timed out",
    "connect failed: gaierror: [Errno -3] Temporary failure in name resolution",
    "upgrade refused: HTTP 503",
    "upgrade refused: HTTP 429",
    "upgrade refused: HTTP 418",
    "upgrade refused: HTTP 403",
    "ping/pong timed out",
    "closed by server: 1008 Too many messages",
    "connection lost: ConnectionResetError: [Errno 104] Connection reset by peer",
)


@pytest.mark.parametrize("reason", NETWORK_REASONS)
def test_network_and_exchange_failures_are_retried_without_counting(reason):
    assert classify_exit(75, reason, False) == Retry(reason)


@pytest.mark.parametrize("code, reason, fatal, kw, verdict", [
    # Retrying cannot fix a bad config.
    (78, "invalid symbol: BTCUSDX (not listed by the exchange)", True, {}, Fatal),
    (78, "credentials: API key rejected", True, {"ran_before": True}, Fatal),
    (78, "upgrade rejected: HTTP 400 (Invalid request)", True, {}, Fatal),
    (78, "upgrade rejected: HTTP 404 (Not Found)", False, {}, Fatal),   # 78 is fatal without the flag
    # ... but the same URL worked before: a hiccup of the exchange, retried and counted.
    (78, "upgrade rejected: HTTP 400 (Invalid request)", True, {"ran_before": True}, CountedFailure),
    (78, "upgrade rejected: HTTP 401 (Unauthorized)", True, {"ran_before": True}, CountedFailure),
    (78, "upgrade rejected: HTTP 404 (Not Found)", True, {"ran_before": True}, CountedFailure),
    # Our own crash loop.
    (1, "exited with code 1", False, {}, CountedFailure),
    (75, "worker error: ValueError: boom", False, {}, CountedFailure),
    (75, "worker returned", False, {}, CountedFailure),
    (-9, "killed by SIGKILL", False, {}, CountedFailure),
    (-11, "killed by SIGSEGV", False, {}, CountedFailure),
    (0, "terminated", False, {}, CountedFailure),              # a TERM we did not send
    (75, "", False, {}, Retry),                                # EX_TEMPFAIL says: retry
    # Exits we caused: our reason decides.
    (0, "terminated", False, {"ended_by": "stale: no data for 11.0s"}, Retry),
    (0, "terminated", False, {"ended_by": "start timeout"}, Retry),
    (-9, "killed by SIGKILL", False, {"ended_by": "liveness timeout"}, CountedFailure),
    # No process at all (Popen failed: EAGAIN, ENOMEM): it passes with time.
    (None, "spawn failed: [Errno 11] Resource temporarily unavailable", False, {}, Retry),
])
def test_classify_exit(code, reason, fatal, kw, verdict):
    result = classify_exit(code, reason, fatal, **kw)
    assert type(result) is verdict
    assert result.reason == (kw.get("ended_by") or reason or "exited with code 75")


def test_upgrade_rejected_after_the_stream_ran_is_retried_with_backoff_and_counted():
    policy = make(rng=MaxRandom(), intensity=2, period=60.0)
    instance = running(policy)
    reason = "upgrade rejected: HTTP 404 (Not Found)"
    now = 10.0
    for delay in (1.0, 2.0):
        actions = policy.on_exit(instance, 78, reason, True, now)
        assert one(actions, StateChanged).new is State.BACKOFF
        assert info(policy, now)["backoff_until"] == now + delay
        now += delay
        instance = one(policy.tick(now), Spawn).instance
    change = one(policy.on_exit(instance, 78, reason, True, now), StateChanged)
    assert change.new is State.FATAL and "restart intensity exceeded" in change.reason


def test_upgrade_rejected_on_a_stream_that_never_ran_is_fatal_at_once():
    policy = make()
    instance = one(policy.start(0.0), Spawn).instance
    change = one(policy.on_exit(instance, 78, "upgrade rejected: HTTP 400 (Invalid request)", True, 1.0),
                 StateChanged)
    assert change.new is State.FATAL


# --- an exchange-wide outage ------------------------------------------------------

OUTAGE_REASONS = ("upgrade refused: HTTP 503",
                  "connect failed: ConnectionResetError: [Errno 104] Connection reset by peer")


def drive_outage(policy, outage_end, until, fail_after=0.05, step=0.5):
    """The shell under a fake clock. Workers spawned before ``outage_end``
    are refused ``fail_after`` s later (exit 75); later ones get READY and
    stream. Returns (spawns [(t, stream)], state changes [(t, change)],
    backoff delays [(stream, delay, reason)], first RUNNING after the outage {stream: t})."""
    now, spawns, changes, delays, recovered = 0.0, [], [], [], {}
    exits, readies, live = {}, {}, set()

    def apply(actions):
        for a in actions:
            if isinstance(a, Spawn):
                spawns.append((now, a.stream))
                (exits if now < outage_end else readies)[a.instance] = now + fail_after
            elif isinstance(a, StateChanged):
                changes.append((now, a))
                if a.new is State.BACKOFF:
                    until_ = info(policy, now, a.stream)["backoff_until"]
                    delays.append((a.stream, until_ - now, a.reason))
                if a.new is State.RUNNING and now >= outage_end:
                    recovered.setdefault(a.stream, now)

    apply(policy.start(now))
    while now < until:
        candidates = [policy.next_deadline(), now + step, *exits.values(), *readies.values()]
        now = min(c for c in candidates if c is not None)
        for instance, at in list(exits.items()):
            if at <= now:
                del exits[instance]
                apply(policy.on_exit(instance, 75, OUTAGE_REASONS[instance % 2], False, now))
        for instance, at in list(readies.items()):
            if at <= now:
                del readies[instance]
                live.add(instance)
                apply(policy.on_ready(instance, now))
                apply(policy.on_streaming(instance, now))
        for instance in live:
            apply(policy.on_liveness(instance, {"idle": 0.0}, now))
        apply(policy.tick(now))
    return spawns, changes, delays, recovered


def test_a_300s_outage_never_makes_a_stream_fatal_and_retries_stay_within_the_cap():
    names = ("a", "b", "c", "d")
    policy = make(names, rng=random.Random(7), intensity=3, period=60.0, backoff_max=8.0,
                  connect_budget=1000, budget_window=300.0)
    spawns, changes, delays, recovered = drive_outage(policy, outage_end=300.0, until=320.0)
    assert [c for _, c in changes if c.new is State.FATAL] == []
    # Far more failures than the intensity allows: they were not counted.
    for name in names:
        assert sum(1 for t, s in spawns if s == name and t < 300.0) > 3 * 300 / 60
    assert delays and max(d for _, d, _ in delays) <= 8.0
    assert {r for _, _, r in delays} == set(OUTAGE_REASONS)
    # Once the exchange is back, each stream is RUNNING within one backoff cap.
    assert set(recovered) == set(names)
    assert all(t <= 300.0 + 0.05 + 8.0 + 0.05 + 1e-9 for t in recovered.values()), recovered


def test_an_outage_under_a_tight_budget_waits_for_tokens_and_never_goes_fatal():
    names = ("a", "b", "c", "d")
    budget, window = 10, 60.0
    policy = make(names, rng=random.Random(1), intensity=1, period=60.0, backoff_initial=0.1,
                  backoff_max=1.0, connect_budget=budget, budget_window=window)
    spawns, changes, delays, recovered = drive_outage(policy, outage_end=300.0, until=300.0 + 2 * window)
    assert [c for _, c in changes if c.new is State.FATAL] == []
    times = [t for t, _ in spawns]
    assert all(sum(1 for t in times if start <= t < start + window) <= budget for start in times)
    assert any(r == "connect budget exhausted" for _, _, r in delays)
    assert all(d <= 1.0 for _, d, r in delays if r != "connect budget exhausted")
    assert set(recovered) == set(names)


@settings(max_examples=100, deadline=None)
@given(script=st.lists(st.tuples(st.integers(0, 7), st.floats(0.0, 3.0), st.sampled_from(NETWORK_REASONS),
                                 st.booleans()), min_size=20, max_size=120),
       seed=st.integers(0, 2**16))
def test_network_failures_alone_never_end_a_stream_fatal(script, seed):
    """Any pattern of network exits, with a budget that runs out: never FATAL,
    and every backoff delay within backoff_max."""
    cap = 2.0
    policy = make(("a", "b", "c", "d"), rng=random.Random(seed), intensity=1, period=1000.0,
                  backoff_initial=0.01, backoff_max=cap, connect_budget=8, budget_window=30.0)
    now, alive = 0.0, []

    def apply(actions):
        for a in actions:
            if isinstance(a, Spawn):
                alive.append(a.instance)
            elif isinstance(a, (Terminate, Kill)):   # a slow start: the worker obeys
                alive.remove(a.instance)
                apply(policy.on_exit(a.instance, 0, "terminated", False, now))
            elif isinstance(a, StateChanged):
                assert a.new is not State.FATAL, a
                if a.new is State.BACKOFF and a.reason != "connect budget exhausted":
                    assert info(policy, now, a.stream)["backoff_until"] - now <= cap

    apply(policy.start(now))
    for pick, gap, reason, ready in script:
        target = now + gap
        while (deadline := policy.next_deadline()) is not None and deadline <= target:
            now = max(now, deadline)
            for instance in list(alive):
                apply(policy.on_liveness(instance, {"idle": 0.0}, now))
            apply(policy.tick(now))
        now = target
        if alive:
            instance = alive[pick % len(alive)]
            if ready:
                apply(policy.on_ready(instance, now))
            else:
                alive.remove(instance)
                apply(policy.on_exit(instance, 75, reason, False, now))
        apply(policy.tick(now))
    assert all(s["state"] != "FATAL" for s in policy.status(now))


def test_a_failed_spawn_is_an_immediate_retried_exit():
    policy = make(rng=MaxRandom(), intensity=1)
    instance = one(policy.start(0.0), Spawn).instance
    now = 0.0
    for delay in (1.0, 2.0, 4.0):     # more than the intensity: not counted
        actions = policy.on_exit(instance, None, "spawn failed: [Errno 11] Resource temporarily unavailable",
                                 False, now)
        assert one(actions, StateChanged).new is State.BACKOFF
        assert info(policy, now)["backoff_until"] == now + delay
        now += delay
        instance = one(policy.tick(now), Spawn).instance
    assert state(policy) == "STARTING"


# --- restarts, as counted for feedsup_restarts_total ------------------------------

def test_every_restart_is_reported_with_its_reason():
    policy = make(("a", "b"), rng=MaxRandom(), connect_budget=3, budget_window=1000.0,
                  conn={"liveness_timeout": 1e9, "max_age": 1e6})
    a, b = (s.instance for s in of(policy.start(0.0), Spawn))
    policy.on_ready(a, 0.5)
    policy.on_ready(b, 0.5)
    # A failure: one restart, counted when the stream leaves RUNNING for BACKOFF.
    assert of(policy.on_exit(a, -9, "killed by SIGKILL", False, 1.0), Restarted) == [
        Restarted("a", "killed by SIGKILL")]
    a = one(policy.tick(2.0), Spawn).instance          # the last budget token
    policy.on_ready(a, 2.5)
    # A manual restart.
    assert of(policy.request_restart("b", 3.0), Restarted) == [Restarted("b", "restart requested")]
    # Budget exhausted: BACKOFF, but the restart was counted once already.
    actions = policy.on_exit(b, 0, "terminated", False, 3.5)
    assert of(actions, Restarted) == []
    assert one(actions, StateChanged).reason == "connect budget exhausted"
    # A rotation.
    b = one(policy.tick(1000.0), Spawn).instance        # b restarts as the budget frees
    policy.on_ready(b, 1000.5)
    new = one(policy.on_notice(a, "serverShutdown", 1001.0), Spawn).instance
    policy.on_ready(new, 1001.5)
    assert of(policy.on_streaming(new, 1002.0), Restarted) == [Restarted("a", "rotated")]
    # FATAL.
    assert of(policy.on_exit(b, 78, "invalid symbol: X", True, 1003.0), Restarted) == [
        Restarted("b", "fatal")]


def test_a_budget_wait_at_first_start_is_not_a_restart():
    policy = make(("a", "b"), connect_budget=1, budget_window=100.0, conn={"liveness_timeout": 1e9})
    actions = policy.start(0.0)
    policy.on_ready(one(actions, Spawn).instance, 1.0)
    assert StateChanged("b", State.EXITED, State.BACKOFF, "connect budget exhausted") in actions
    assert of(actions, Restarted) == [] and of(policy.tick(100.0), Restarted) == []


# --- max_age rotations are spread -------------------------------------------------

def test_max_age_rotations_of_streams_started_together_are_spread():
    names = tuple(f"s{i}" for i in range(20))
    max_age = 1000.0

    def due_times(seed):
        policy = make(names, rng=random.Random(seed), conn={"max_age": max_age, "liveness_timeout": 1e9})
        for spawn in of(policy.start(0.0), Spawn):
            policy.on_ready(spawn.instance, 0.0)
        due = {}
        while len(due) < len(names):
            t = policy.next_deadline()
            for spawn in of(policy.tick(t), Spawn):
                assert spawn.reason == "rotation (max_age)"
                due.setdefault(spawn.stream, t)
        return due

    due = due_times(5)
    assert all((1 - MAX_AGE_SPREAD) * max_age <= t <= max_age for t in due.values())
    assert len(set(due.values())) == len(names)              # nobody rotates together
    assert max(due.values()) - min(due.values()) > MAX_AGE_SPREAD * max_age / 2
    assert due_times(5) == due                              # seeded: reproducible


# --- connection budget -------------------------------------------------------------

def test_exhausted_budget_waits_in_backoff_until_a_token_frees():
    policy = make(("a", "b", "c"), connect_budget=2, budget_window=100.0, conn={"liveness_timeout": 1000.0})
    actions = policy.start(0.0)
    assert [s.stream for s in of(actions, Spawn)] == ["a", "b"]
    assert StateChanged("c", State.EXITED, State.BACKOFF, "connect budget exhausted") in actions
    assert info(policy, 0.0, "c")["backoff_until"] == 100.0
    assert policy.next_deadline() == START_TIMEOUT_STEPS * CONN.connect_timeout  # start timeouts first
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
    assert actions == [Restarted("s1", "rotated"), Terminate(old, "rotated")]
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
    policy = make(rng=MaxRandom(), conn={"max_age": 100.0, "liveness_timeout": 1e9})
    old = running(policy)
    # MaxRandom draws the largest spread: the earliest allowed rotation.
    due = (1 - MAX_AGE_SPREAD) * 100.0
    assert policy.next_deadline() == due
    assert policy.tick(due - 0.01) == []
    new = one(policy.tick(due), Spawn)
    assert new.reason == "rotation (max_age)"
    policy.on_ready(new.instance, 101.0)
    assert policy.on_streaming(new.instance, 101.5) == [Restarted("s1", "rotated"), Terminate(old, "rotated")]


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


def test_a_ready_successor_that_is_not_streaming_yet_takes_over_as_starting():
    # Subscribed is not serving: until the successor streams (caught up and
    # publishing), nothing reaches consumers, so the stream leaves RUNNING and
    # the parent announces the loss on topics without history.
    policy = make()
    old = running(policy)
    new = one(policy.on_notice(old, "serverShutdown", 5.0), Spawn).instance
    policy.on_ready(new, 5.5)
    reason = "successor took over (server closed 1001)"
    actions = policy.on_exit(old, 75, "server closed 1001", False, 6.0)
    assert actions == [Restarted("s1", reason), StateChanged("s1", State.RUNNING, State.STARTING, reason)]
    assert info(policy, 6.0)["instance"] == new
    assert policy.on_streaming(new, 7.0) == [StateChanged("s1", State.STARTING, State.RUNNING, "streaming")]
    assert info(policy, 7.5)["uptime"] == 0.5


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
    start_timeout = START_TIMEOUT_STEPS * CONN.connect_timeout
    actions, t = [], 1.0
    while t <= start_timeout:
        actions += policy.on_liveness(successor, {}, t)   # alive, but never READY
        actions += live_until(policy, old, t, t)
        t += 1.0
    assert of(actions, Terminate) == [Terminate(successor, "start timeout")]
    assert of(actions, StateChanged) == [] and of(actions, Kill) == []
    assert policy.on_exit(successor, 0, "terminated", False, t) == []
    assert info(policy, t)["instance"] == old


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
    actions = policy.tick(5.0)
    # The hung worker is killed; the READY successor takes over at once, and
    # the stream is RUNNING again once the successor streams.
    assert one(actions, Kill) == Kill(old, "liveness timeout")
    assert of(actions, Spawn) == []
    assert one(actions, StateChanged) == StateChanged("s1", State.RUNNING, State.STARTING,
                                                      "successor took over (liveness timeout)")
    assert info(policy, 5.0)["instance"] == new
    assert policy.on_streaming(new, 5.5) == [StateChanged("s1", State.STARTING, State.RUNNING, "streaming")]
    assert policy.on_exit(old, -9, "killed by SIGKILL", False, 6.0) == []
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
    policy.on_liveness(instance, {"idle": 11.0}, 1.0)  # stale: TERM sent
    assert state(policy) == "STOPPING"
    # TERM is already on its way: nothing to send, one restart to count.
    assert policy.request_restart("s1", 5.5) == [Restarted("s1", "restart requested")]
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
