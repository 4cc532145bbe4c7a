"""One config file, one set of connection parameters.

The TOML file is parsed by small converters into frozen dataclasses. Every
error names the file, the key and the reason (``ConfigError``), and the CLI
turns it into exit code 78 (EX_CONFIG).
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

from feedsup import curve, endpoints
from feedsup.restlimit import loopback_host
from feedsup.binance.streams import INTERVALS_BY_MARKET, MAX_STREAMS_BY_MARKET
from feedsup.config_model import (
    ANY_PORT, CHANNELS, CHANNELS_BY_MARKET, MARKETS, SPOT_DEFAULT, USDM_DEFAULT, Config, ConfigError, Connection, Endpoint,
    Restart, Stream,
)
from feedsup.ipc.topics import stream_topics

# ---------------------------------------------------------------------------
# Loader: TOML -> the dataclasses of feedsup/config_model.py.
#
# Each value goes through a small converter that takes the raw TOML value and
# its location (``_At``) and either returns the typed value or raises
# ``ConfigError`` naming that exact key. Tables reject unknown keys before
# anything else, because a misspelt key otherwise surfaces as a confusing
# "missing" error further down.
# ---------------------------------------------------------------------------

T = TypeVar("T")

CONNECTION_KEYS = tuple(f.name for f in fields(Connection))


# Binance allows 300 connection attempts per 5 minutes per IP.
BINANCE_CONNECT_LIMIT = 300
BINANCE_CONNECT_WINDOW = 300.0
# A Binance connection is closed at 24 h; rotation must happen before.
BINANCE_MAX_CONNECTION_AGE = 24 * 3600.0
MAX_DEPTH_LEVELS = 1000  # largest snapshot limit both markets serve
# A config file is a few kB; the cap keeps /dev/zero or a huge file from
# eating memory, and bounds the work of every check below.
MAX_CONFIG_BYTES = 1 << 20

# Sane range of every number, (low, high) inclusive, by (section, key).
# Beyond them values are typos or units mix-ups (ms for s), and some break
# the runtime: a 1e-9 s liveness period floods the parent, a 1e300 s timeout
# overflows websocket-client, a pub_hwm >= 2^31 does not fit ZeroMQ's int.
# stale_after also takes 0 (off) and max_age stays below 24 h (checked apart).
BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("feedsup", "pub_hwm"): (1, 10_000_000),
    # exchangeInfo costs 20 weight on spot: every 5 s would be 4 % of the
    # IP's 6000 per minute; a day covers any listing schedule. 0 = off.
    ("feedsup", "universe_refresh"): (5.0, 86400.0),
    ("connection", "ping_interval"): (0.1, 3600.0),
    ("connection", "ping_timeout"): (0.1, 3600.0),
    ("connection", "stale_after"): (0.1, 86400.0),
    ("connection", "liveness_interval"): (0.05, 60.0),
    ("connection", "liveness_timeout"): (0.1, 3600.0),
    ("connection", "connect_timeout"): (0.1, 300.0),
    ("connection", "max_age"): (1.0, 86400.0),
    # Binance's largest messages (a full depth or ticker array) are a few
    # hundred KiB; the cap keeps a hostile frame from filling memory.
    ("connection", "max_frame"): (65536, 256 << 20),
    # A queued message holds up to a batch of records (uplink.MAX_BATCH): the
    # cap keeps a stalled parent from growing a worker past a few GB.
    ("connection", "uplink_hwm"): (1, 1_000_000),
    # A listenKey lapses 60 min after its last keepalive; the cap leaves ten
    # minutes of retries (every 60 s) after a failed one.
    ("connection", "listen_key_keepalive"): (0.1, 3000.0),
    ("restart", "backoff_initial"): (0.001, 3600.0),
    ("restart", "backoff_max"): (0.001, 86400.0),
    ("restart", "intensity"): (1, 100_000),
    ("restart", "period"): (0.1, 604800.0),
    ("restart", "connect_budget"): (1, 100_000),
    ("restart", "budget_window"): (1.0, 86400.0),
    ("restart", "stable_after"): (0.1, 86400.0),
    ("restart", "stop_timeout"): (0.1, 600.0),
}

_SYMBOL = {
    "spot": re.compile(r"[A-Z0-9]{2,20}"),
    # Quarterly contracts carry a delivery date: BTCUSDT_250627.
    "usdm": re.compile(r"[A-Z0-9]{2,20}(_[0-9]{6})?"),
}
# Stream names appear in logs (logfmt), topics of control replies and CLI
# arguments, so they stay simple.
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Unix socket paths (sun_path) hold 107 bytes plus the terminating NUL.
_MAX_IPC_PATH = 107

_TOP_KEYS = ("feedsup", "binance", "connection", "restart", "stream", "sink")
_FEEDSUP_KEYS = ("pub", "control", "log_format", "metrics_port", "pub_hwm", "state_file",
                 "curve_server_key_file", "curve_allowed_clients", "instance", "shard",
                 "universe_refresh")
_CREDENTIAL_KEYS = ("api_key_env", "api_secret_env", "key_file", "ed25519_key_file")
_STREAM_KEYS = (
    "name", "market", "channel", "symbols", "intervals", "depth_levels", "topic_prefix", "nice",
    *_CREDENTIAL_KEYS, *CONNECTION_KEYS,
)
LOG_FORMATS = ("logfmt", "json")
MAX_NICE = 19


@dataclass(frozen=True)
class _At:
    """Where a value lives: the file and its dotted key."""

    file: str
    key: str

    def dot(self, name: str) -> _At:
        part = name if _BARE_KEY.fullmatch(name) else f'"{name}"'
        return _At(self.file, f"{self.key}.{part}" if self.key else part)

    def index(self, i: int) -> _At:
        return _At(self.file, f"{self.key}[{i}]")

    def fail(self, reason: str) -> NoReturn:
        raise ConfigError(self.file, self.key, reason)


Converter = Callable[[object, _At], T]


class _Table:
    """One TOML table: typed access by key, unknown keys rejected up front."""

    def __init__(self, raw: object, at: _At, allowed: Iterable[str]) -> None:
        if not isinstance(raw, dict):
            at.fail(f"must be a table, got {_type_name(raw)}")
        self.raw: dict[str, object] = raw
        self.at = at
        allowed = tuple(allowed)
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                at.dot(key).fail(f"unknown key{hint}")

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, convert: Converter[T], default: T) -> T:
        if key not in self.raw:
            return default
        return convert(self.raw[key], self.at.dot(key))

    def require(self, key: str, convert: Converter[T]) -> T:
        if key not in self.raw:
            self.at.dot(key).fail("required")
        return convert(self.raw[key], self.at.dot(key))


# --- converters -------------------------------------------------------------

def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float",
             str: "a string", list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """A number as an error message shows it: huge integers by their size."""
    if isinstance(value, int) and not -10**18 < value < 10**18:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(value: object, at: _At) -> float:
    # bool is an int subclass in Python; `true` is never a valid duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        at.fail(f"must be a number, got {_type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        at.fail("must be a finite number")
    if isinstance(value, int) and not -2**53 <= value <= 2**53:
        return math.inf if value > 0 else -math.inf   # beyond any bound; float() would overflow
    return float(value)


def _signed(number: T, value: object, at: _At, zero: bool = False) -> T:
    """``number`` (``value`` converted) if it is above 0, or 0 when ``zero``."""
    if number < 0 or (number == 0 and not zero):
        at.fail(f"must be {'0 or greater' if zero else 'greater than 0'}, got {_show(value)}")
    return number


def _positive(value: object, at: _At) -> float:
    return _signed(_number(value, at), value, at)


def _non_negative(value: object, at: _At) -> float:
    return _signed(_number(value, at), value, at, zero=True)


def _within(number: float, value: object, at: _At, low: float, high: float, unit: str) -> None:
    if number < low:
        at.fail(f"must be at least {low:g}{unit}, got {_show(value)}")
    if number > high:
        at.fail(f"must be at most {high:g}{unit}, got {_show(value)}")


def _bounded(section: str, key: str, base: Converter[T], unit: str, zero: bool = False) -> Converter[T]:
    """``base``'s value within ``BOUNDS[section, key]``; ``zero``: 0 passes too (off)."""
    low, high = BOUNDS[(section, key)]

    def convert(value: object, at: _At) -> T:
        number = base(value, at)
        if not (zero and number == 0):
            _within(number, value, at, low, high, unit)
        return number
    return convert


def _duration(section: str, key: str, zero: bool = False) -> Converter[float]:
    """Seconds within ``BOUNDS[section, key]``; ``zero`` also lets 0 through (off)."""
    return _bounded(section, key, _non_negative if zero else _positive, " s", zero)


def _count(section: str, key: str) -> Converter[int]:
    """An integer within ``BOUNDS[section, key]`` (all of them start at 1)."""
    return _bounded(section, key, _positive_int, "")


def _integer(value: object, at: _At) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        at.fail(f"must be an integer, got {_type_name(value)}")
    return value


def _int_range(low: int, high: int) -> Converter[int]:
    def convert(value: object, at: _At) -> int:
        number = _integer(value, at)
        if not low <= number <= high:
            at.fail(f"must be between {low} and {high}, got {_show(number)}")
        return number
    return convert


def _metrics_port(value: object, at: _At) -> int:
    if value == "any":
        return ANY_PORT
    if isinstance(value, str):
        at.fail(f'must be a port number or "any", got "{value}"')
    return _int_range(0, 65535)(value, at)


def _positive_int(value: object, at: _At) -> int:
    return _signed(_integer(value, at), value, at)


def _string(value: object, at: _At) -> str:
    if not isinstance(value, str):
        at.fail(f"must be a string, got {_type_name(value)}")
    # No path, endpoint, URL or name can hold one: open() and bind() reject it.
    if "\0" in value:
        at.fail("must not contain a NUL character")
    return value


def _non_empty(value: object, at: _At) -> str:
    text = _string(value, at)
    if not text.strip():
        at.fail("must not be empty")
    return text


def _choice(options: Iterable[str]) -> Converter[str]:
    options = tuple(options)

    def convert(value: object, at: _At) -> str:
        text = _string(value, at)
        if text not in options:
            at.fail(f'unknown value "{text}"; expected one of: {", ".join(options)}')
        return text
    return convert


def _array(item: Converter[T]) -> Converter[tuple[T, ...]]:
    """A non-empty array without duplicates, each item converted."""

    def convert(value: object, at: _At) -> tuple[T, ...]:
        if not isinstance(value, list):
            at.fail(f"must be an array, got {_type_name(value)}")
        if not value:
            at.fail("must not be empty")
        first: dict[T, int] = {}
        for i, raw in enumerate(value):
            converted = item(raw, at.index(i))
            if converted in first:
                at.index(i).fail(f'duplicate "{converted}" (also at index {first[converted]})')
            first[converted] = i
        return tuple(first)
    return convert


def _url(schemes: tuple[str, ...], allow_empty: bool = False) -> Converter[str]:
    """A URL with one of ``schemes``, a host, a valid port and no query."""

    def convert(value: object, at: _At) -> str:
        text = _string(value, at)
        if allow_empty and text == "":
            return text
        expected = " or ".join(f"{s}://" for s in schemes)
        if any(c.isspace() for c in text):
            at.fail(f'malformed URL "{text}": contains whitespace')
        if not text.isascii() or not text.isprintable():
            at.fail(f'malformed URL "{text}": only printable ASCII (IDNA-encode host names)')
        try:
            parts = urlsplit(text)
        except ValueError as exc:   # e.g. an unbalanced [ in an IPv6 host
            at.fail(f'malformed URL "{text}": {exc}')
        if parts.scheme not in schemes:
            at.fail(f'malformed URL "{text}": must start with {expected}')
        if not parts.hostname:
            at.fail(f'malformed URL "{text}": no host')
        try:
            parts.port  # raises ValueError on a non-numeric or out-of-range port
        except ValueError:
            at.fail(f'malformed URL "{text}": invalid port')
        if parts.query or parts.fragment or parts.username or parts.password:
            at.fail(f'malformed URL "{text}": must not carry a query, fragment or user info')
        return text
    return convert


def _zmq_endpoint(value: object, at: _At) -> str:
    """``tcp://host:port`` (``*`` allowed for both when binding) or ``ipc://path``."""
    text = _string(value, at)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "ipc"):
        at.fail(f'invalid ZeroMQ endpoint "{text}": expected tcp://host:port or ipc://path')
    if scheme == "ipc":
        _check_ipc_path(text, rest, at)
    else:
        _check_tcp_address(text, rest, at)
    return text


def _check_ipc_path(text: str, path: str, at: _At) -> None:
    if not path:
        at.fail(f'invalid ZeroMQ endpoint "{text}": empty ipc path')
    if len(path.encode()) > _MAX_IPC_PATH:
        at.fail(f'invalid ZeroMQ endpoint "{text}": ipc path longer than '
                f"{_MAX_IPC_PATH} bytes (Unix socket limit)")


def _check_tcp_address(text: str, address: str, at: _At) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        at.fail(f'invalid ZeroMQ endpoint "{text}": expected tcp://host:port')
    # ASCII digits only, and few: int() of "\u0663" or of 5000 digits raises.
    if port != "*" and not (re.fullmatch(r"[0-9]{1,5}", port) and int(port) <= 65535):
        at.fail(f'invalid ZeroMQ endpoint "{text}": port must be 0-65535 or *')
    if host.startswith("["):
        if not host.endswith("]"):
            at.fail(f'invalid ZeroMQ endpoint "{text}": unbalanced [ in IPv6 host')
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            at.fail(f'invalid ZeroMQ endpoint "{text}": bad IPv6 address')
    elif host != "*" and not re.fullmatch(r"[A-Za-z0-9_.-]+", host):
        at.fail(f'invalid ZeroMQ endpoint "{text}": bad host "{host}"')


def _symbol(market: str) -> Converter[str]:
    pattern = _SYMBOL[market]

    def convert(value: object, at: _At) -> str:
        text = _string(value, at)
        # Binance lists symbols in upper case; lower-case input is a common
        # habit from stream names (btcusdt@aggTrade), so accept it.
        symbol = text.upper() if text.isascii() else text
        if not pattern.fullmatch(symbol):
            at.fail(f'invalid symbol "{text}": Binance symbols are 2-20 upper-case '
                    "letters and digits, e.g. BTCUSDT")
        return symbol
    return convert


def _env_name(value: object, at: _At) -> str:
    text = _string(value, at)
    if not _ENV_NAME.fullmatch(text):
        at.fail(f'"{text}" is not a valid environment variable name')
    return text


def _path_beside(config_path: str) -> Converter[str]:
    """A file path; relative paths are relative to the config file's folder."""
    base = os.path.dirname(os.path.abspath(config_path))

    def convert(value: object, at: _At) -> str:
        text = os.path.expanduser(_non_empty(value, at))
        return os.path.normpath(os.path.join(base, text))
    return convert


def _state_path(config_path: str) -> Converter[str]:
    beside = _path_beside(config_path)

    def convert(value: object, at: _At) -> str:
        if value == "":
            return ""                      # explicitly off
        path = beside(value, at)
        if not os.path.isdir(os.path.dirname(path)):
            at.fail(f"folder {os.path.dirname(path)} does not exist")
        # The parent reads and replaces it; a FIFO would hang it, a device
        # (/dev/zero) fill its memory.
        if os.path.lexists(path) and not os.path.isfile(path):
            at.fail(f"{path} exists and is not a regular file")
        return path
    return convert


# --- sections ---------------------------------------------------------------

def load_config(path: str) -> Config:
    """Read and validate the TOML config at ``path``; raise ``ConfigError``."""
    raw = _read_toml(path)
    top = _Table(raw, _At(path, ""), _TOP_KEYS)
    section = top.at.dot
    feedsup = _load_feedsup(top.raw.get("feedsup", {}), section("feedsup"), path)
    spot, usdm = _load_binance(top.raw.get("binance", {}), section("binance"))
    connection = _load_global_connection(top.raw.get("connection", {}), section("connection"))
    restart = _load_restart(top.raw.get("restart", {}), section("restart"))
    config = Config(path=path, spot=spot, usdm=usdm, connection=connection,
                    restart=restart, **feedsup)
    from feedsup.universe import split_wildcards   # late: it builds on this module
    raw_streams, universes = split_wildcards(top.raw.get("stream"), section("stream"), config)
    streams = _load_streams(raw_streams, section("stream"), config) if raw_streams or not universes else ()
    from feedsup.sinks.config import load_sinks   # late: it builds on this module's converters
    config = replace(config, streams=streams, universes=universes,
                     sink=load_sinks(top.raw.get("sink", {}), section("sink"), path))
    if _reaches_beyond_loopback(config):
        _check_connect_budget(restart, section("restart"))
    # A symbols = "*" stream takes at least one connection (universe.resolve
    # counts them all once exchangeInfo says how many).
    _check_budget_fits(len(streams) + len(universes), restart, section("restart").dot("connect_budget"))
    _check_account_exposure(config, section("feedsup"))
    return config


def _check_account_exposure(config: Config, at: _At) -> None:
    """Account data (balances, orders) never goes on plain TCP, where every
    local user, or the network, can subscribe or ask for the last values."""
    accounts = [s.name for s in config.streams if s.channel == "account"]
    if not accounts or config.curve_server_key_file:
        return
    for key in ("pub", "control"):
        if getattr(config, key).startswith("tcp://"):
            at.dot(key).fail(
                f'account stream "{accounts[0]}" would be readable by anyone who can reach this tcp:// '
                "endpoint; use an ipc:// endpoint (the default) or set curve_server_key_file and "
                "curve_allowed_clients (see README, Security)")


def read_regular_file(path: str, limit: int, private: bool = False) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Opened non-blocking, so a FIFO cannot hang us in open(), and checked on
    the open descriptor (no race with a rename); /dev/zero or a huge file
    cannot fill memory. ``private``: it must also be the user's own and
    closed to group and others (it holds a secret). Raises ``OSError`` with a
    readable ``strerror``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        if private and info.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, f"owned by uid {info.st_uid}, not by the user running "
                                  f"feedsup (uid {os.geteuid()}); fix: chown {os.geteuid()} {path}")
        if private and info.st_mode & 0o077:
            raise PermissionError(errno.EPERM, f"accessible by group or others (mode "
                                  f"{stat.S_IMODE(info.st_mode):04o}); fix: chmod 600 {path}")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > limit:               # grew since fstat
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_toml(path: str) -> dict[str, object]:
    at = _At(path, "(file)")
    try:
        return tomllib.loads(read_regular_file(path, MAX_CONFIG_BYTES).decode())
    except FileNotFoundError:
        at.fail("file not found")
    except IsADirectoryError:
        at.fail("is a directory, not a file")
    except OSError as e:
        reason = e.strerror or str(e)
        at.fail(reason if e.errno in (errno.EINVAL, errno.EFBIG) else f"cannot read: {reason}")
    except UnicodeDecodeError:
        at.fail("not valid UTF-8")
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        where = re.search(r"\((at line (\d+), column (\d+)|at end of document)\)$", message)
        location = "end of document"
        if where and where.group(2):
            location = f"line {where.group(2)}, column {where.group(3)}"
        detail = message[: where.start()].strip() if where else message
        _At(path, location).fail(f"TOML syntax error: {detail}")
    except RecursionError:
        at.fail("arrays or tables nested too deeply")
    except ValueError as e:     # an integer of more than 4300 digits, say
        at.fail(f"unreadable value: {e}")


def _load_feedsup(raw: object, at: _At, config_path: str) -> dict[str, object]:
    table = _Table(raw, at, _FEEDSUP_KEYS)
    default = Config(path="")
    values = {
        "pub": table.get("pub", _zmq_endpoint, default.pub),
        "control": table.get("control", _zmq_endpoint, default.control),
        "log_format": table.get("log_format", _choice(LOG_FORMATS), default.log_format),
        "metrics_port": table.get("metrics_port", _metrics_port, default.metrics_port),
        # 0 would mean "unlimited" to ZeroMQ: unbounded memory, never on purpose.
        "pub_hwm": table.get("pub_hwm", _count("feedsup", "pub_hwm"), default.pub_hwm),
        "state_file": table.get("state_file", _state_path(config_path), default.state_file),
        "curve_server_key_file": table.get("curve_server_key_file", _curve_server_key(config_path), ""),
        "curve_allowed_clients": table.get("curve_allowed_clients", _array(_curve_public_key), ()),
        "instance": table.get("instance", _non_empty, default.instance),
        "shard": table.get("shard", _shard, ""),
        "universe_refresh": table.get("universe_refresh", _duration("feedsup", "universe_refresh", zero=True),
                                      default.universe_refresh),
    }
    if values["pub"] == values["control"]:
        at.dot("control").fail("must differ from pub")
    if values["curve_server_key_file"] and not values["curve_allowed_clients"]:
        at.dot("curve_allowed_clients").fail(
            "required with curve_server_key_file: the public keys of the clients to let in")
    if values["curve_allowed_clients"] and not values["curve_server_key_file"]:
        at.dot("curve_server_key_file").fail("required with curve_allowed_clients")
    for key in ("pub", "control"):
        _check_ipc_folder(values[key], at.dot(key))
    return values


def _check_ipc_folder(endpoint: str, at: _At) -> None:
    """The folder of an ipc socket: the private default one is created at bind
    and must be ours alone; any other must exist, or bind() fails in run."""
    path = endpoints.ipc_path(endpoint)
    if path is None:
        return
    folder = os.path.dirname(path) or "."
    if folder == endpoints.runtime_dir():
        problem = endpoints.check_private_folder(folder)
        if problem:
            at.fail(f"folder {folder} {problem}")
    elif not os.path.isdir(folder):
        at.fail(f"folder {folder} does not exist")


def _curve_public_key(value: object, at: _At) -> str:
    text = _string(value, at)
    if not curve.is_z85_key(text):
        at.fail("not a CURVE public key: 40 Z85 characters, as python -m feedsup.curve prints")
    return text


def _curve_server_key(config_path: str) -> Converter[str]:
    """A private ZeroMQ certificate holding the server's secret key."""
    beside = _path_beside(config_path)

    def convert(value: object, at: _At) -> str:
        path = beside(value, at)
        try:
            raw = read_regular_file(path, curve.MAX_CERT_BYTES, private=True)
        except FileNotFoundError:
            at.fail(f"{path}: file not found (make one with: python -m feedsup.curve server)")
        except OSError as exc:
            at.fail(f"{path}: {exc.strerror or exc}")
        try:
            _, secret = curve.parse_certificate(raw, path)
        except curve.CurveKeyError as exc:
            at.fail(str(exc))
        if secret is None:
            at.fail(f"{path}: holds no secret-key (use the .key_secret file)")
        return path
    return convert


def _shard(value: object, at: _At) -> str:
    from feedsup.universe import shard_converter   # late: it builds on this module
    return shard_converter(value, at)


def _load_binance(raw: object, at: _At) -> tuple[Endpoint, Endpoint]:
    table = _Table(raw, at, MARKETS)
    spot = _load_endpoint(table.raw.get("spot", {}), at.dot("spot"), SPOT_DEFAULT,
                          ("ws_url", "rest_url", "ws_api_url"))
    usdm = _load_endpoint(table.raw.get("usdm", {}), at.dot("usdm"), USDM_DEFAULT,
                          ("ws_url", "rest_url"))
    return spot, usdm


def _load_endpoint(raw: object, at: _At, default: Endpoint, keys: tuple[str, ...]) -> Endpoint:
    table = _Table(raw, at, keys)
    ws, http = ("ws", "wss"), ("http", "https")
    return Endpoint(
        ws_url=table.get("ws_url", _url(ws), default.ws_url),
        rest_url=table.get("rest_url", _url(http), default.rest_url),
        ws_api_url=table.get("ws_api_url", _url(ws, allow_empty=True), default.ws_api_url),
    )


def _connection_converter(key: str) -> Converter[float]:
    if key == "max_age":
        return _max_age
    if key in ("max_frame", "uplink_hwm"):
        return _count("connection", key)
    # stale_after = 0 disables the staleness check
    return _duration("connection", key, zero=key == "stale_after")


def _max_age(value: object, at: _At) -> float:
    age = _positive(value, at)
    if age >= BINANCE_MAX_CONNECTION_AGE:
        at.fail(f"must be below {BINANCE_MAX_CONNECTION_AGE:g} s: Binance closes "
                "every connection at 24 h, so rotation must come first")
    return _duration("connection", "max_age")(value, at)


def _connection_overrides(table: _Table) -> dict[str, float]:
    return {key: table.require(key, _connection_converter(key))
            for key in CONNECTION_KEYS if table.has(key)}


def _load_global_connection(raw: object, at: _At) -> Connection:
    table = _Table(raw, at, CONNECTION_KEYS)
    connection = Connection(**_connection_overrides(table))
    _check_connection(connection, lambda key: (at.dot(key), table.has(key)))
    return connection


# Where a key's value came from: its location, and whether the user set it at
# that level (as opposed to inheriting it).
KeySource = Callable[[str], tuple[_At, bool]]


def _check_connection(connection: Connection, source: KeySource) -> None:
    """Cross-field rules between connection keys."""
    _check_order(connection, "ping_timeout", "ping_interval", "ping_timeout", source,
                 "websocket-client requires ping_interval > ping_timeout")
    _check_order(connection, "liveness_interval", "liveness_timeout", "liveness_timeout",
                 source, "a worker must get a liveness ping in before it counts as hung")


def _check_order(connection: Connection, small: str, big: str, blame: str,
                 source: KeySource, why: str) -> None:
    """Require ``small < big``; on failure blame the key the user set here."""
    small_value, big_value = getattr(connection, small), getattr(connection, big)
    if small_value < big_value:
        return
    (small_at, small_set), (big_at, big_set) = source(small), source(big)
    if small_set != big_set:
        blame = small if small_set else big
    if blame == big:
        big_at.fail(f"must be greater than {small} ({small_value:g}); {why}")
    small_at.fail(f"must be less than {big} ({big_value:g}); {why}")


def _load_restart(raw: object, at: _At) -> Restart:
    table = _Table(raw, at, tuple(f.name for f in fields(Restart)))
    default = Restart()
    values = {
        f.name: table.get(f.name, (_count if f.type == "int" else _duration)("restart", f.name),
                          getattr(default, f.name))
        for f in fields(Restart)
    }
    restart = Restart(**values)
    if restart.backoff_max < restart.backoff_initial:
        at.dot("backoff_max").fail(
            f"must be at least backoff_initial ({restart.backoff_initial:g})")
    return restart


def _reaches_beyond_loopback(config: Config) -> bool:
    """True if some stream connects to a non-loopback host. Binance's limit
    is per IP; a local simulator may be hammered faster on purpose."""
    return not all(loopback_host(urlsplit(_connects_to(config, s)).hostname or "") for s in config.streams)


def _connects_to(config: Config, stream: Stream) -> str:
    """The WebSocket base ``stream``'s worker connects to."""
    endpoint = config.endpoint(stream.market)
    if stream.market == "spot" and stream.channel == "account":
        return endpoint.ws_api_url
    return endpoint.ws_url


def _check_connect_budget(restart: Restart, at: _At) -> None:
    # A budget of N per sliding window W allows up to N * ceil(300 / W)
    # attempts in any 300 s, which must stay within Binance's limit.
    windows = math.ceil(BINANCE_CONNECT_WINDOW / restart.budget_window)
    worst = restart.connect_budget * windows
    if worst > BINANCE_CONNECT_LIMIT:
        at.dot("connect_budget").fail(
            f"allows up to {worst} connection attempts in 300 s (budget "
            f"{restart.connect_budget} per {restart.budget_window:g} s); Binance "
            f"allows {BINANCE_CONNECT_LIMIT} per 5 minutes per IP")


def _check_budget_fits(stream_count: int, restart: Restart, at: _At, what: str = "") -> None:
    if stream_count > restart.connect_budget:
        at.fail(f"{what or f'{stream_count} streams need'} {stream_count} connections to start, "
                f"more than the budget of {restart.connect_budget}")


def check_expanded(config: Config) -> None:
    """The checks of every stream together, once symbols = "*" streams are
    expanded into their connections (``universe.resolve``): the connection
    budget, and each topic published by one stream only."""
    wild = f'{len(config.universes)} symbols = "*" stream(s) and the others need'
    _check_budget_fits(len(config.streams), config.restart, _At(config.path, "restart").dot("connect_budget"),
                       wild if config.universes else "")
    owners: dict[str, str] = {}
    for stream in config.streams:
        _check_topics_unique(stream, owners, _At(config.path, f'stream "{stream.name}"'))


# --- streams ----------------------------------------------------------------

def _load_streams(raw: object, at: _At, config: Config) -> tuple[Stream, ...]:
    if raw is None:
        at.fail("no streams configured: add at least one [[stream]] table")
    if not isinstance(raw, list):
        at.fail("must be an array of tables: write [[stream]], not [stream]")
    if not raw:
        at.fail("no streams configured: add at least one [[stream]] table")
    streams: list[Stream] = []
    first_index: dict[str, int] = {}
    owners: dict[str, str] = {}
    for i, item in enumerate(raw):
        stream = _load_stream(item, at.index(i), config)
        if stream.name in first_index:
            at.index(i).dot("name").fail(
                f'duplicate stream name "{stream.name}" (also stream[{first_index[stream.name]}])')
        first_index[stream.name] = i
        _check_topics_unique(stream, owners, _At(at.file, f'stream "{stream.name}"'))
        streams.append(stream)
    return tuple(streams)


def _check_topics_unique(stream: Stream, owners: dict[str, str], at: _At) -> None:
    """Two streams on one topic would look like duplicates of each other to the
    parent, which would drop one of them. ``owners``: topic -> stream so far."""
    mine = stream_topics(stream.channel, stream.symbols, stream.intervals, stream.topic_prefix)
    shared = sorted(t for t in mine if t in owners)
    if shared:
        at.dot("topic_prefix").fail(
            f'topic "{shared[0]}" is also published by stream "{owners[shared[0]]}"; give one of them '
            f'a topic_prefix (for example "{stream.market}.") or drop the duplicate symbol')
    owners.update(dict.fromkeys(mine, stream.name))


def _stream_name(value: object, at: _At) -> str:
    name = _string(value, at)
    if not _STREAM_NAME.fullmatch(name):
        at.fail(f'invalid stream name "{name}": use 1-64 letters, digits, "_", "-" '
                'or ".", starting with a letter or digit')
    return name


def _load_stream(raw: object, at: _At, config: Config) -> Stream:
    if not isinstance(raw, dict):
        at.fail(f"must be a table, got {_type_name(raw)}")
    if "name" not in raw:
        at.dot("name").fail("required")
    name = _stream_name(raw["name"], at.dot("name"))
    # From here on, errors name the stream, which is what the user sees.
    table = _Table(raw, _At(at.file, f'stream "{name}"'), _STREAM_KEYS)
    market = table.require("market", _choice(MARKETS))
    channel = table.require("channel", _choice(CHANNELS))
    if channel not in CHANNELS_BY_MARKET[market]:
        table.at.dot("channel").fail(
            f'"{channel}" is not available on market "{market}"; '
            f'{market} has: {", ".join(c for c in CHANNELS if c in CHANNELS_BY_MARKET[market])}')
    stream = Stream(
        name=name, market=market, channel=channel,
        symbols=_load_symbols(table, market, channel),
        intervals=_only_for(table, "intervals", channel, "kline", required=True,
                            convert=_array(_choice(INTERVALS_BY_MARKET[market])), default=()),
        depth_levels=_only_for(table, "depth_levels", channel, "depth", required=False,
                               convert=_int_range(1, MAX_DEPTH_LEVELS), default=10),
        connection=_stream_connection(table, config, channel),
        topic_prefix=_topic_prefix(table, channel),
        # Up only: an unprivileged process may lower its priority, not raise it.
        nice=table.get("nice", _int_range(0, MAX_NICE), 0),
    )
    stream = replace(stream, **_load_credentials_config(table, stream, config))
    _check_stream_count(stream, table.at.dot("symbols"))
    return stream


def _load_symbols(table: _Table, market: str, channel: str) -> tuple[str, ...]:
    if channel == "account":
        if table.has("symbols"):
            table.at.dot("symbols").fail("an account stream takes no symbols")
        return ()
    return table.require("symbols", _array(_symbol(market)))


_TOPIC_PREFIX = re.compile(r"(?:[A-Za-z0-9_-]+\.)+")


def _topic_prefix(table: _Table, channel: str) -> str:
    if channel == "account":
        if table.has("topic_prefix"):
            table.at.dot("topic_prefix").fail("an account stream's topics already carry its name")
        return ""

    def convert(value: object, at: _At) -> str:
        text = _string(value, at)
        if text and not _TOPIC_PREFIX.fullmatch(text):
            at.fail(f'"{text}" is not a topic prefix: dot-terminated words, e.g. "usdm."')
        return text
    return table.get("topic_prefix", convert, "")


def _only_for(table: _Table, key: str, channel: str, wanted: str, *, required: bool,
              convert: Converter[T], default: T) -> T:
    """A key that belongs to one channel: required there (or not), refused elsewhere."""
    if channel != wanted:
        if table.has(key):
            table.at.dot(key).fail(f'only valid for channel "{wanted}", not "{channel}"')
        return default
    if required:
        return table.require(key, convert)
    return table.get(key, convert, default)


def _stream_connection(table: _Table, config: Config, channel: str) -> Connection:
    overrides = _connection_overrides(table)
    if channel == "account":
        # An account stream is quiet for long periods: silence is not staleness.
        if overrides.get("stale_after", 0.0) != 0.0:
            table.at.dot("stale_after").fail(
                "must be 0 for an account stream: it is quiet for long periods, "
                "so silence is not staleness")
        overrides["stale_after"] = 0.0
    connection = replace(config.connection, **overrides)
    global_at = _At(table.at.file, "connection")
    _check_connection(connection, lambda key: (table.at.dot(key), True) if table.has(key)
                      else (global_at.dot(key), False))
    return connection


def _load_credentials_config(table: _Table, stream: Stream, config: Config) -> dict[str, str]:
    """Names of the secret sources; the secrets themselves are read by the worker."""
    if stream.channel != "account":
        for key in _CREDENTIAL_KEYS:
            if table.has(key):
                table.at.dot(key).fail(
                    f'only valid for channel "account", not "{stream.channel}"')
        return {}
    path = _path_beside(config.path)
    values = {
        "api_key_env": table.get("api_key_env", _env_name, ""),
        "api_secret_env": table.get("api_secret_env", _env_name, ""),
        "key_file": table.get("key_file", path, ""),
        "ed25519_key_file": table.get("ed25519_key_file", path, ""),
    }
    _check_credential_sources(values, table.at)
    if stream.market == "spot" and not config.spot.ws_api_url:
        _At(table.at.file, "binance.spot.ws_api_url").fail(
            f'required by account stream "{stream.name}": spot user data '
            "comes through the WebSocket API")
    return values


def _check_credential_sources(values: Mapping[str, str], at: _At) -> None:
    env_key, env_secret = values["api_key_env"], values["api_secret_env"]
    key_file, ed25519 = values["key_file"], values["ed25519_key_file"]
    if key_file and (env_key or env_secret):
        at.dot("key_file").fail("set either key_file or api_key_env/api_secret_env, not both")
    if env_secret and not env_key:
        at.dot("api_key_env").fail("required with api_secret_env")
    if not key_file and not env_key:
        at.dot("api_key_env").fail(
            "an account stream needs credentials: set api_key_env and api_secret_env "
            "(names of environment variables), or key_file")
    if env_key and not env_secret and not ed25519:
        at.dot("api_secret_env").fail(
            "required with api_key_env (or set ed25519_key_file to sign with Ed25519)")
    if env_secret and ed25519:
        at.dot("ed25519_key_file").fail(
            "set either api_secret_env (HMAC) or ed25519_key_file, not both")


def _check_stream_count(stream: Stream, at: _At) -> None:
    count = len(stream.symbols) * max(1, len(stream.intervals))
    limit = MAX_STREAMS_BY_MARKET[stream.market]
    if count > limit:
        detail = (f"{len(stream.symbols)} symbols x {len(stream.intervals)} intervals = "
                  if stream.intervals else "")
        at.fail(f"{detail}{count} Binance streams on one connection, more than the "
                f"{limit} allowed on {stream.market}; split it into several [[stream]] tables")
