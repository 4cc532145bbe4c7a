"""The I/O around the fd guard (feedsup/supervisor/fdwatch.py) on loopback
sockets, and its fields in metrics and the status table."""

from __future__ import annotations

import socket

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from feedsup.cli import format_status
from feedsup.supervisor.fdguard import QUIET_WINDOW_S, marks, quiet_rate
from feedsup.supervisor.fdwatch import FdWatch, count_open_fds, status_of, tcp_address
from feedsup.supervisor.metrics import Metrics
from harness import wait_for


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def xpub():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    ipc = ctx.socket(zmq.ROUTER)    # not tcp: never watched nor closed
    ipc.setsockopt(zmq.LINGER, 0)
    ipc.bind("inproc://fdwatch-test-ctl")
    watches: list[FdWatch] = []
    clients: list[socket.socket] = []
    try:
        yield ctx, pub, ipc, port, watches, clients
    finally:
        for c in clients:
            c.close()
        for w in watches:
            w.close()
        pub.close(0)
        ipc.close(0)
        ctx.term()


def test_a_flood_closes_the_tcp_endpoint_and_the_calm_reopens_it(xpub):
    ctx, pub, ipc, port, watches, clients = xpub
    base = count_open_fds()
    # A limit whose high mark is 20 descriptors above what is open now
    # (each loopback connection costs this process two: ours and the client's).
    limit = next(n for n in range(64, 100_000) if marks(n, 1).high >= base + 20)
    watch = FdWatch(ctx, (pub, ipc), limit=limit)
    watches.append(watch)
    assert len(watch.monitors) == 1
    now = 1000.0
    for _ in range(30):
        if watch.guard.refusing:
            break
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        wait_for(lambda: watch.monitors[0].poll(0) or watch.guard.refusing, 5, "an accept event")
        watch.on_events(now, 1)
    assert watch.guard.refusing and watch.guard.closures == 1
    st = status_of(watch)
    assert st["tcp_closures"] == 1 and "file descriptors open" in st["tcp_refusing"]
    assert st["fds"]["limit"] == limit
    # The unbind closed the accepted connections: their descriptors come back.
    for c in clients:
        c.close()
    clients.clear()
    wait_for(lambda: count_open_fds() <= base + 3, 5, "the connections closed")
    # The sentinel takes the port once libzmq has let it go; what it
    # accepts, it closes at once and counts.
    wait_for(lambda: watch.tick(now, 1) or watch._sentinels[0].sock is not None, 5, "the sentinel listening")
    probe = socket.create_connection(("127.0.0.1", port), timeout=1)
    watch.tick(now + 0.5, 1)
    with pytest.raises(ConnectionResetError):      # reset by the sentinel: no TIME_WAIT left behind
        probe.recv(1)
    probe.close()
    assert watch.guard.refusing and watch.guard.refused == 1, "held for at least a second"
    # Attempts faster than the loop could follow keep the port closed
    # after the hold, until they slow down.
    for _ in range(int(quiet_rate(limit) * QUIET_WINDOW_S) + 20):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    watch.tick(now + 1.5, 1)
    assert watch.guard.refusing and watch.guard.refused > quiet_rate(limit)
    watch.tick(now + 1.5 + QUIET_WINDOW_S, 1)
    assert not watch.guard.refusing and status_of(watch)["tcp_refusing"] is None
    assert watch._sentinels[0].sock is None
    c = socket.create_connection(("127.0.0.1", port), timeout=1)    # libzmq's again: it greets
    clients.append(c)
    assert c.recv(1)


def test_a_failed_rebind_is_retried_after_another_hold(xpub):
    ctx, pub, ipc, port, watches, clients = xpub
    watch = FdWatch(ctx, (pub,), limit=10_000)
    watches.append(watch)
    watch.guard.decide(10_000, 10_000, 1, 0.0)     # as if flooded
    watch._refuse(0.0)
    wait_for(lambda: refused(port), 5, "the port closed")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        watch.tick(5.0, 1)
        assert watch.guard.refusing and "retrying" in watch.guard.reason
    finally:
        squatter.close()
    watch.tick(5.0 + watch.guard.hold + 1, 1)
    assert not watch.guard.refusing and watch.guard.closures == 1
    assert not refused(port)


def test_without_tcp_endpoints_nothing_is_monitored_or_closed(xpub):
    ctx, pub, ipc, port, watches, clients = xpub
    watch = FdWatch(ctx, (ipc,), limit=70)        # below feedsup's own needs
    watches.append(watch)
    watch.tick(0.0, 1)
    assert watch.monitors == [] and not watch.guard.refusing
    assert status_of(None) == {"fds": None, "tcp_refusing": None, "tcp_closures": 0, "tcp_refused": 0}


def samples(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_follow_the_status_fields():
    m = Metrics(0)
    m.update({"streams": [], "fds": {"open": 170, "limit": 256}, "tcp_closures": 2,
              "tcp_refusing": "170 of 256 file descriptors open"})
    s = samples(m)
    assert s["feedsup_tcp_refusing"] == 1 and s["feedsup_tcp_closures_total"] == 2
    assert s["feedsup_open_fds"] == 170 and s["feedsup_fd_limit"] == 256
    m.update({"streams": [], "fds": {"open": 20, "limit": 256}, "tcp_closures": 3, "tcp_refusing": None})
    s = samples(m)
    assert s["feedsup_tcp_refusing"] == 0 and s["feedsup_tcp_closures_total"] == 3 and s["feedsup_open_fds"] == 20


def test_status_table_says_why_tcp_connections_are_refused():
    reply = {"pid": 1, "uptime": 5, "published": 10, "suppressed": 0, "streams": [],
             "tcp_refusing": "170 of 256 file descriptors open; 98 are kept free for workers, control and metrics",
             "tcp_closures": 2, "tcp_refused": 900}
    line = ("tcp endpoints closed to new connections: 170 of 256 file descriptors open; 98 are kept free "
            "for workers, control and metrics (closed 2 times, 900 attempts refused)")
    assert line in format_status(reply).splitlines()
    assert "tcp endpoints" not in format_status({**reply, "tcp_refusing": None})


@pytest.mark.parametrize("endpoint, address", [
    ("tcp://127.0.0.1:7780", (socket.AF_INET, ("127.0.0.1", 7780))),
    ("tcp://0.0.0.0:7780", (socket.AF_INET, ("0.0.0.0", 7780))),
    ("tcp://[::1]:7780", (socket.AF_INET6, ("::1", 7780))),
    ("tcp://*:7780", (socket.AF_INET, ("", 7780))),
    ("tcp://eth0:7780", None),          # an interface name: no sentinel, the port is just closed
    ("tcp://127.0.0.1:*", None),
])
def test_sentinel_addresses(endpoint, address):
    assert tcp_address(endpoint) == address
