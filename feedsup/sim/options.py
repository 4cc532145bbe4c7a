"""Every knob of the simulator in one frozen dataclass.

Market timing (klines, tickers, depth windows) runs on the simulated clock;
protocol rules (pings, rate limits, lifetimes) run on the wall clock, because
they are what a client's own timers see.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# 2026-01-01T00:00:00Z: a fixed default so that a seed alone fixes the market.
DEFAULT_START_MS = 1_767_225_600_000


@dataclass(frozen=True)
class SimOptions:
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    speed: float = 1.0                   # simulated seconds per wall second
    start_ms: int = DEFAULT_START_MS     # simulated time at start()
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    trade_rate: float = 4.0              # aggTrade events per simulated second per symbol
    book_rate: float = 4.0               # book-only updates per simulated second per symbol
    book_levels: int = 200               # price levels per side
    history: int = 200_000               # trades kept per symbol for REST
    tick: float = 0.01                   # engine period, wall seconds
    # Protocol rules (wall seconds).
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    futures_ping_interval: float = 180.0
    futures_pong_timeout: float = 600.0
    max_lifetime: float = 24 * 3600.0
    shutdown_lead: float = 1.0           # serverShutdown event -> close
    msg_rate_limit: int = 5              # incoming messages per msg_rate_window
    futures_msg_rate_limit: int = 10
    msg_rate_window: float = 1.0
    max_streams: int = 1024
    futures_max_streams: int = 1024
    conn_attempts: int = 300             # per IP per conn_attempts_window
    conn_attempts_window: float = 300.0
    rest_weight_limit: int = 6000        # per IP per rest_weight_window
    futures_rest_weight_limit: int = 2400
    rest_weight_window: float = 60.0
    ban_after: int = 3                   # requests sent while told to back off -> 418
    ban_seconds: float = 120.0
    max_queue: int = 100_000             # queued messages before a slow client is cut
    # Benchmarks: trade/aggTrade streams send synthetic events as fast as possible.
    blast: bool = False
    blast_count: int = 0                 # 0 = unbounded
    # User data.
    api_key: str = "sim-api-key"
    api_secret: str = "sim-api-secret"
    # A second API key of type Ed25519 on the same account: its public key (PEM
    # text, "-----BEGIN PUBLIC KEY-----"); empty = none registered.
    ed25519_api_key: str = "sim-ed25519-api-key"
    ed25519_public_key: str = ""
    listen_key_validity: float = 3600.0  # simulated seconds
    recv_window_ms: int = 5000
    scenario: tuple[dict[str, Any], ...] = field(default=())

    def with_overrides(self, **changes: Any) -> "SimOptions":
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known and v is not None})
