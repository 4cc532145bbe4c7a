"""Fixtures for simulator tests: in-process servers and real clients on loopback."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import websocket

from feedsup.sim import SimServer


@pytest.fixture
def make_sim(start_sim: Callable[..., SimServer]) -> Callable[..., SimServer]:
    """Start simulators with option overrides; all are stopped at teardown
    (the suite-wide ``start_sim`` in tests/conftest.py)."""
    return start_sim


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
