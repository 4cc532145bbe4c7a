"""The relay process and the parent's handle on it (feedsup/supervisor/relay.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import msgpack
import zmq
from hypothesis import given, settings, strategies as st
from prometheus_client import generate_latest

from feedsup.cli import format_status
from feedsup.procs import alive, tied, wait_for
from feedsup.supervisor.metrics import Metrics
from feedsup.supervisor.relay import COUNTS, MAX_LINE, RELAY_ID, Relay, RelaySpec
from harness import REPO


def spec_for(tmp_path, pub: str | None, control: str | None = None, parent: int | None = None) -> RelaySpec:
    return RelaySpec(parent_pid=parent or os.getpid(), pub=pub, pub_upstream=f"ipc://{tmp_path}/pub-relay",
                     control=control, control_upstream=f"ipc://{tmp_path}/ctl-relay", pub_hwm=1000,
                     handshake_ms=5000, max_message=1 << 20)


def test_the_spec_survives_its_json():
    spec = RelaySpec(1, "tcp://127.0.0.1:1", "ipc:///x/p", None, "ipc:///x/c", 10, 20, 30, "k", ("a", "b"), "json")
    assert RelaySpec.from_json(spec.to_json()) == spec


def test_a_taken_port_is_reported_with_the_reason(tmp_path):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    relay = Relay(spec_for(tmp_path, f"tcp://127.0.0.1:{port}"))
    try:
        relay.start(time.monotonic())
        problem = relay.wait_ready(15)
        assert problem is not None and "in use" in problem.lower(), problem
        assert relay.state == "BACKOFF" and relay.status()["pid"] is None
    finally:
        relay.stop()
        squatter.close()


def test_pub_and_control_are_forwarded_and_a_dead_relay_is_restarted(tmp_path):
    ctx = zmq.Context()
    up_pub, up_ctl = ctx.socket(zmq.XPUB), ctx.socket(zmq.ROUTER)
    up_pub.bind(f"ipc://{tmp_path}/pub-relay")
    up_ctl.bind(f"ipc://{tmp_path}/ctl-relay")
    with socket.socket() as s1, socket.socket() as s2:
        s1.bind(("127.0.0.1", 0))
        s2.bind(("127.0.0.1", 0))
        pub, ctl = f"tcp://127.0.0.1:{s1.getsockname()[1]}", f"tcp://127.0.0.1:{s2.getsockname()[1]}"
    relay = Relay(spec_for(tmp_path, pub, ctl))
    sub, req = ctx.socket(zmq.SUB), ctx.socket(zmq.REQ)
    try:
        relay.start(time.monotonic())
        assert relay.wait_ready(15) is None and relay.state == "RUNNING"
        sub.setsockopt(zmq.SUBSCRIBE, b"t.")
        sub.connect(pub)
        # The subscription reaches the parent's XPUB through the relay.
        assert up_pub.poll(10_000) and up_pub.recv() == b"\x01t."
        up_pub.send_multipart([b"t.x", b"body"])
        assert sub.poll(10_000) and sub.recv_multipart() == [b"t.x", b"body"]
        # A REQ client over tcp: the parent sees [relay, client, "", body] and
        # answers the whole envelope back.
        req.connect(ctl)
        req.send(msgpack.packb({"cmd": "ping"}))
        assert up_ctl.poll(10_000)
        parts = up_ctl.recv_multipart()
        assert parts[0] == RELAY_ID and len(parts) == 4 and parts[2] == b""
        up_ctl.send_multipart(parts[:3] + [b"pong"])
        assert req.poll(10_000) and req.recv() == b"pong"
        # Killed: noticed, restarted after a backoff, serving again.
        first = relay.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: (relay.poll(time.monotonic()), relay.state == "RUNNING" and relay.proc.pid != first)[1],
                 15, "the relay restarted")
        assert relay.restarts == 1 and "SIGKILL" in relay.last_exit
    finally:
        relay.stop()
        for sock in (sub, req, up_pub, up_ctl):
            sock.close(linger=0)
        ctx.term()
    assert relay.state == "STOPPED"


def test_the_relay_dies_with_its_parent(tmp_path):
    # A stand-in parent: starts a relay, says its pid, then waits to be SIGKILLed.
    script = ("import os, sys, time\n"
              "from feedsup.supervisor.relay import Relay, RelaySpec\n"
              "relay = Relay(RelaySpec(os.getpid(), sys.argv[1], sys.argv[2] + '/p', None, sys.argv[2] + '/c',"
              " 1000, 5000, 1 << 20))\n"
              "relay.start(time.monotonic())\n"
              "print(relay.proc.pid, relay.wait_ready(15), flush=True)\n"
              "sys.stdin.read()\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        pub = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    stand_in = subprocess.Popen(tied([sys.executable, "-c", script, pub, f"ipc://{tmp_path}"]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    relay_pid = None
    try:
        pid, problem = stand_in.stdout.readline().split()
        relay_pid = int(pid)
        assert problem == "None" and alive(relay_pid)
        stand_in.kill()
        stand_in.wait()
        wait_for(lambda: not alive(relay_pid), 10, "the relay gone with its parent")
    finally:
        stand_in.kill()
        stand_in.wait()
        if relay_pid is not None and alive(relay_pid):
            os.kill(relay_pid, signal.SIGKILL)


def test_the_relay_in_metrics_and_the_status_table():
    m = Metrics(0)
    status = {"streams": [], "relay": {"state": "BACKOFF", "pid": None, "restarts": 2, "last_exit": "killed by SIGKILL",
                                       "endpoints": ["tcp://127.0.0.1:1"], "fds": {"open": 40, "limit": 256}}}
    m.update(status)
    text = generate_latest(m.registry).decode()
    assert "feedsup_relay_up 0.0" in text and "feedsup_relay_restarts_total 2.0" in text
    assert "feedsup_relay_open_fds 40.0" in text
    m.update({**status, "relay": {**status["relay"], "state": "RUNNING", "restarts": 3}})
    text = generate_latest(m.registry).decode()
    assert "feedsup_relay_up 1.0" in text and "feedsup_relay_restarts_total 3.0" in text
    assert "relay (tcp endpoints) BACKOFF: killed by SIGKILL (restarted 2 times)" in format_status(status)
    assert "relay" not in format_status({**status, "relay": {**status["relay"], "state": "RUNNING"}})


def test_counts_add_up_over_relay_restarts(tmp_path):
    relay = Relay(spec_for(tmp_path, "tcp://127.0.0.1:1"))
    relay.report = {"bound": True, "curve_refused": 3, "tcp_refused": 5, "tcp_closures": 1}
    relay._exited("killed by SIGKILL", 10.0)
    assert relay.state == "BACKOFF" and relay.total("tcp_refused") == 5 and relay.total("curve_refused") == 3
    relay.report = {"bound": True, "curve_refused": None, "tcp_refused": 2, "tcp_closures": 0}
    assert (relay.total("tcp_refused"), relay.total("tcp_closures"), relay.total("curve_refused")) == (7, 1, 3)


def test_a_silent_relay_is_killed_and_restarted(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        pub = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    relay = Relay(spec_for(tmp_path, pub))
    try:
        t0 = time.monotonic()
        relay.start(t0)
        assert relay.wait_ready(15) is None
        first = relay.proc.pid
        os.kill(first, signal.SIGSTOP)      # stuck: neither serving nor exiting
        relay.poll(t0 + 5)                  # within HUNG_AFTER_S of its last report: left alone
        assert relay.state == "RUNNING" and relay.proc.pid == first
        relay.poll(t0 + 60)                 # silent far too long (a fake clock)
        assert relay.state == "BACKOFF" and "SIGKILL" in relay.last_exit and not alive(first)
        relay.poll(t0 + 120)                # the backoff elapsed: a new relay
        assert relay.restarts == 1 and relay.proc is not None and relay.proc.pid != first
        assert relay.wait_ready(15) is None
    finally:
        relay.stop()


class _PipeProc:
    """What ``Relay._read`` needs of the relay's process: its stdout pipe."""

    pid = 0

    def __init__(self) -> None:
        r, self.w = os.pipe()
        os.set_blocking(r, False)
        self.stdout = os.fdopen(r, "rb")


@settings(deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=4096),
                          st.builds(lambda d: (json.dumps(d) + "\n").encode(),
                                    st.dictionaries(st.sampled_from(["bound", "curve_refused", "tcp_closures",
                                                                     "tcp_refused", "fds", "error", "x"]),
                                                    st.one_of(st.none(), st.booleans(), st.integers(),
                                                              st.text(max_size=50), st.lists(st.integers()))))),
                max_size=30))
def test_whatever_the_relay_writes_the_parent_reads_it_within_bounds(chunks):
    """The relay's report lines are a boundary: bytes of any shape, split
    anywhere, never raise in the parent, never grow its buffer past
    MAX_LINE, and leave ``report`` a dict whose counts add up as ints."""
    relay = Relay(spec_for("/tmp", "tcp://127.0.0.1:1"))
    proc = _PipeProc()
    relay.proc = proc
    try:
        for chunk in chunks:
            if chunk:
                os.write(proc.w, chunk[:60_000])
            relay._read()
            assert len(relay._buf) <= MAX_LINE
            assert isinstance(relay.report, dict)
            for key in COUNTS:
                assert type(relay.total(key)) is int
            relay.status()
    finally:
        os.close(proc.w)
        proc.stdout.close()
