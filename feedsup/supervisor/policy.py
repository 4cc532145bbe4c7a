"""Where restarts are decided: the supervisor's pure policy core.

The I/O shell feeds facts in (a worker is READY, sent a liveness ping, exited;
the operator asked for a restart or a stop; time passed) and carries out the
actions that come back (``Spawn``, ``Terminate``, ``Kill``, ``Exit``;
``StateChanged`` is for the log and gap notices, ``Restarted`` for the
restart counter). Nothing here touches a process, a socket or
a clock: ``now`` is monotonic seconds passed in by the caller, randomness
comes from the injected ``random.Random``. The shell must call ``tick(now)``
no later than ``next_deadline()`` after every call.

How an exit is judged is one pure function, ``classify_exit``: network and
exchange failures are retried for as long as it takes (capped full-jitter
backoff, within the shared connection budget) and never count toward the
restart intensity; only what retrying cannot fix (``Fatal``) and our own crash
loop (``CountedFailure``) can end a stream FATAL.

Per stream there is one *active* worker at most, plus during a planned
rotation a *successor* (make-before-break), plus any number of *retiring*
workers that were sent TERM (or KILL: hung) and whose exit has no consequence. Stream states
use supervisord's vocabulary; every change goes through
``_StreamRecord.change_state`` and the transition table ``TRANSITIONS``.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from feedsup.config_model import Restart, Stream
from feedsup.supervisor.backoff import Backoff
from feedsup.supervisor.budget import ConnectBudget
from feedsup.ipc.exits import EX_CONFIG, EX_TEMPFAIL, UPGRADE_REJECTED, WORKER_CRASHED

SERVER_SHUTDOWN = "serverShutdown"
# The Terminate reason of a worker whose successor took over: the successor
# streams everything from its subscription on, so the parent ignores the old one.
ROTATED = "rotated"
BUDGET_EXHAUSTED = "connect budget exhausted"
LIVENESS_TIMEOUT = "liveness timeout"
START_TIMEOUT = "start timeout"
RESTART_REQUESTED = "restart requested"
# The rotation reason of a worker whose stream's symbols changed (a listing
# or delisting of a symbols = "*" stream, feedsup/universe.py).
RECONFIGURED = "symbols changed"

# A new process needs time (interpreter start, imports) before its ticker
# can send the first liveness ping: allowed this on top of liveness_timeout,
# from then on liveness_timeout alone. Under load (eight workers starting
# at once on two busy cores) the first ping took over 2.5 s; a worker killed
# for that is replaced by one just as slow, so be generous: only a process
# that hangs before it ever pings is found this much later.
SPAWN_ALLOWANCE_S = 5.0
# A worker that pings but is not READY after START_TIMEOUT_STEPS x
# connect_timeout is stuck. Before READY a worker runs at most three
# sequential steps, each bounded by connect_timeout: the REST symbol check
# (or, for a USD-M account, the REST weight wait and the listenKey POST),
# the WebSocket connect (TCP + TLS + upgrade) and, for a spot account, the
# subscription reply. The fourth step is slack for what no timeout bounds
# (DNS resolution).
START_TIMEOUT_STEPS = 4
# max_age rotations come up to this fraction of max_age early, drawn per
# worker, so that streams started together do not all rotate together.
MAX_AGE_SPREAD = 0.05


class State(enum.Enum):
    STARTING = "STARTING"  # worker spawned, not READY yet
    RUNNING = "RUNNING"    # worker READY (subscribed)
    BACKOFF = "BACKOFF"    # no worker; waiting for the backoff delay or the connect budget
    STOPPING = "STOPPING"  # TERM sent to the active worker; waiting for its exit
    EXITED = "EXITED"      # not started yet, or stopped by a shutdown
    FATAL = "FATAL"        # gave up: fatal error or restart intensity exceeded


_S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    _S.EXITED: frozenset({_S.STARTING, _S.BACKOFF}),
    # STARTING -> STARTING: a hung worker was killed and replaced before READY.
    _S.STARTING: frozenset({_S.STARTING, _S.RUNNING, _S.STOPPING, _S.BACKOFF, _S.FATAL}),
    # RUNNING -> STARTING: the active worker died and a not-yet-READY successor took over.
    _S.RUNNING: frozenset({_S.STOPPING, _S.BACKOFF, _S.FATAL, _S.STARTING}),
    # BACKOFF -> BACKOFF: still waiting, for a new reason (the connect budget).
    _S.BACKOFF: frozenset({_S.STARTING, _S.BACKOFF, _S.EXITED}),
    _S.STOPPING: frozenset({_S.EXITED, _S.BACKOFF, _S.STARTING, _S.RUNNING, _S.FATAL}),
    _S.FATAL: frozenset({_S.STARTING, _S.BACKOFF, _S.EXITED}),
}


class IllegalTransition(RuntimeError):
    """A bug in the policy: a state change the transition table forbids."""


class UnknownStream(KeyError):
    """The operator named a stream that is not configured."""


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.name} -> {new.name} is not allowed")


# --- actions ---------------------------------------------------------------
# What the policy asks the parent to do. Several share a shape (Terminate and
# Kill, Spawn and Restarted) on purpose: the parent dispatches on the type.

@dataclass(frozen=True)
class Spawn:
    stream: str
    instance: int
    reason: str


@dataclass(frozen=True)
class Terminate:
    instance: int
    reason: str


@dataclass(frozen=True)
class Kill:
    instance: int
    reason: str


@dataclass(frozen=True)
class StateChanged:
    stream: str
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class Exit:
    code: int
    reason: str


@dataclass(frozen=True)
class Restarted:
    """A stream's worker was replaced or given up (for feedsup_restarts_total):
    after a failure (its cause), by the operator, by a rotation, or FATAL."""
    stream: str
    reason: str


Action = Union[Spawn, Terminate, Kill, StateChanged, Exit, Restarted]


# --- what an exit means --------------------------------------------------------

@dataclass(frozen=True)
class Retry:
    """The network or the exchange failed: retry for as long as it takes,
    with backoff, without counting toward the restart intensity."""
    reason: str


@dataclass(frozen=True)
class CountedFailure:
    """Our own process failed (crash, hang, a signal we did not send), or a
    rejection that may be real: retry with backoff, counted toward the
    restart intensity, so a crash loop ends FATAL instead of spinning."""
    reason: str


@dataclass(frozen=True)
class Fatal:
    """Retrying cannot fix it (invalid symbol, rejected credentials)."""
    reason: str


Verdict = Union[Retry, CountedFailure, Fatal]


def classify_exit(code: int | None, reason: str, fatal: bool, *, ran_before: bool = False,
                  ended_by: str | None = None) -> Verdict:
    """Judge how a worker ended.

    ``code`` is the exit status (negative: killed by that signal; None: no
    process was ever started, ``Popen`` failed), ``reason`` and ``fatal``
    come from the worker's EXIT report. This is the one place that decides
    whether an exit is fatal, and the exit code decides it: a worker that
    finds its end fatal exits with EX_CONFIG, so a ``fatal`` flag without
    that code is from a worker killed after it reported, and does not count. ``ran_before``: a worker of this
    stream was READY before in this parent's life. ``ended_by``: the reason
    we TERMed or KILLed the worker, if we did; then that reason explains it.
    """
    if ended_by is not None:
        # We killed a hung process: our crash loop. Stale data and a slow
        # start are the network's (a worker stuck in I/O that keeps pinging).
        return CountedFailure(ended_by) if ended_by.startswith(LIVENESS_TIMEOUT) else Retry(ended_by)
    reason = reason or (f"exited with code {code}" if code is not None else "not started")
    if code is None:
        return Retry(reason)          # EAGAIN / ENOMEM on spawn: passes with time
    if code == EX_CONFIG:
        # A refused upgrade of a URL that worked before is more likely the
        # exchange misbehaving than our config turning bad.
        if ran_before and reason.startswith(UPGRADE_REJECTED):
            return CountedFailure(reason)
        return Fatal(reason)
    if code == EX_TEMPFAIL and not reason.startswith(WORKER_CRASHED):
        return Retry(reason)
    # Exit 0 we did not ask for, a traceback (1), a signal we did not send.
    return CountedFailure(reason)


# --- verdicts ----------------------------------------------------------------

def is_stale(idle: Any, ready_for: float, stale_after: float) -> bool:
    """Has a READY worker gone ``stale_after`` seconds without data?

    ``idle`` is the worker's seconds since its last data message, or None when
    none came yet; then the time since READY counts, because a subscription
    that is acknowledged but never delivers (a stream on the wrong route) is
    exactly the failure this catches. ``stale_after`` <= 0 disables it.
    """
    if stale_after <= 0:
        return False
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or math.isnan(idle):
        idle = ready_for
    return idle > stale_after


# --- bookkeeping ---------------------------------------------------------------

class Role(enum.Enum):
    ACTIVE = "active"        # the stream's worker
    SUCCESSOR = "successor"  # rotation candidate; becomes active once it streams
    RETIRING = "retiring"    # TERM sent; its exit changes nothing


@dataclass
class _Worker:
    instance: int
    stream: str
    role: Role
    spawned_at: float
    last_live: float
    ready_at: float | None = None
    shutdown_notice: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    term_reason: str | None = None
    term_at: float | None = None
    killed: bool = False
    rotate_early: float = 0.0    # how much sooner than max_age this worker rotates
    version: int = 0             # its stream's config version when it was spawned

    @property
    def terminating(self) -> bool:
        return self.term_at is not None


@dataclass
class _StreamRecord:
    config: Stream
    backoff: Backoff
    rotation_backoff: Backoff
    state: State = State.EXITED
    state_reason: str = "not started"
    active: _Worker | None = None
    successor: _Worker | None = None
    retry_at: float | None = None          # BACKOFF: when to try the next spawn
    running_since: float | None = None     # READY time of the active worker
    restart_times: deque[float] = field(default_factory=deque)
    starts: int = 0                        # active spawns; all but the first are restarts
    rotations: int = 0
    last_reason: str = ""
    last_stats: dict[str, Any] = field(default_factory=dict)
    manual_restart: bool = False           # respawn at once when the active worker exits
    ever_ready: bool = False               # a worker of this stream was READY in this parent's life
    # Rotation of the current active worker; reset whenever the active worker changes.
    rotate_retry_at: float | None = None
    rotation_blocked: bool = False
    # Bumped by ``reconfigure``: an active worker of an older version is
    # rotated (make-before-break) to one spawned with the new config.
    version: int = 0
    removed: str = ""                      # ``remove_stream``'s reason: goes away once its workers exit

    @property
    def name(self) -> str:
        return self.config.name

    def change_state(self, new: State, reason: str) -> StateChanged:
        """The one place a stream changes state."""
        check_transition(self.state, new)
        event = StateChanged(self.name, self.state, new, reason)
        self.state = new
        self.state_reason = reason
        return event


# --- the policy ----------------------------------------------------------------

class Policy:
    """Restart decisions for every configured stream; see the module docstring."""

    def __init__(self, streams: Sequence[Stream], restart: Restart, rng: random.Random) -> None:
        self._restart = restart
        self._rng = rng
        self._budget = ConnectBudget(restart.connect_budget, restart.budget_window)
        self._streams: dict[str, _StreamRecord] = {}
        for stream in streams:
            if stream.name in self._streams:
                raise ValueError(f"duplicate stream name {stream.name!r}")
            self._streams[stream.name] = _StreamRecord(
                config=stream,
                backoff=self._new_backoff(rng),
                rotation_backoff=self._new_backoff(rng),
            )
        self._workers: dict[int, _Worker] = {}  # live workers only
        self._next_instance = 1
        self._started = False
        self._stopping = False
        self._exit_sent = False

    def _new_backoff(self, rng: random.Random) -> Backoff:
        r = self._restart
        return Backoff(r.backoff_initial, r.backoff_max, r.stable_after, rng)

    # --- events -----------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Spawn every stream (as far as the connect budget allows)."""
        out: list[Action] = []
        if self._started or self._stopping:
            return out
        self._started = True
        for rec in self._streams.values():
            self._start_active(rec, "start", now, out)
        return out

    def on_ready(self, instance: int, now: float) -> list[Action]:
        out: list[Action] = []
        worker = self._workers.get(instance)
        if worker is not None and worker.ready_at is None:
            self._mark_ready(worker, now, out)
        return out

    def on_streaming(self, instance: int, now: float) -> list[Action]:
        out: list[Action] = []
        worker = self._workers.get(instance)
        if worker is None:
            return out
        rec = self._streams[worker.stream]
        if worker.ready_at is None:  # STREAMING implies subscribed
            self._mark_ready(worker, now, out)
        elif worker.role is Role.ACTIVE and rec.state is State.STARTING and not worker.terminating:
            # A promoted successor that was READY already: serving from now on.
            rec.running_since = now
            out.append(rec.change_state(State.RUNNING, "streaming"))
        if worker.role is Role.SUCCESSOR and not self._stopping:
            self._hand_over(rec, worker, now, out)
        return out

    def on_liveness(self, instance: int, stats: Mapping[str, Any], now: float) -> list[Action]:
        out: list[Action] = []
        worker = self._workers.get(instance)
        if worker is None:
            return out
        worker.last_live = now
        if isinstance(stats, Mapping):
            worker.stats = dict(stats)
        rec = self._streams[worker.stream]
        if worker.role is Role.ACTIVE:
            rec.last_stats = worker.stats
        if worker.terminating or worker.ready_at is None or self._stopping:
            return out
        idle = worker.stats.get("idle")
        if is_stale(idle, now - worker.ready_at, rec.config.connection.stale_after):
            self._fail_worker(rec, worker, f"stale: no data for {_seconds(idle, now - worker.ready_at)}", now, out)
        return out

    def on_notice(self, instance: int, event: str, now: float) -> list[Action]:
        """``serverShutdown`` on the active worker starts a rotation."""
        out: list[Action] = []
        worker = self._workers.get(instance)
        if worker is None or event != SERVER_SHUTDOWN:
            return out
        worker.shutdown_notice = True
        if worker.role is Role.ACTIVE:
            self._maybe_rotate(self._streams[worker.stream], now, out)
        return out

    def on_exit(self, instance: int, code: int | None, reason: str, fatal: bool, now: float) -> list[Action]:
        """A worker process ended. ``code`` 78 (EX_CONFIG) counts as fatal."""
        out: list[Action] = []
        worker = self._workers.pop(instance, None)
        if worker is None:
            return out
        rec = self._streams[worker.stream]
        verdict = classify_exit(code, reason, fatal, ran_before=rec.ever_ready, ended_by=worker.term_reason)
        if worker.role is Role.SUCCESSOR:
            self._successor_failed(rec, worker, verdict.reason, isinstance(verdict, Fatal), now)
        elif worker.role is Role.ACTIVE:
            self._active_exited(rec, verdict, now, out)
        self._finish_removal(rec, out)
        self._check_exit(out)
        return out

    def request_restart(self, stream: str, now: float) -> list[Action]:
        """The operator's restart: no backoff, not a failure, clears FATAL."""
        rec = self._streams.get(stream)
        if rec is None or rec.removed:
            raise UnknownStream(stream)
        out: list[Action] = []
        if self._stopping or not self._started:
            return out
        # The operator asks for a fresh start: forget the crash history.
        rec.backoff.reset()
        rec.restart_times.clear()
        if rec.active is not None:
            if not rec.manual_restart:
                out.append(Restarted(rec.name, RESTART_REQUESTED))
            rec.manual_restart = True
            if rec.successor is not None:
                self._retire(rec, rec.successor, RESTART_REQUESTED, now, out)
            self._terminate(rec, rec.active, RESTART_REQUESTED, now, out)
        elif rec.state is State.FATAL:
            out.append(Restarted(rec.name, RESTART_REQUESTED))
            self._start_active(rec, RESTART_REQUESTED, now, out)
        elif rec.state is State.BACKOFF:
            # Counted when the stream entered BACKOFF; this only skips the wait.
            self._start_active(rec, RESTART_REQUESTED, now, out)
        return out

    def request_stop(self, now: float) -> list[Action]:
        """Shutdown: TERM every worker, KILL the stragglers, then Exit(0)."""
        out: list[Action] = []
        if self._stopping:
            return out
        self._stopping = True
        for rec in self._streams.values():
            rec.retry_at = None
            rec.manual_restart = False
            if rec.successor is not None:
                self._retire(rec, rec.successor, "shutdown", now, out)
            for worker in self._workers_of(rec):
                self._terminate(rec, worker, "shutdown", now, out)
            if rec.active is None and rec.state is not State.EXITED:
                out.append(rec.change_state(State.EXITED, "shutdown"))
        self._check_exit(out)
        return out

    # --- streams added, changed and removed while running (symbols = "*") ----

    def add_stream(self, stream: Stream, now: float) -> list[Action]:
        """A new stream (a new connection of a whole-market stream): started
        now if the others are, budget permitting."""
        rec = self._streams.get(stream.name)
        if rec is not None:
            if not rec.removed:
                raise ValueError(f"duplicate stream name {stream.name!r}")
            # Removed, its worker still stopping, and wanted again: keep it;
            # the stopping worker's exit restarts it with the new config.
            rec.removed = ""
            return self.reconfigure(stream, now)
        rec = _StreamRecord(config=stream, backoff=self._new_backoff(self._rng),
                            rotation_backoff=self._new_backoff(self._rng))
        self._streams[stream.name] = rec
        out: list[Action] = []
        if self._started and not self._stopping:
            self._start_active(rec, "added", now, out)
        return out

    def reconfigure(self, stream: Stream, now: float) -> list[Action]:
        """New config (symbols) for a stream: its running worker is rotated,
        make before break, to one spawned with it; a worker not running yet
        is rotated once it is. Every other stream is left alone. The caller
        must spawn with the new config from now on."""
        rec = self._streams.get(stream.name)
        if rec is None or rec.removed:
            raise UnknownStream(stream.name)
        rec.config = stream
        rec.version += 1
        rec.rotation_blocked = False     # a new config: a fatal rotation may pass now
        rec.rotate_retry_at = None
        out: list[Action] = []
        self._maybe_rotate(rec, now, out)
        return out

    def remove_stream(self, stream: str, reason: str, now: float) -> list[Action]:
        """Stop a stream for good (every symbol of a connection delisted):
        TERM its workers, forget it once they exited."""
        rec = self._streams.get(stream)
        if rec is None or rec.removed:
            raise UnknownStream(stream)
        rec.removed = reason
        rec.retry_at = None
        rec.manual_restart = False
        out: list[Action] = []
        if rec.successor is not None:
            self._retire(rec, rec.successor, reason, now, out)
        for worker in self._workers_of(rec):
            self._terminate(rec, worker, reason, now, out)
        if rec.active is None and rec.state in (State.BACKOFF, State.FATAL):
            # No active worker to wait for (a retiring one may still exit).
            out.append(rec.change_state(State.EXITED, reason))
        self._finish_removal(rec, out)
        return out

    def _finish_removal(self, rec: _StreamRecord, out: list[Action]) -> None:
        if not rec.removed or rec.active is not None or self._workers_of(rec):
            return
        if rec.state is not State.EXITED:
            out.append(rec.change_state(State.EXITED, rec.removed))
        del self._streams[rec.name]

    def tick(self, now: float) -> list[Action]:
        """Enforce timeouts, end backoffs, start due rotations."""
        out: list[Action] = []
        for worker in list(self._workers.values()):
            self._check_worker(worker, now, out)
        if not self._stopping and self._started:
            due = [r for r in self._streams.values() if r.state is State.BACKOFF and r.retry_at <= now]
            # Longest waiting first, so one stream cannot starve the others of budget.
            for rec in sorted(due, key=lambda r: r.retry_at):
                self._start_active(rec, "backoff elapsed", now, out)
            for rec in self._streams.values():
                self._maybe_rotate(rec, now, out)
        self._check_exit(out)
        return out

    def next_deadline(self) -> float | None:
        """The latest time at which ``tick`` must run next (None: nothing pending)."""
        deadlines = [d for d in map(self._worker_deadline, self._workers.values()) if d is not None]
        if not self._stopping:
            for rec in self._streams.values():
                if rec.state is State.BACKOFF and rec.retry_at is not None:
                    deadlines.append(rec.retry_at)
                rotate_at = self._rotation_due_at(rec)
                if rotate_at is not None:
                    deadlines.append(rotate_at)
        return min(deadlines, default=None)

    def connect_attempts(self, now: float) -> list[float]:
        """Spawns that still count against the connection budget."""
        return self._budget.taken(now)

    def restore_connect_attempts(self, times: list[float], now: float) -> None:
        """Count a previous parent's recent attempts (call before ``start``)."""
        self._budget.restore(times, now)

    def status(self, now: float) -> list[dict[str, Any]]:
        """One dict per stream, in config order, for ``feedsup status``."""
        remaining = self._budget.remaining(now)
        return [self._stream_status(rec, remaining, now) for rec in self._streams.values()]

    # --- helpers: spawning --------------------------------------------------

    def _spawn(self, rec: _StreamRecord, role: Role, reason: str, now: float, out: list[Action]) -> _Worker | None:
        """The only place a Spawn is made, so every spawn takes a budget token."""
        if self._stopping or not self._budget.try_take(now):
            return None
        # last_live in the future: the spawn allowance before the first ping.
        worker = _Worker(self._next_instance, rec.name, role, spawned_at=now, last_live=now + SPAWN_ALLOWANCE_S,
                         rotate_early=self._rng.uniform(0.0, MAX_AGE_SPREAD * rec.config.connection.max_age),
                         version=rec.version)
        self._next_instance += 1
        self._workers[worker.instance] = worker
        out.append(Spawn(rec.name, worker.instance, reason))
        return worker

    def _start_active(self, rec: _StreamRecord, reason: str, now: float, out: list[Action]) -> None:
        worker = self._spawn(rec, Role.ACTIVE, "restart" if rec.starts else "start", now, out)
        if worker is None:
            self._enter_backoff(rec, self._budget.next_free(now), BUDGET_EXHAUSTED, out)
            return
        rec.starts += 1
        self._set_active(rec, worker)
        rec.retry_at = None
        out.append(rec.change_state(State.STARTING, reason))

    def _enter_backoff(self, rec: _StreamRecord, retry_at: float, reason: str, out: list[Action]) -> None:
        rec.retry_at = retry_at
        if rec.state is not State.BACKOFF or rec.state_reason != reason:
            out.append(rec.change_state(State.BACKOFF, reason))

    def _set_active(self, rec: _StreamRecord, worker: _Worker) -> None:
        worker.role = Role.ACTIVE
        rec.active = worker
        rec.last_stats = worker.stats
        rec.running_since = worker.ready_at
        rec.rotate_retry_at = None
        rec.rotation_blocked = False
        rec.rotation_backoff.reset()

    def _mark_ready(self, worker: _Worker, now: float, out: list[Action]) -> None:
        worker.ready_at = now
        worker.last_live = now
        rec = self._streams[worker.stream]
        rec.ever_ready = True
        if worker.role is Role.ACTIVE and rec.state is State.STARTING and not worker.terminating:
            rec.running_since = now
            out.append(rec.change_state(State.RUNNING, "ready"))
            # A serverShutdown may have come before READY.
            self._maybe_rotate(rec, now, out)

    # --- helpers: ending workers --------------------------------------------

    def _terminate(self, rec: _StreamRecord, worker: _Worker, reason: str, now: float, out: list[Action]) -> None:
        """Send TERM once; KILL follows from tick() after stop_timeout."""
        if worker.terminating:
            return
        worker.term_reason = reason
        worker.term_at = now
        out.append(Terminate(worker.instance, reason))
        if worker.role is Role.ACTIVE and rec.state in (State.STARTING, State.RUNNING):
            out.append(rec.change_state(State.STOPPING, reason))

    def _retire(self, rec: _StreamRecord, worker: _Worker, reason: str, now: float, out: list[Action]) -> None:
        if rec.successor is worker:
            rec.successor = None
        worker.role = Role.RETIRING
        self._terminate(rec, worker, reason, now, out)

    def _fail_worker(self, rec: _StreamRecord, worker: _Worker, reason: str, now: float, out: list[Action]) -> None:
        """A live worker failed a check (start timeout, stale): TERM it."""
        if worker.role is Role.SUCCESSOR:
            self._retire(rec, worker, reason, now, out)
            self._successor_failed(rec, worker, reason, False, now)
        else:
            self._terminate(rec, worker, reason, now, out)

    def _successor_failed(self, rec: _StreamRecord, worker: _Worker, cause: str, fatal: bool, now: float) -> None:
        """Keep the old worker; try the rotation again later."""
        if rec.successor is worker:
            rec.successor = None
        if self._stopping or rec.manual_restart:
            return
        rec.last_reason = f"rotation failed: {cause}"
        if fatal:
            # Retrying cannot fix it; the active worker keeps serving until it ends.
            rec.rotation_blocked = True
        else:
            rec.rotate_retry_at = now + rec.rotation_backoff.next_delay()

    def _active_exited(self, rec: _StreamRecord, verdict: Verdict, now: float, out: list[Action],
                       at_once: bool = False) -> None:
        """The active worker is gone (exited, or killed as hung): what next.

        ``at_once``: replace it without a backoff delay (a hung process).
        """
        cause = verdict.reason
        ran_for = None if rec.running_since is None else now - rec.running_since
        rec.active = None
        rec.running_since = None
        rec.last_reason = cause
        if self._stopping:
            out.append(rec.change_state(State.EXITED, "shutdown"))
        elif rec.removed:
            out.append(rec.change_state(State.EXITED, rec.removed))
        elif rec.manual_restart:
            rec.manual_restart = False
            self._start_active(rec, RESTART_REQUESTED, now, out)
        elif rec.successor is not None:
            self._promote_successor(rec, cause, out)
        elif isinstance(verdict, Fatal):
            self._go_fatal(rec, cause, out)
        else:
            self._schedule_restart(rec, verdict, ran_for, now, out, at_once)

    def _schedule_restart(self, rec: _StreamRecord, verdict: Verdict, ran_for: float | None, now: float,
                          out: list[Action], at_once: bool) -> None:
        """Restart after a failure: with a full-jitter delay (or at once),
        or FATAL once counted failures exceed the restart intensity."""
        cause = verdict.reason
        rec.backoff.reset_if_stable(ran_for)
        if isinstance(verdict, CountedFailure):
            window = self._restart.period
            rec.restart_times.append(now)
            while rec.restart_times and rec.restart_times[0] <= now - window:
                rec.restart_times.popleft()
            if len(rec.restart_times) > self._restart.intensity:
                self._go_fatal(rec, f"restart intensity exceeded ({len(rec.restart_times)} restarts "
                                    f"in {window:g}s): {cause}", out)
                return
        out.append(Restarted(rec.name, cause))
        if at_once:
            self._start_active(rec, cause, now, out)
        else:
            self._enter_backoff(rec, now + rec.backoff.next_delay(), cause, out)

    def _go_fatal(self, rec: _StreamRecord, reason: str, out: list[Action]) -> None:
        rec.last_reason = reason
        rec.retry_at = None
        out.append(Restarted(rec.name, "fatal"))
        out.append(rec.change_state(State.FATAL, reason))

    # --- helpers: rotation ----------------------------------------------------

    def _rotation_due_at(self, rec: _StreamRecord) -> float | None:
        active = rec.active
        if (
            self._stopping
            or rec.state is not State.RUNNING
            or active is None
            or active.ready_at is None
            or active.terminating
            or rec.successor is not None
            or rec.rotation_blocked
        ):
            return None
        if active.shutdown_notice or active.version < rec.version:
            due = active.ready_at
        else:
            due = active.ready_at + rec.config.connection.max_age - active.rotate_early
        if rec.rotate_retry_at is not None:
            due = max(due, rec.rotate_retry_at)
        return due

    def _maybe_rotate(self, rec: _StreamRecord, now: float, out: list[Action]) -> None:
        """Make before break: spawn the successor; the old worker keeps serving."""
        due = self._rotation_due_at(rec)
        if due is None or due > now:
            return
        why = (SERVER_SHUTDOWN if rec.active.shutdown_notice
               else RECONFIGURED if rec.active.version < rec.version else "max_age")
        successor = self._spawn(rec, Role.SUCCESSOR, f"rotation ({why})", now, out)
        if successor is None:
            rec.rotate_retry_at = self._budget.next_free(now)
        else:
            rec.successor = successor

    def _hand_over(self, rec: _StreamRecord, successor: _Worker, now: float, out: list[Action]) -> None:
        """The successor streams: it becomes active, the old worker retires."""
        old = rec.active
        rec.successor = None
        rec.rotations += 1
        self._set_active(rec, successor)
        if old is not None:
            out.append(Restarted(rec.name, ROTATED))
            self._retire(rec, old, ROTATED, now, out)
        if rec.state is not State.RUNNING:  # the old worker was being stopped
            out.append(rec.change_state(State.RUNNING, "rotated"))

    def _promote_successor(self, rec: _StreamRecord, cause: str, out: list[Action]) -> None:
        """The old worker died first: the successor simply becomes active."""
        successor = rec.successor
        rec.successor = None
        self._set_active(rec, successor)
        reason = f"successor took over ({cause})"
        rec.last_reason = reason
        out.append(Restarted(rec.name, reason))
        # A successor is never streaming here (streaming hands over at once),
        # so it serves nobody yet: STARTING until it streams.
        if rec.state is not State.STARTING:
            out.append(rec.change_state(State.STARTING, reason))

    # --- helpers: time ----------------------------------------------------------

    def _check_worker(self, worker: _Worker, now: float, out: list[Action]) -> None:
        deadline = self._worker_deadline(worker)
        if deadline is None or now < deadline:
            return
        rec = self._streams[worker.stream]
        if worker.terminating:
            worker.killed = True
            grace = self._restart.stop_timeout
            out.append(Kill(worker.instance, f"still alive {grace:g}s after TERM ({worker.term_reason})"))
        elif now >= worker.last_live + rec.config.connection.liveness_timeout:
            self._replace_hung(rec, worker, now, out)
        else:
            self._fail_worker(rec, worker, START_TIMEOUT, now, out)

    def _replace_hung(self, rec: _StreamRecord, worker: _Worker, now: float, out: list[Action]) -> None:
        """No liveness ping: the process is hung (a stopped process cannot
        even handle TERM). KILL it now and start the replacement now."""
        worker.term_reason = LIVENESS_TIMEOUT
        worker.term_at = now
        worker.killed = True
        out.append(Kill(worker.instance, LIVENESS_TIMEOUT))
        role = worker.role
        worker.role = Role.RETIRING   # its exit changes nothing any more
        if role is Role.SUCCESSOR:
            self._successor_failed(rec, worker, LIVENESS_TIMEOUT, False, now)
        elif role is Role.ACTIVE:
            self._active_exited(rec, CountedFailure(LIVENESS_TIMEOUT), now, out, at_once=True)

    def _worker_deadline(self, worker: _Worker) -> float | None:
        if worker.terminating:
            return None if worker.killed else worker.term_at + self._restart.stop_timeout
        conn = self._streams[worker.stream].config.connection
        # Liveness pings start with the process, before it connects: a
        # STARTING worker is judged by them too.
        deadline = worker.last_live + conn.liveness_timeout
        if worker.ready_at is None:
            deadline = min(deadline, worker.spawned_at + START_TIMEOUT_STEPS * conn.connect_timeout)
        return deadline

    def _check_exit(self, out: list[Action]) -> None:
        if self._exit_sent or self._workers:
            return
        if self._stopping:
            self._exit_sent = True
            out.append(Exit(0, "all workers stopped"))
        elif self._streams and all(r.state is State.FATAL for r in self._streams.values()):
            self._exit_sent = True
            reasons = "; ".join(f"{r.name}: {r.last_reason}" for r in self._streams.values())
            out.append(Exit(1, f"every stream is FATAL: {reasons}"))

    # --- helpers: status ----------------------------------------------------------

    def _workers_of(self, rec: _StreamRecord) -> list[_Worker]:
        return [w for w in self._workers.values() if w.stream == rec.name]

    def _stream_status(self, rec: _StreamRecord, budget_remaining: int, now: float) -> dict[str, Any]:
        running = rec.state is State.RUNNING and rec.running_since is not None
        return {
            "name": rec.name,
            "state": rec.state.name,
            "state_reason": rec.state_reason,
            "instance": rec.active.instance if rec.active else None,
            "successor": rec.successor.instance if rec.successor else None,
            "uptime": now - rec.running_since if running else None,
            "restarts": max(0, rec.starts - 1),
            "rotations": rec.rotations,
            "last_reason": rec.last_reason,
            "stats": dict(rec.last_stats),
            "backoff_until": rec.retry_at if rec.state is State.BACKOFF else None,
            "budget_remaining": budget_remaining,
        }


def _seconds(idle: Any, fallback: float) -> str:
    value = idle if isinstance(idle, (int, float)) and not isinstance(idle, bool) else fallback
    return f"{value:.1f}s"
