"""What a parent keeps across its own restarts (``[feedsup] state_file``).

* Watermarks: the last delivered exchange key of each topic, so the first
  workers of a new parent backfill what was missed while no parent ran.
  Each is stored with where it came from (market and exchange URLs), so a
  mark is only used against the exchange that produced it: a testnet state
  file used against production, or a stream moved from spot to usdm, would
  otherwise suppress every live frame below a mark that means nothing there.
* Connection attempts of the last budget window, as wall-clock times, so a
  parent restarted in a loop (by supervisord, say) cannot spend Binance's
  connection quota again each time.

The file is msgpack, written to a temporary name, fsynced, renamed, and the
folder fsynced, so a crash or power loss mid-write leaves the previous state
whole. The parent writes it about once a second (watermarks one save behind,
see ``Parent._save_state``) and exactly on a clean exit.
"""

from __future__ import annotations

import errno
import glob
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any
from datetime import datetime, timezone

import msgpack

from feedsup.config import Config, read_regular_file
from feedsup.ipc.topics import symbol_topic

VERSION = 2

Mark = tuple[int, int, bool]
# Where a topic's marks come from: (market, data URL, REST URL).
Origin = tuple[str, str, str]

# A few thousand topics take a few hundred kB; anything far larger is not ours.
MAX_STATE_BYTES = 64 << 20
INT64_MAX = (1 << 63) - 1
# Binance ids and ms times are far below 2**53 (aggTrade ids ~1e10, update
# ids ~1e13, times ~1.8e12); JavaScript clients read them exactly. A mark
# above it is corruption or a bug, and would suppress every live frame.
MAX_PLAUSIBLE_KEY = 1 << 53
# Time-keyed marks (kline open times, event times) may lead our clock by
# clock skew, never by days.
MAX_FUTURE_MS = 86_400_000
# Channels whose ordering key is a time in ms (see workers/normalise.py and
# workers/account_normalise.py); the others use exchange ids.
TIME_KEYED = frozenset({"kline", "miniTicker", "ticker", "markPrice", "account"})

_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_MONDAY_MS = 4 * 86_400_000   # 1970-01-01 was a Thursday; Binance weeks open on Monday


@dataclass
class SavedState:
    marks: dict[str, Mark] = field(default_factory=dict)
    attempts: list[float] = field(default_factory=list)   # wall-clock seconds
    saved_at: float = 0.0
    origins: dict[str, Origin] = field(default_factory=dict)   # topic -> where its mark came from


class StateError(Exception):
    pass


class Origins:
    """Which market, exchange and channel each configured topic comes from."""

    def __init__(self, config: Config) -> None:
        self._topics: dict[str, tuple[Origin, str, str]] = {}   # topic -> (origin, channel, interval)
        self._accounts: dict[str, Origin] = {}                   # account stream name -> origin
        for s in config.streams:
            self.add(s, config.endpoint(s.market))

    def add(self, s: Any, endpoint: Any) -> None:
        """The topics of stream ``s`` (also one added while running: a new
        connection or listing of a symbols = "*" stream)."""
        if s.channel == "account":
            data_url = endpoint.ws_api_url if s.market == "spot" else endpoint.ws_url
            self._accounts[s.name] = (s.market, data_url, endpoint.rest_url)
            return
        origin = (s.market, endpoint.ws_url, endpoint.rest_url)
        for symbol in s.symbols:
            for interval in (s.intervals or ("",)):
                topic = symbol_topic(s.channel, symbol, interval, s.topic_prefix)
                self._topics[topic] = (origin, s.channel, interval)

    def of(self, topic: str) -> Origin | None:
        found = self._topics.get(topic)
        if found is not None:
            return found[0]
        return self._accounts.get(_account_stream(topic) or "")

    def channel(self, topic: str) -> tuple[str, str]:
        """(channel, interval) of a configured topic."""
        found = self._topics.get(topic)
        if found is not None:
            return found[1], found[2]
        return "account", ""


def _account_stream(topic: str) -> str | None:
    # account.<event>.<stream>; event names carry no dot, stream names may.
    parts = topic.split(".", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "account" else None


# --- pure checks ---------------------------------------------------------------

def usable_marks(state: SavedState, origins: Origins, now_ms: int) -> tuple[dict[str, Mark], list[tuple[str, str]]]:
    """The saved marks this config may resume from, and (topic, why) of the others."""
    kept: dict[str, Mark] = {}
    dropped: list[tuple[str, str]] = []
    for topic, mark in state.marks.items():
        reason = _why_not(topic, mark, state.origins.get(topic), origins, now_ms)
        if reason is None:
            kept[topic] = mark
        else:
            dropped.append((topic, reason))
    return kept, dropped


def _why_not(topic: str, mark: Mark, saved_origin: Origin | None, origins: Origins, now_ms: int) -> str | None:
    current = origins.of(topic)
    if current is None:
        return "topic no longer configured"
    if saved_origin is None:
        return "saved without its exchange (older feedsup)"
    if saved_origin[0] != current[0]:
        return f"market was {saved_origin[0]}, now {current[0]}"
    if saved_origin[1:] != current[1:]:
        return f"saved from another exchange ({saved_origin[1]}, {saved_origin[2]})"
    channel, interval = origins.channel(topic)
    return implausible(mark, channel, interval, now_ms)


def implausible(mark: Mark, channel: str, interval: str, now_ms: int) -> str | None:
    """Why ``mark`` cannot be a real Binance key of this channel, or None."""
    major, minor, _ = mark
    if not (-INT64_MAX - 1 <= major <= INT64_MAX and -INT64_MAX - 1 <= minor <= INT64_MAX):
        return f"mark {major}/{minor} outside int64"
    if major < 0 or minor < 0:
        return f"mark {major}/{minor} is negative"
    if major > MAX_PLAUSIBLE_KEY:
        return f"mark {major} beyond any Binance id or time (2^53)"
    if channel in TIME_KEYED and major > now_ms + MAX_FUTURE_MS:
        return f"mark {major} ms is in the future"
    if channel == "kline" and not on_grid(interval, major):
        return f"kline open time {major} not on the {interval} grid"
    return None


def on_grid(interval: str, t_ms: int) -> bool:
    """Whether ``t_ms`` is a kline open time of ``interval`` (Binance's alignment)."""
    if interval == "1M":
        if t_ms % 86_400_000:
            return False
        return datetime.fromtimestamp(t_ms / 1000, tz=timezone.utc).day == 1
    unit = _UNIT_MS.get(interval[-1:])
    if unit is None or not interval[:-1].isdigit():
        return False
    length = int(interval[:-1]) * unit
    return (t_ms - (_MONDAY_MS if interval == "1w" else 0)) % length == 0


# --- encoding --------------------------------------------------------------------

def encode(state: SavedState, origins: Origins) -> bytes:
    marks = {}
    for topic, mark in state.marks.items():
        origin = origins.of(topic)
        if origin is not None:     # a topic nobody publishes any more is not kept
            marks[topic] = [*mark, *origin]
    return msgpack.packb({
        "version": VERSION,
        "saved_at": state.saved_at,
        "marks": marks,
        "attempts": state.attempts,
    })


def decode(raw: bytes) -> SavedState:
    try:
        obj = msgpack.unpackb(raw)
        if not isinstance(obj, dict):
            raise StateError("not a feedsup state file")
        version = obj.get("version")
        if version not in (1, VERSION):
            raise StateError(f"unknown state version {version!r}")
        marks: dict[str, Mark] = {}
        origins: dict[str, Origin] = {}
        for topic, entry in obj["marks"].items():
            marks[str(topic)] = _mark(topic, entry)
            if version >= 2:
                origins[str(topic)] = _origin(topic, entry[3:])
        attempts = [_finite(t) for t in obj["attempts"]]
        return SavedState(marks, attempts, _finite(obj["saved_at"]), origins)
    except StateError:
        raise
    except Exception as exc:
        raise StateError(f"unreadable state: {exc.__class__.__name__}: {exc}") from None


def _mark(topic: object, entry: object) -> Mark:
    # Integers only: int(2.0**70) would slip a float through as a huge key.
    if (not isinstance(entry, list) or len(entry) < 3 or not all(type(v) is int for v in entry[:2])
            or not isinstance(entry[2], bool)):
        raise StateError(f"bad mark for {topic!r}: {entry!r}"[:200])
    return entry[0], entry[1], entry[2]


def _origin(topic: object, entry: list) -> Origin:
    if len(entry) != 3 or not all(isinstance(v, str) for v in entry):
        raise StateError(f"bad origin of the mark for {topic!r}"[:200])
    return entry[0], entry[1], entry[2]


def _finite(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StateError(f"bad time {value!r}"[:100])
    return float(value)


# --- the file ----------------------------------------------------------------------

def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def save(path: str, state: SavedState, origins: Origins) -> None:
    """Replace the file atomically and durably (data, then the rename)."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(state, origins))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):   # some file systems cannot
            raise
    finally:
        os.close(fd)


def remove_stale_temps(path: str) -> None:
    """Temporary files of a save that was killed before its rename."""
    folder = os.path.dirname(path) or "."
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(_temp_prefix(path)) + "*")):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load(path: str) -> SavedState | None:
    """The saved state, or None when there is none yet.

    Only a regular file is read, with a size cap: a FIFO would block the
    parent's start, /dev/zero fill its memory."""
    remove_stale_temps(path)
    try:
        raw = read_regular_file(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from None
    return decode(raw)


def to_monotonic(wall_times: list[float], now_wall: float, now_mono: float) -> list[float]:
    """Wall-clock instants as this process's monotonic time (for the budget)."""
    return sorted(now_mono - (now_wall - t) for t in wall_times if t <= now_wall)


def to_wall(mono_times: list[float], now_wall: float, now_mono: float) -> list[float]:
    return [now_wall - (now_mono - t) for t in mono_times]
