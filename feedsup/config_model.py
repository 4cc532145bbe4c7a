"""The config's data model: frozen dataclasses, what a loaded config file is.

The loader (``feedsup/config.py``) builds them from TOML and checks every
key; workers receive them in their launch spec (``feedsup/ipc/spec.py``) and
never import the loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feedsup import endpoints
from feedsup.binance import streams

MARKETS = ("spot", "usdm")
# The market-data channels, and the account stream (user data) on either market.
CHANNELS = streams.MARKET_CHANNELS + ("account",)
CHANNELS_BY_MARKET = {market: channels | {"account"} for market, channels in streams.CHANNELS_BY_MARKET.items()}


class ConfigError(Exception):
    """A config problem a retry cannot fix: names the file, the key and why."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Connection:
    """Connection parameters; ``[connection]`` sets them for every stream."""

    ping_interval: float = 20.0     # client ping period (native WebSocket ping)
    ping_timeout: float = 10.0      # pong must arrive within this after a ping
    stale_after: float = 10.0       # no data for this long = stale; 0 disables
    liveness_interval: float = 1.0  # worker -> parent liveness ping period
    liveness_timeout: float = 5.0   # no liveness for this long = hung worker
    connect_timeout: float = 10.0   # TCP+TLS+upgrade must finish within this
    max_age: float = 23 * 3600.0    # planned make-before-break rotation age
    max_frame: int = 4 << 20        # bytes: a bigger exchange frame ends the connection
    # Messages a worker queues towards the parent. A message holds up to a
    # batch of records, so this rides out a parent busy for about 2 s at full
    # rate and holds a backfill's burst; beyond it frames drop, announced as gaps.
    uplink_hwm: int = 10_000
    # usdm account streams: listenKey keepalive (PUT) period. Binance keeps a
    # key 60 min after its last keepalive and suggests one every 30 min.
    listen_key_keepalive: float = 1800.0


@dataclass(frozen=True)
class Restart:
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    intensity: int = 10             # restarts allowed ...
    period: float = 60.0            # ... within this many seconds, then FATAL
    connect_budget: int = 250       # connection attempts per budget_window, all streams
    budget_window: float = 300.0
    stable_after: float = 30.0      # a worker running this long resets its backoff
    stop_timeout: float = 3.0       # TERM -> KILL grace


@dataclass(frozen=True)
class Endpoint:
    """Where one Binance market lives."""

    ws_url: str
    rest_url: str
    ws_api_url: str = ""            # spot WebSocket API (user data); empty for usdm


SPOT_DEFAULT = Endpoint(**streams.DEFAULT_URLS["spot"])
USDM_DEFAULT = Endpoint(**streams.DEFAULT_URLS["usdm"])


@dataclass(frozen=True)
class Stream:
    name: str
    market: str                      # spot | usdm
    channel: str                     # one of CHANNELS
    symbols: tuple[str, ...] = ()    # upper case, as Binance lists them
    intervals: tuple[str, ...] = ()  # kline only
    depth_levels: int = 10           # depth only: top-N levels published
    topic_prefix: str = ""           # prepended to every topic, e.g. "usdm."
    connection: Connection = field(default_factory=Connection)
    # account only: names of env vars holding the secrets, or a key file.
    api_key_env: str = ""
    api_secret_env: str = ""
    key_file: str = ""
    # account only: PEM Ed25519 private key signing instead of an HMAC secret.
    ed25519_key_file: str = ""
    # The worker's CPU priority below the parent's (Unix nice, 0-19): a bulk
    # stream yields the CPU to latency-sensitive ones on a busy host.
    nice: int = 0


# ``metrics_port = "any"``: the parent binds a free port and reports it in
# status (``metrics_port``); tests and side-by-side instances need no port
# picked in advance, which another process could take first.
ANY_PORT = -1


@dataclass(frozen=True)
class Config:
    path: str
    # Default: ipc sockets in a private per-user folder (feedsup/endpoints.py).
    pub: str = field(default_factory=endpoints.default_pub)
    control: str = field(default_factory=endpoints.default_control)
    log_format: str = "logfmt"       # logfmt | json
    metrics_port: int = 0            # 0 = no Prometheus endpoint; ANY_PORT = a free port (see status)
    pub_hwm: int = 100_000
    # Where the parent keeps watermarks and connection attempts across its own
    # restarts; empty = nothing kept (a new parent starts from live data).
    state_file: str = ""
    # CURVE on pub and control (feedsup/curve.py): the server's certificate
    # with its secret key, and the Z85 public keys of the clients let in.
    curve_server_key_file: str = ""
    curve_allowed_clients: tuple[str, ...] = ()
    spot: Endpoint = SPOT_DEFAULT
    usdm: Endpoint = USDM_DEFAULT
    connection: Connection = field(default_factory=Connection)
    restart: Restart = field(default_factory=Restart)
    streams: tuple[Stream, ...] = ()
    instance: str = ""               # names this feedsup in sink frames (``source``); "" = host name
    sink: object = None              # feedsup.sinks.config.NatsSink, or None: no [sink.nats]
    shard: str = ""                  # "k/n": this host's part of every symbols = "*" stream
    universes: tuple = ()            # feedsup.universe.Wildcard: symbols = "*" streams, expanded at run
    universe_refresh: float = 300.0  # seconds between exchangeInfo re-reads for symbols = "*"; 0 = off

    def endpoint(self, market: str) -> Endpoint:
        return self.spot if market == "spot" else self.usdm
