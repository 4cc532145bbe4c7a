"""A flood of TCP connections to PUB cannot kill a parent with a low hard fd limit.

With soft = hard = 256 the parent cannot raise its limit. A client opening
connections to the ``tcp://`` PUB endpoint as fast as it can used to take
every descriptor; the next ipc accept (a worker's uplink, a control request)
then made libzmq abort the whole process ("Too many open files"), and every
stream with it. Now the relay process holds the TCP endpoint (the parent
never listens on TCP): the relay stops accepting before its own limit, the
parent keeps serving workers and control over ipc with its descriptors
untouched, the status says why TCP is refused, and the relay accepts again
once the flood is gone.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from feedsup.ipc.client import request
from feedsup.procs import rss_mb, stop
from feedsup.supervisor.fdlimit import raise_fd_limit
from harness import REPO, Collector, tied, wait_for, write_config

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}
LIMIT = 256
MAX_OPEN = 1000     # the flood's own sockets, oldest closed past this

WITH_LIMIT = ("import os, resource, sys\n"
              "n = int(sys.argv[1])\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
              "os.execvp(sys.argv[2], sys.argv[2:])\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Flood(threading.Thread):
    """Opens non-blocking connections to a port as fast as it can, keeping
    at most MAX_OPEN of them (an attacker with its own fd budget)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopping = threading.Event()
        self.opened = 0
        self.refused = 0
        self._socks: collections.deque[socket.socket] = collections.deque()

    def run(self) -> None:
        while not self.stopping.is_set():
            for _ in range(50):
                s = socket.socket()
                s.setblocking(False)
                code = s.connect_ex(("127.0.0.1", self.port))
                if code in (0, errno.EINPROGRESS):
                    self.opened += 1
                    self._socks.append(s)
                else:
                    self.refused += 1
                    s.close()
                while len(self._socks) > MAX_OPEN:
                    self._socks.popleft().close()
            self.stopping.wait(0.005)     # pacing, so the 2 shared cores keep up
        while self._socks:
            self._socks.popleft().close()

    def close(self) -> None:
        self.stopping.set()
        if self.ident is not None:      # started
            self.join(5)


@pytest.fixture
def limited(start_sim, tmp_path):
    raise_fd_limit()    # the flood holds up to MAX_OPEN sockets in this process
    sim = start_sim(speed=1, symbols=("BTCUSDT",), trade_rate=20)
    pub = free_port()
    config = write_config(tmp_path, sim, [PRICE], feedsup={"pub": f"tcp://127.0.0.1:{pub}"})
    log = open(tmp_path / "feedsup.log", "wb")
    argv = [sys.executable, "-c", WITH_LIMIT, str(LIMIT),
            sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]
    proc = subprocess.Popen(tied(argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    floods: list[Flood] = []

    def flood() -> Flood:
        floods.append(Flood(pub))
        floods[-1].start()
        return floods[-1]
    try:
        yield proc, f"ipc://{tmp_path}/ctl", pub, flood
    finally:
        for f in floods:
            f.close()
        workers = [int(p) for p in _children(proc.pid)]
        stop(proc)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        print((tmp_path / "feedsup.log").read_text(errors="replace")[-4000:])


def _children(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def status(control: str) -> dict:
    return request(control, "status", timeout=2)


def stream_row(control: str) -> dict | None:
    try:
        return status(control)["streams"][0]
    except Exception:
        return None


def test_a_tcp_flood_with_a_low_hard_limit_leaves_the_parent_serving(limited):
    proc, control, pub, flood = limited
    first = wait_for(lambda: (lambda r: r if r and r["state"] == "RUNNING" and r["pid"] else None)(
        stream_row(control)), 20, "the stream RUNNING")
    col = Collector(f"tcp://127.0.0.1:{pub}", ("aggTrade.",))
    try:
        col.wait_count(5, 10)
        rss_before = rss_mb(proc.pid)
        pid = first["pid"]
        closed = 0
        for round in (1, 2):
            flooding = flood()
            # Either the parent runs out of descriptors (it used to, and the
            # next ipc accept, a control request, aborted it) or it closes
            # its TCP endpoint before that.
            wait_for(lambda: open_fds(proc.pid) >= LIMIT - 4 or proc.poll() is not None or (
                lambda r: r if r and r.get("tcp_closures", 0) > closed else None)(_ok(control)),
                20, "the flood to fill the parent or be refused")
            # A control request is an ipc accept in the parent.
            reply = wait_for(lambda: proc.poll() is not None or (lambda r: r if r and r["tcp_refusing"] else None)(
                _ok(control)), 10, "a status answer saying why tcp is refused")
            assert proc.poll() is None, "the parent died under the flood"
            assert reply["fds"]["limit"] == LIMIT and "file descriptors open" in reply["tcp_refusing"]
            # A new worker connects its uplink over ipc while the flood goes on.
            os.kill(pid, signal.SIGKILL)
            row = wait_for(lambda: proc.poll() is not None or (lambda r: r if r and r["state"] == "RUNNING" and
                                                               r["pid"] not in (None, pid) else None)(
                stream_row(control)), 30, "a new worker RUNNING")
            assert proc.poll() is None, "the parent died when a worker reconnected under the flood"
            pid = row["pid"]
            # The flood goes on: the port stays closed to it, and the
            # attempts are counted.
            wait_for(lambda: (_ok(control) or {}).get("tcp_refused", 0) >= 100 * round, 10, "refused attempts counted")
            wait_for(lambda: (_ok(control) or {}).get("tcp_refusing"), 10, "the endpoint still closed")
            assert open_fds(proc.pid) < LIMIT - 8, "the parent kept descriptors free"
            flooding.close()
            # The flood gone, the endpoint accepts again and the subscriber
            # (reconnecting by itself) gets frames from the new worker.
            closed = wait_for(lambda: (lambda r: r and r["tcp_refusing"] is None and r["tcp_closures"])(_ok(control)),
                              30, "TCP accepted again")
            col.wait_more(30, more=5)
            print(f"flood {round}: {flooding.opened} connections attempted")
        final = status(control)
        assert final["streams"][0]["state"] == "RUNNING"
        assert final["tcp_closures"] >= 2 and final["tcp_refused"] >= 200
        assert proc.poll() is None
        print(f"parent RSS {rss_before:.1f} -> {rss_mb(proc.pid):.1f} MB")
        assert rss_mb(proc.pid) - rss_before < 50, "a flood must not grow the parent's memory"
    finally:
        col.close()


def _ok(control: str) -> dict | None:
    try:
        return status(control)
    except Exception:
        return None
