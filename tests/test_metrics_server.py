"""The metrics HTTP server: bounded threads and fds, survives a full fd table."""

from __future__ import annotations

import errno
import socket
import threading
import urllib.request

import pytest

from feedsup.procs import wait_for
from feedsup.supervisor import metrics as m


def scrape_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(m._QuietHandler, "timeout", 0.5)
    metrics = m.Metrics(0)
    metrics.start()
    yield metrics
    metrics.stop()


def test_unfinished_requests_hold_at_most_a_few_threads(server):
    threads_before = threading.active_count()
    held = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")        # never finished
            held.append(s)
        wait_for(lambda: server._server.refused >= 100, 5, "excess connections refused")
        assert threading.active_count() <= threads_before + m.MAX_CONNECTIONS
        # The handlers time out and free their slots: scrapes work again.
        wait_for(lambda: scrape_ok(server.port), 5, "a scrape after the timeouts")
    finally:
        for s in held:
            s.close()


def test_a_failed_accept_does_not_stop_the_server(server, monkeypatch):
    """EMFILE on accept (a full fd table) costs one request, not the server."""
    accept = socket.socket.accept
    failed = []

    def emfile_three_times(sock):
        if len(failed) < 3:
            failed.append(sock.fileno())
            raise OSError(errno.EMFILE, "Too many open files")
        return accept(sock)
    monkeypatch.setattr(socket.socket, "accept", emfile_three_times)
    wait_for(lambda: scrape_ok(server.port), 10, "a scrape after failed accepts")
    assert len(failed) == 3
