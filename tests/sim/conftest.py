"""Fixtures for simulator tests: in-process servers and real clients on loopback."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import websocket

from feedsup.sim import SimOptions, SimServer


@pytest.fixture
def make_sim() -> Iterator[Callable[..., SimServer]]:
    """Start simulators with option overrides; all are stopped at teardown."""
    started: list[SimServer] = []

    def start(**overrides: Any) -> SimServer:
        server = SimServer(SimOptions(), **overrides)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def sim(make_sim: Callable[..., SimServer]) -> SimServer:
    """A fast simulator: one simulated minute per wall second."""
    return make_sim(speed=60.0, trade_rate=5.0, book_rate=5.0)


@pytest.fixture
def ws_factory() -> Iterator[Callable[..., websocket.WebSocket]]:
    """Open websocket-client connections; all are closed at teardown."""
    opened: list[websocket.WebSocket] = []

    def connect(url: str, timeout: float = 5.0, **kwargs: Any) -> websocket.WebSocket:
        ws = websocket.create_connection(url, timeout=timeout, **kwargs)
        opened.append(ws)
        return ws

    try:
        yield connect
    finally:
        for ws in opened:
            try:
                ws.close(timeout=0.2)
            except Exception:
                pass
