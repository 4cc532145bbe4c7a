"""A JetStream cluster on loopback for the NATS tests: one way to start it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from feedsup.sinks.cluster import NatsCluster, server_binary


@contextmanager
def running_cluster(nodes: int) -> Iterator[NatsCluster]:
    """``nodes`` nats-server processes with JetStream, ready, always stopped
    at the end (even when start-up fails half-way); skips the test without
    the installed server binary."""
    try:
        server_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cluster = NatsCluster(nodes)
    try:
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.close()
