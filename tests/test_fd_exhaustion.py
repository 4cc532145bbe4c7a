"""Idle connections cannot exhaust the parent's file descriptors.

Hundreds of idle TCP connections to PUB, or unfinished HTTP requests to the
metrics port, used to take every fd of a parent started with the usual soft
limit; the next ipc accept (a control request, a worker's uplink) then made
libzmq abort the process ("Too many open files"). The parent is started here
with a low soft limit, as supervisord or a shell may leave it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from feedsup.ipc.client import request
from feedsup.procs import rss_mb, stop
from feedsup.supervisor.fdlimit import raise_fd_limit
from harness import REPO, Collector, tied, wait_for, write_config

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}
SOFT_LIMIT = 256
IDLE = 400          # per target: more than the soft limit on its own

WITH_LIMIT = ("import os, resource, sys\n"
              "soft = int(sys.argv[1]); _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
              "os.execvp(sys.argv[2], sys.argv[2:])\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def limited(start_sim, tmp_path):
    raise_fd_limit()    # this test process holds 2 x IDLE sockets itself
    sim = start_sim(speed=1, symbols=("BTCUSDT",), trade_rate=20)
    pub, metrics = free_port(), free_port()
    config = write_config(tmp_path, sim, [PRICE], feedsup={"pub": f"tcp://127.0.0.1:{pub}",
                                                           "metrics_port": metrics})
    log = open(tmp_path / "feedsup.log", "wb")
    argv = [sys.executable, "-c", WITH_LIMIT, str(SOFT_LIMIT),
            sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]
    proc = subprocess.Popen(tied(argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    opened: list[socket.socket] = []
    try:
        yield proc, f"ipc://{tmp_path}/ctl", pub, metrics, opened
    finally:
        for s in opened:
            s.close()
        stop(proc)
        log.close()
        print((tmp_path / "feedsup.log").read_text()[-3000:])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return reply.status == 200 and b"feedsup_uptime_seconds" in reply.read()
    except OSError:
        return False


def running(control: str) -> bool:
    try:
        return request(control, "status", timeout=1)["streams"][0]["state"] == "RUNNING"
    except Exception:
        return False


def test_hundreds_of_idle_connections_leave_the_parent_publishing(limited):
    proc, control, pub, metrics, opened = limited
    wait_for(lambda: running(control), 20, "the stream RUNNING")
    col = Collector(f"tcp://127.0.0.1:{pub}", ("aggTrade.",))
    try:
        col.wait_count(5, 10)
        rss_before, fds_before = rss_mb(proc.pid), open_fds(proc.pid)
        for port, greeting in ((pub, b""), (metrics, b"GET /metrics HTTP/1.1\r\n")):
            for _ in range(IDLE):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                opened.append(s)
                if greeting:
                    s.sendall(greeting)      # and never finish the request
        # The parent has accepted them all by now (or refused the excess).
        status = wait_for(lambda: request(control, "status", timeout=2), 10, "a status answer")
        assert status["streams"][0]["state"] == "RUNNING"
        col.wait_more(10, more=20)
        assert proc.poll() is None, "the parent died"
        # A worker restart connects to the parent over ipc: that accept must work too.
        old = status["streams"][0]["pid"]
        request(control, "restart", stream="price")
        wait_for(lambda: (lambda r: r["state"] == "RUNNING" and r["pid"] not in (None, old))(
            request(control, "status", timeout=2)["streams"][0]), 20, "the restarted worker")
        col.wait_more(10, more=20)
        # The unfinished requests time out; scrapes are served again.
        wait_for(lambda: scrape_ok(metrics), 20, "a successful scrape")
        assert proc.poll() is None
        assert rss_mb(proc.pid) - rss_before < 100, "idle connections must not grow memory without bound"
        # Peers that never complete a handshake or a request are dropped.
        wait_for(lambda: open_fds(proc.pid) < fds_before + 50, 20, "idle connections closed by the parent")
    finally:
        col.close()
