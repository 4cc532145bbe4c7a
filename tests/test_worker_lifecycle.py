"""A real worker process and the signals it gets: TERM in bursts, TERM while
connecting, and its parent dying while the worker is blocked.

supervisord's ``stopasgroup`` and the parent both send TERM, and
PR_SET_PDEATHSIG adds a third: a worker must survive any burst of them and
exit promptly with code 0. A worker whose parent is gone must exit within a
bound whatever its threads are doing, including when no death signal came.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import zmq

from feedsup.config import Connection, Endpoint, Stream
from feedsup.ipc import frames
from feedsup.procs import alive, read_line, wait_for
from feedsup.ipc.spec import WorkerSpec
from harness import socket_inodes

# How long a worker may take to go once its parent is gone (the watchdog
# polls getppid every ORPHAN_POLL_S; the rest is slack for a loaded machine).
ORPHAN_BOUND_S = 3.0
STOP_BOUND_S = 3.0


def make_spec(tmp_path, ws_url: str, rest_url: str, parent_pid: int | None = None,
              connect_timeout: float = 30.0) -> WorkerSpec:
    conn = Connection(ping_interval=1.0, ping_timeout=0.5, stale_after=0, liveness_interval=0.2,
                      liveness_timeout=2.0, connect_timeout=connect_timeout)
    stream = Stream(name="w", market="spot", channel="aggTrade", symbols=("BTCUSDT",), connection=conn)
    return WorkerSpec(stream=stream, endpoint=Endpoint(ws_url=ws_url, rest_url=rest_url),
                      uplink=f"ipc://{tmp_path}/up", parent_pid=parent_pid or os.getpid(), instance=1,
                      rundir=str(tmp_path))


@pytest.fixture
def blackhole():
    """A TCP port that accepts connections (the kernel's backlog) and never
    answers: a connect or a request to it hangs until its timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class Uplink:
    """The parent's end: collects the worker's control messages."""

    def __init__(self, tmp_path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.bind(f"ipc://{tmp_path}/up")
        self.controls: list[tuple[str, dict]] = []

    def pump(self) -> list[tuple[str, dict]]:
        while self.sock.poll(0):
            raw = self.sock.recv()
            if raw[0] == frames.CONTROL:      # data records are not what these tests look at
                fields = frames.decode_control(raw)
                self.controls.append((fields["type"], fields))
        return self.controls

    def seen(self, kind: str) -> dict | None:
        return next((f for k, f in self.pump() if k == kind), None)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def uplink(tmp_path):
    up = Uplink(tmp_path)
    try:
        yield up
    finally:
        up.close()


@pytest.fixture
def workers():
    """Start ``python -m feedsup.workers``; every one is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(spec: WorkerSpec) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "feedsup.workers", spec.to_json()],
                                stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def exit_within(proc: subprocess.Popen, bound: float) -> int:
    try:
        code = proc.wait(bound)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker {proc.pid} still running {bound:g} s after the signal") from None
    return code if code is not None else -1


def test_a_burst_of_sigterms_ends_a_streaming_worker_promptly_with_code_0(start_sim, tmp_path, uplink, workers,
                                                                         timing):
    sim = start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=20)
    for _ in range(4):
        proc = workers(make_spec(tmp_path, sim.ws_url, sim.base_url))
        wait_for(lambda: uplink.seen(frames.Control.STREAMING), 15, "the worker to stream")
        t0 = time.monotonic()
        for _ in range(3000):          # TERM while the last TERM is still being handled
            os.kill(proc.pid, signal.SIGTERM)
        assert exit_within(proc, STOP_BOUND_S) == 0
        timing("3000 SIGTERMs at a streaming worker -> exit 0", time.monotonic() - t0)
        report = wait_for(lambda: uplink.seen(frames.Control.EXIT), 5, "the EXIT report")
        assert report["reason"] == "terminated"
        uplink.controls.clear()


def test_sigterm_while_connecting_ends_the_worker_promptly(start_sim, tmp_path, blackhole, uplink, workers, timing):
    """The upgrade never gets an answer; connect_timeout is 30 s. TERM must
    not wait for it."""
    sim = start_sim(speed=10, symbols=("BTCUSDT",))
    proc = workers(make_spec(tmp_path, f"ws://127.0.0.1:{blackhole}", sim.base_url))
    wait_for(lambda: uplink.seen(frames.Control.LIVE), 15, "the worker to start")
    # The symbol check is done and the worker is inside connect once the
    # listener has a connection queued; without accept() we cannot see it,
    # so wait for the worker's socket to the black hole instead.
    wait_for(lambda: _connected_to(proc.pid, blackhole), 15, "the worker to be connecting")
    t0 = time.monotonic()
    for _ in range(50):
        os.kill(proc.pid, signal.SIGTERM)
    assert exit_within(proc, STOP_BOUND_S) == 0
    timing("SIGTERM during a WebSocket upgrade that never answers -> exit 0", time.monotonic() - t0)


def _connected_to(pid: int, port: int) -> bool:
    inodes = socket_inodes(pid)
    if not inodes:
        return False
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            remote_port = int(parts[2].split(":")[1], 16)
            if remote_port == port and parts[9] in inodes and parts[3] == "01":   # ESTABLISHED
                return True
    return False


def test_the_signal_handler_only_records(tmp_path):
    """The handler runs on the main thread between any two bytecodes, also
    while that thread holds a lock: it must call nothing (no threading, no
    socket), only record the signal. Checked by profiling a direct call."""
    from feedsup.workers.runtime import Runtime

    # In this process, the "parent" the runtime watches is our own parent.
    spec = make_spec(tmp_path, "ws://127.0.0.1:9", "http://127.0.0.1:9", parent_pid=os.getppid())
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    old_fd = signal.set_wakeup_fd(-1)
    rt = Runtime(spec)
    try:
        rt.start()
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and signal.getsignal(signal.SIGINT) == handler
        calls: list[str] = []

        def profile(frame, event, arg):
            if event == "call":
                calls.append(frame.f_code.co_qualname)
            elif event == "c_call":
                calls.append(getattr(arg, "__qualname__", repr(arg)))

        sys.setprofile(profile)
        try:
            handler(signal.SIGTERM, None)
        finally:
            sys.setprofile(None)
        assert calls[1:-1] == [], f"the handler called {calls[1:-1]}"   # [handler itself, setprofile]
        assert rt.ending is None, "ending the connection is the watchdog's job, not the handler's"
    finally:
        rt.end("test over")
        rt._watching = False
        os.write(rt._wake_w, b"\0")
        rt._watchdog.join(5)
        rt._ticker.join(5)
        rt.ctx.destroy(linger=0)
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)


# -- orphans ------------------------------------------------------------------------

# An intermediate parent: starts the worker (its spec's parent is this
# process), prints the worker's pid, then waits to be killed. With
# "nodeathsig" the worker runs without PR_SET_PDEATHSIG, as if the death
# signal never came (only the getppid() watch can notice).
INTERMEDIATE = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
spec["parent_pid"] = os.getpid()
cmd = [sys.executable, "-m", "feedsup.workers", json.dumps(spec)]
if sys.argv[2] == "nodeathsig":
    cmd = [sys.executable, "-c", '''
import os, runpy, sys
import feedsup.procs as procs
def check_only(parent_pid):
    if os.getppid() != parent_pid:
        os._exit(procs.EXIT_ORPHAN)
procs.die_with_parent = check_only
sys.argv = ["feedsup.workers", sys.argv[1]]
runpy.run_module("feedsup.workers", run_name="__main__")
''', json.dumps(spec)]
worker = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
print(worker.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("deathsig", ["deathsig", "nodeathsig"])
def test_a_worker_blocked_in_rest_exits_soon_after_its_parent_dies(tmp_path, blackhole, deathsig, timing):
    """The worker hangs in its first REST call (the symbol check, 30 s
    timeout) when its parent is SIGKILLed."""
    spec = make_spec(tmp_path, f"ws://127.0.0.1:{blackhole}", f"http://127.0.0.1:{blackhole}")
    parent = subprocess.Popen([sys.executable, "-c", INTERMEDIATE, spec.to_json(), deathsig],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(read_line(parent, 15))
        wait_for(lambda: _connected_to(worker, blackhole), 15, "the worker to hang in REST")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        t0 = time.monotonic()
        wait_for(lambda: not alive(worker), ORPHAN_BOUND_S + 2, "the orphaned worker to exit")
        took = time.monotonic() - t0
        timing(f"orphaned worker blocked in REST ({deathsig}) -> gone", took)
        assert took < ORPHAN_BOUND_S
    finally:
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
