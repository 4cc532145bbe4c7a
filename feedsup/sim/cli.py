"""``feedsup sim``: run the simulator until SIGINT/SIGTERM.

The first stdout line is one JSON object with the bound URLs, so a parent
process (or a test) can read it and connect.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
import threading
from typing import Any

import click

from .options import SimOptions
from .scenario import ScenarioError, load_scenario
from .server import SimServer
from .signing import ApiKeys


def quiet_gc() -> None:
    """Keep the simulator's cyclic GC from pausing the market.

    The market keeps up to ``history`` events per symbol in memory. CPython's
    default thresholds then run full collections over that heap about once a
    second, for tens of milliseconds, and the events of each pause go out as
    one burst. Binance does not pause like that, and the bursts made feedsup's
    measured p99 latency reflect the simulator (3.8 ms against 0.5 ms with the
    GC off). Freezing the start-up objects and collecting rarely keeps the
    stream steady; this runs in the ``feedsup sim`` process only, never in a
    process that embeds ``SimServer``.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


@click.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, type=int, help="Port to bind; 0 = any free port.")
@click.option("--seed", default=1, show_default=True, type=int, help="Market seed: same seed, same trades.")
@click.option("--speed", default=1.0, show_default=True, type=float, help="Simulated seconds per wall second.")
@click.option("--symbols", default="BTCUSDT,ETHUSDT", show_default=True, help="Comma-separated symbols.")
@click.option("--scenario", type=click.Path(dir_okay=False), help="JSON or TOML file of scheduled faults.")
@click.option("--start-ms", type=int, help="Simulated time at start (ms since epoch).")
@click.option("--trade-rate", type=float, help="aggTrade events per simulated second per symbol.")
@click.option("--book-rate", type=float, help="Book-only updates per simulated second per symbol.")
@click.option("--tick", type=float,
              help="Engine period, wall seconds (default 0.01); events of one tick go out together.")
@click.option("--blast/--no-blast", default=None, help="trade/aggTrade streams send as fast as possible.")
@click.option("--blast-count", type=int, help="Events per blast stream (0 = unbounded).")
@click.option("--ping-interval", type=float, help="Spot server ping period, seconds.")
@click.option("--pong-timeout", type=float, help="Spot pong deadline, seconds.")
@click.option("--futures-ping-interval", type=float)
@click.option("--futures-pong-timeout", type=float)
@click.option("--max-lifetime", type=float, help="Connection lifetime, seconds.")
@click.option("--shutdown-lead", type=float, help="serverShutdown event -> close, seconds.")
@click.option("--msg-rate-limit", type=int, help="Incoming messages per second (spot).")
@click.option("--futures-msg-rate-limit", type=int)
@click.option("--max-streams", type=int)
@click.option("--conn-attempts", type=int, help="Connection attempts per IP per window.")
@click.option("--conn-attempts-window", type=float)
@click.option("--rest-weight-limit", type=int)
@click.option("--futures-rest-weight-limit", type=int)
@click.option("--api-key", help="API key accepted for signed requests.")
@click.option("--api-secret", help="Secret for HMAC-SHA256 signatures.")
@click.option("--ed25519-public-key", type=click.Path(dir_okay=False),
              help="PEM file of an Ed25519 public key: registers a second API key, of type Ed25519.")
@click.option("--ed25519-api-key", help="API key of that Ed25519 key [default: sim-ed25519-api-key].")
@click.option("-v", "--verbose", is_flag=True, help="Log faults and connections to stderr.")
def sim(symbols: str, scenario: str | None, verbose: bool, **knobs: Any) -> None:
    """Run a Binance-compatible exchange simulator on loopback."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        faults = load_scenario(scenario) if scenario else ()
    except ScenarioError as exc:
        raise click.UsageError(str(exc)) from None
    names = tuple(s.strip().upper() for s in symbols.split(",") if s.strip())
    if not names:
        raise click.UsageError("--symbols needs at least one symbol")
    knobs["ed25519_public_key"] = read_public_key(knobs.get("ed25519_public_key"))
    options = SimOptions().with_overrides(symbols=names, scenario=faults, **knobs)
    try:
        ApiKeys.from_options(options)
    except ValueError as exc:   # a key Binance would not register
        raise click.UsageError(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    quiet_gc()
    server = SimServer(options)
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {options.host}:{options.port}: {exc}") from None
    try:
        sys.stdout.write(json.dumps(server.urls()) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


def read_public_key(path: str | None) -> str | None:
    """The PEM text of ``--ed25519-public-key`` (None: not given)."""
    if path is None:
        return None
    try:
        with open(path, encoding="ascii") as f:
            return f.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"--ed25519-public-key {path}: cannot read: "
                               f"{getattr(exc, 'strerror', None) or 'not a PEM text file'}") from None


main = sim
