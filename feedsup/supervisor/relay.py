"""The relay: the one process that listens on TCP (issue 10).

libzmq (4.3.5) tolerates EMFILE on a TCP accept but aborts the whole process
(``errno_assert`` in ``ipc_listener.cpp``) when an ipc accept meets it; a
failed connect, ipc or tcp, is retried. A parent that accepted TCP
connections could therefore be killed by a flood of them: once they used
its descriptors, the next worker uplink or control request accepted over
ipc aborted it, and every stream with it. Closing the TCP endpoints near
the limit (``fdguard``) narrowed that to a race the loop could lose on a
CPU-starved host, since libzmq's I/O thread accepts on its own.

So the parent never listens on TCP. When ``pub`` or ``control`` is a
``tcp://`` endpoint, the parent binds a private ipc endpoint in its run
folder instead, and this process binds the TCP one and forwards:

    consumers --tcp--> [XPUB relay XSUB] --ipc--> [XPUB parent]
    clients   --tcp--> [ROUTER relay DEALER] --ipc--> [ROUTER parent]

The relay only *connects* over ipc (graceful on EMFILE) and *accepts* only
TCP (tolerated), so no flood can abort either process. The fd guard moved
here with the TCP sockets: near its own limit the relay closes its TCP
endpoints (dropping what they accepted) and holds the ports with a
sentinel until the flood slows, which keeps libzmq's I/O thread from
spinning on a listener it cannot accept from and lets real subscribers in
as soon as the flood ends, not once the flood's idle connections time out.

CURVE, when configured, is served here on the TCP sockets (the ipc hop is a
0600 socket in the parent's private folder). What the parent shows in its
status (refusals, the fd guard's state) the relay writes as one JSON line on
its stdout whenever it changes; its first line says whether it could bind.

``Relay`` (the parent's side) starts it, reads those lines, restarts it
with backoff when it exits and kills it with the parent. A relay crash
loses only the TCP subscribers' frames in flight: they see a seq gap, as
after any PUB drop, and reconnect by themselves.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from feedsup import curve, logs
from feedsup.supervisor import fdwatch
from feedsup.supervisor.backoff import Backoff

log = logging.getLogger("feedsup.relay")

# Messages forwarded per socket per wake-up, so one direction cannot starve another.
BATCH = 2000
POLL_MS = 100
FLUSH_MS = 1000
QUIET_MS = 200      # at a stop: the upstream sent nothing this long, so all is passed on
REPORT_PERIOD_S = 0.5
# A report goes out at least this often, changed or not: the parent's proof
# that the relay's loop runs. Silent for HUNG_AFTER_S: the parent kills it.
HEARTBEAT_S = 2.0
HUNG_AFTER_S = 10.0
EXIT_UNAVAILABLE = 69
EXIT_ORPHAN = 70
# The parent's side.
READY_TIMEOUT_S = 15.0     # how long the parent waits for the first relay's bind
RESTART_INITIAL_S = 0.1
RESTART_MAX_S = 5.0
STABLE_AFTER_S = 10.0
STOP_GRACE_S = 2.0
# A SIGTERM that did not come from the parent (supervisord's stopasgroup, a
# group kill) reaches the relay with the parent, which then still flushes its
# last frames for up to its PUB linger: relay them until the parent is gone,
# at most this long. The parent's own stop request is EOF on the relay's stdin.
TERM_GRACE_S = 5.0
MAX_LINE = 64 << 10
# The relay's DEALER identity at the parent's control ROUTER: requests from it
# carry the client's envelope, which the reply must carry back.
RELAY_ID = b"feedsup-relay"
# What a report counts: totals since the relay started.
COUNTS = ("curve_refused", "tcp_closures", "tcp_refused")


@dataclass(frozen=True)
class RelaySpec:
    parent_pid: int
    pub: str | None             # the tcp:// endpoint to serve, or None
    pub_upstream: str           # the parent's private ipc XPUB
    control: str | None
    control_upstream: str
    pub_hwm: int
    handshake_ms: int
    max_message: int
    curve_key_file: str = ""
    curve_allowed: tuple[str, ...] = ()
    log_format: str = "logfmt"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RelaySpec:
        raw = json.loads(text)
        raw["curve_allowed"] = tuple(raw.get("curve_allowed") or ())
        return cls(**raw)


# --- the relay process ----------------------------------------------------------------

class _Stopping:
    """Set by SIGTERM/SIGINT; the handler only sets the flag."""
    flag = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.flag = True


def _listener(ctx: zmq.Context, kind: int, spec: RelaySpec, keys: tuple[bytes, bytes] | None) -> zmq.Socket:
    """A socket facing the network, set up as the parent's used to be."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    # A peer that never completes the handshake (an idle connection, a port
    # scanner) is dropped after this; dead peers are found by keepalive.
    sock.setsockopt(zmq.HANDSHAKE_IVL, spec.handshake_ms)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
    sock.setsockopt(zmq.MAXMSGSIZE, spec.max_message)    # subscriptions and requests are small
    if keys is not None:
        curve.serve(sock, *keys)
    return sock


def _upstream(ctx: zmq.Context, kind: int, endpoint: str, hwm: int | None = None) -> zmq.Socket:
    sock = ctx.socket(kind)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    return _connected(sock, endpoint)


def _connected(sock: zmq.Socket, endpoint: str) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)      # a connect: libzmq retries it, even on EMFILE
    return sock


def _forward(src: zmq.Socket, dst: zmq.Socket) -> None:
    # The hot path of every TCP subscriber: frames are small, so copying
    # them is cheaper than zmq.Frame objects; bounded per wake-up.
    recv, send = src.recv_multipart, dst.send_multipart
    noblock = zmq.NOBLOCK
    for _ in range(BATCH):
        try:
            msg = recv(noblock)
        except zmq.Again:
            return
        try:
            send(msg, noblock)
        except zmq.ZMQError:
            pass        # no peer, or its queue full: dropped, as PUB and ROUTER drop


def _drain_upstream(xsub: zmq.Socket, xpub: zmq.Socket, deadline: float) -> None:
    while time.monotonic() < deadline and xsub.poll(QUIET_MS):
        _forward(xsub, xpub)


class _PubProxy:
    """XSUB <-> XPUB in libzmq's own proxy, on a thread: C, no GIL, no Python
    per frame (a loop here cost 6.5 us of CPU a frame and capped a tcp
    consumer at a quarter of an ipc one's rate). While the fd guard closes
    or opens the XPUB's endpoint the proxy is stopped, so only one thread
    ever uses the sockets (the join is the memory barrier ZeroMQ asks for);
    frames wait in the XSUB's queue meanwhile. The steering socket is made
    once: a new socket needs a descriptor, and libzmq aborts when it meets
    EMFILE making one, which near the limit is just when the guard acts."""

    def __init__(self, ctx: zmq.Context, xsub: zmq.Socket, xpub: zmq.Socket) -> None:
        self.xsub, self.xpub = xsub, xpub
        address = f"inproc://feedsup-relay-steer-{id(self)}"
        self._steer = ctx.socket(zmq.PAIR)
        self._steer.setsockopt(zmq.LINGER, 0)
        self._steer.bind(address)
        self._steered = ctx.socket(zmq.PAIR)
        self._steered.setsockopt(zmq.LINGER, 0)
        self._steered.connect(address)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="feedsup-relay-pub", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, self._steered)
        except zmq.ZMQError:
            pass        # the context is going away

    def stop(self) -> None:
        if self._thread is None:
            return
        self._steer.send(b"TERMINATE")
        self._thread.join()
        self._thread = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        running = self._thread is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    def close(self) -> None:
        self.stop()
        self._steer.close(linger=0)
        self._steered.close(linger=0)


class _Reporter:
    """Writes the status line when it changed; never blocks on the pipe."""

    def __init__(self) -> None:
        self.last = ""
        self.due = 0.0
        self._beat = 0.0
        try:
            os.set_blocking(1, False)
        except OSError:
            pass

    def send(self, report: dict[str, Any], now: float, force: bool = False) -> None:
        if not force and now < self.due:
            return
        self.due = now + REPORT_PERIOD_S
        line = json.dumps(report, separators=(",", ":"))
        if line == self.last and not force and now < self._beat:
            return
        self._beat = now + HEARTBEAT_S
        try:
            os.write(1, (line + "\n").encode())
            self.last = line
        except BlockingIOError:
            pass        # the parent is not reading (stopped): the next line carries it all
        except OSError:
            pass


def _curve(ctx: zmq.Context, spec: RelaySpec) -> tuple[Any, curve.Gatekeeper | None, tuple[bytes, bytes] | None]:
    if not spec.curve_key_file:
        return None, None, None
    from feedsup.config import read_regular_file

    public, secret = curve.parse_certificate(
        read_regular_file(spec.curve_key_file, curve.MAX_CERT_BYTES, private=True), spec.curve_key_file)
    if secret is None:
        raise curve.CurveKeyError(f"{spec.curve_key_file}: holds no secret-key")
    auth, gate = curve.start_authenticator(ctx, spec.curve_allowed)
    return auth, gate, (public, secret)


def run(spec: RelaySpec) -> int:
    stopping = _Stopping()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    reporter = _Reporter()
    ctx = zmq.Context()
    auth = None
    socks: list[zmq.Socket] = []
    try:
        auth, gate, keys = _curve(ctx, spec)
        pairs: list[tuple[zmq.Socket, zmq.Socket]] = []
        outside: list[zmq.Socket] = []
        proxy: _PubProxy | None = None
        if spec.pub:
            xpub = _listener(ctx, zmq.XPUB, spec, keys)
            xpub.setsockopt(zmq.SNDHWM, spec.pub_hwm)
            # Every subscription goes up, duplicates too: catch_up's one-off
            # hello must reach the parent's XPUB, which answers "hello".
            xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
            xsub = _upstream(ctx, zmq.XSUB, spec.pub_upstream, spec.pub_hwm)
            socks += [xpub, xsub]
            outside.append(xpub)
            xpub.bind(spec.pub)
            proxy = _PubProxy(ctx, xsub, xpub)
        if spec.control:
            router = _listener(ctx, zmq.ROUTER, spec, keys)
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.ROUTING_ID, RELAY_ID)
            dealer = _connected(dealer, spec.control_upstream)
            socks += [router, dealer]
            pairs += [(router, dealer), (dealer, router)]
            outside.append(router)
            router.bind(spec.control)
    except (zmq.ZMQError, OSError, ValueError) as exc:
        reporter.send({"error": f"{exc}", "pub": spec.pub, "control": spec.control}, 0.0, force=True)
        if proxy is not None:
            proxy.close()
        _close_all(socks, auth, ctx)
        return EXIT_UNAVAILABLE
    try:
        watch: fdwatch.FdWatch | None = fdwatch.FdWatch(
            ctx, outside, exclusive=proxy.paused if proxy is not None else contextlib.nullcontext)
    except (zmq.ZMQError, OSError):
        watch = None        # unguarded, but serving
    if proxy is not None:
        proxy.start()
    poller = zmq.Poller()
    routes = {}
    for src, dst in pairs:
        poller.register(src, zmq.POLLIN)
        routes[src] = dst
    monitors = frozenset(watch.monitors if watch is not None else ())
    for mon in monitors:
        poller.register(mon, zmq.POLLIN)

    def report() -> dict[str, Any]:
        return {"bound": True, "curve_refused": gate.refused if gate is not None else None,
                **fdwatch.status_of(watch)}

    reporter.send(report(), 0.0, force=True)
    asked = sys.stdin.fileno()      # a pipe from the parent: EOF is its request to stop
    poller.register(asked, zmq.POLLIN)
    term_at: float | None = None
    code = 0
    try:
        while True:
            if os.getppid() != spec.parent_pid:     # PDEATHSIG's backstop
                code = 0 if stopping.flag else EXIT_ORPHAN
                break
            if stopping.flag:
                term_at = term_at if term_at is not None else time.monotonic()
                if time.monotonic() - term_at >= TERM_GRACE_S:
                    break
            ready = dict(poller.poll(POLL_MS))     # no socket: libzmq sleeps POLL_MS
            if asked in ready and not os.read(asked, 4096):
                stopping.flag = True
                break
            for src in ready:
                dst = routes.get(src)
                if dst is not None:
                    _forward(src, dst)
            now = time.monotonic()
            if watch is not None:
                if monitors and not monitors.isdisjoint(ready):
                    watch.on_events(now, 0)
                watch.tick(now, 0)
            if now >= reporter.due:
                reporter.send(report(), now)
    finally:
        if proxy is not None:
            proxy.close()
        if watch is not None:
            watch.close()
        if spec.pub:
            # A stop follows the parent's PUB flush (or its end): pass on
            # what it sent, until the upstream has been quiet a moment (its
            # last bytes may still be on their way in from the socket).
            _drain_upstream(socks[1], socks[0], time.monotonic() + FLUSH_MS / 1000)
            socks[0].close(linger=FLUSH_MS)
        _close_all(socks, auth, ctx)
    return code


def _close_all(socks: list[zmq.Socket], auth: Any, ctx: zmq.Context) -> None:
    for sock in socks:
        sock.close(linger=0)
    if auth is not None:
        auth.stop()
    ctx.destroy(linger=0)


def main(argv: list[str]) -> int:
    spec = RelaySpec.from_json(argv[0])
    from feedsup.procs import die_with_parent

    die_with_parent(spec.parent_pid)
    logs.setup(spec.log_format)
    return run(spec)


# --- the parent's side -------------------------------------------------------------------

def relay_env(secret_names: Collection[str]) -> dict[str, str]:
    """Ours without any credential: the relay signs nothing."""
    return {k: v for k, v in os.environ.items() if k not in secret_names}


class Relay:
    """The parent's handle on its relay: start, read its reports, restart it
    with backoff when it exits, stop it. ``now`` comes from the caller."""

    def __init__(self, spec: RelaySpec, secret_names: Collection[str] = (),
                 rng: random.Random | None = None) -> None:
        self.spec = spec
        self._env = relay_env(secret_names)
        self.proc: subprocess.Popen | None = None
        self.state = "STOPPED"
        self.restarts = 0
        self.last_exit: str | None = None
        self.report: dict[str, Any] = {}
        # Counts of relays that exited, so the totals survive a restart.
        self._carried = dict.fromkeys(COUNTS, 0)
        self._buf = b""
        self._started_at = 0.0
        self._heard_at = 0.0
        self._restart_at: float | None = None
        self._backoff = Backoff(RESTART_INITIAL_S, RESTART_MAX_S, STABLE_AFTER_S, rng or random.Random())

    def start(self, now: float) -> None:
        self._buf = b""
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "feedsup.supervisor.relay", self.spec.to_json()],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                         env=self._env)
        except (OSError, subprocess.SubprocessError) as exc:     # EAGAIN, ENOMEM: try again later
            self.proc = None
            self._exited(f"start failed: {exc}", now)
            return
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.state = "STARTING"
        self._started_at = self._heard_at = now
        self._restart_at = None
        logs.event(log, "relay start", pid=self.proc.pid, pub=self.spec.pub, control=self.spec.control)

    def wait_ready(self, timeout: float) -> str | None:
        """At start-up: block until the relay bound its endpoints; the reason
        if it could not (None: bound)."""
        deadline = time.monotonic() + timeout
        while self.state == "STARTING":
            self.poll(time.monotonic(), restart=False)
            if self.state == "STARTING":
                if time.monotonic() >= deadline:
                    return f"the relay did not bind within {timeout:g} s"
                _wait_readable(self.proc, deadline)
        if self.state == "RUNNING":
            return None
        return str(self.report.get("error") or self.last_exit or "the relay exited")

    def poll(self, now: float, restart: bool = True) -> None:
        """Read what the relay wrote; notice its exit; restart it when due."""
        if self.proc is not None:
            if self._read():
                self._heard_at = now
            elif now - self._heard_at > HUNG_AFTER_S and self.proc.returncode is None:
                # Stopped or stuck: not serving, and not exiting by itself.
                logs.event(log, "relay hung", logging.WARNING, pid=self.proc.pid,
                           silent_s=f"{now - self._heard_at:.1f}")
                self.proc.kill()
                self.proc.wait()
            code = self.proc.poll()
            if code is not None:
                self._read()
                from feedsup.supervisor.spawn import describe_exit
                why = self.report.get("error") or describe_exit(code)
                self.proc.stdout.close()
                _close_quietly(self.proc.stdin)
                self.proc = None
                self._exited(str(why), now)
        if restart and self.proc is None and self._restart_at is not None and now >= self._restart_at:
            self.restarts += 1
            self.start(now)

    def total(self, key: str) -> int:
        """A count over every relay this parent ran (``COUNTS``)."""
        value = self.report.get(key)
        return self._carried[key] + (value if type(value) is int else 0)

    def _exited(self, why: str, now: float) -> None:
        for key in COUNTS:
            self._carried[key] = self.total(key)
        self.report = {}
        ran = now - self._started_at if self.state == "RUNNING" else None
        self._backoff.reset_if_stable(ran)
        self.state = "BACKOFF"
        self.last_exit = why
        delay = self._backoff.next_delay()
        self._restart_at = now + delay
        logs.event(log, "relay exited", logging.WARNING, reason=why, restart_in=f"{delay:.2f}s",
                   restarts=self.restarts)

    def _read(self) -> bool:
        """Take the relay's reports; whether it wrote anything."""
        try:
            chunk = os.read(self.proc.stdout.fileno(), MAX_LINE)
        except OSError:     # EAGAIN: nothing new
            return False
        if not chunk:
            return False
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            self._buf = b""
        for line in lines:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if isinstance(report, dict):
                self.report = report
                if report.get("bound") and self.state == "STARTING":
                    self.state = "RUNNING"
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        self.state = "STOPPED"
        if proc is None:
            return
        _close_quietly(proc.stdin)     # EOF: the relay passes on the last frames, then exits
        if proc.poll() is None:
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()

    def status(self) -> dict[str, Any]:
        fds = self.report.get("fds")
        return {"state": self.state, "pid": self.proc.pid if self.proc is not None else None,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "endpoints": [e for e in (self.spec.pub, self.spec.control) if e],
                "fds": fds if isinstance(fds, dict) else None}


def _close_quietly(pipe: Any) -> None:
    """Close our end of the relay's stdin; a relay already gone is fine."""
    try:
        if pipe is not None:
            pipe.close()
    except OSError:     # EPIPE: nothing was waiting to be written
        pass


def _wait_readable(proc: subprocess.Popen | None, deadline: float) -> None:
    import select

    if proc is None:
        return
    try:
        select.select([proc.stdout.fileno()], [], [], max(0.0, min(0.1, deadline - time.monotonic())))
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except OSError as exc:      # never a traceback for a closed pipe or the like
        sys.exit(EXIT_UNAVAILABLE if exc.errno != errno.EPIPE else 0)
