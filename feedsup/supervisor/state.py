"""What a parent keeps across its own restarts (``[feedsup] state_file``).

* Watermarks: the last delivered exchange key of each topic, so the first
  workers of a new parent backfill what was missed while no parent ran.
* Connection attempts of the last budget window, as wall-clock times, so a
  parent restarted in a loop (by supervisord, say) cannot spend Binance's
  connection quota again each time.

The file is msgpack, written to a temporary name and renamed, so a crash
mid-write leaves the previous state whole. The parent writes it about once a
second (watermarks one save behind, see ``Parent._save_state``) and exactly
on a clean exit.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import msgpack

VERSION = 1

Mark = tuple[int, int, bool]


@dataclass
class SavedState:
    marks: dict[str, Mark] = field(default_factory=dict)
    attempts: list[float] = field(default_factory=list)   # wall-clock seconds
    saved_at: float = 0.0


class StateError(Exception):
    pass


def encode(state: SavedState) -> bytes:
    return msgpack.packb({
        "version": VERSION,
        "saved_at": state.saved_at,
        "marks": {t: list(m) for t, m in state.marks.items()},
        "attempts": state.attempts,
    })


def decode(raw: bytes) -> SavedState:
    try:
        obj = msgpack.unpackb(raw)
        if obj.get("version") != VERSION:
            raise StateError(f"unknown state version {obj.get('version')!r}")
        marks = {str(t): (int(m[0]), int(m[1]), bool(m[2])) for t, m in obj["marks"].items()}
        return SavedState(marks, [float(t) for t in obj["attempts"]], float(obj["saved_at"]))
    except StateError:
        raise
    except Exception as exc:
        raise StateError(f"unreadable state: {exc.__class__.__name__}: {exc}") from None


def save(path: str, state: SavedState) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".feedsup-state-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(state))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path: str) -> SavedState | None:
    """The saved state, or None when there is none yet."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror}") from None
    return decode(raw)


def to_monotonic(wall_times: list[float], now_wall: float, now_mono: float) -> list[float]:
    """Wall-clock instants as this process's monotonic time (for the budget)."""
    return sorted(now_mono - (now_wall - t) for t in wall_times if t <= now_wall)


def to_wall(mono_times: list[float], now_wall: float, now_mono: float) -> list[float]:
    return [now_wall - (now_mono - t) for t in mono_times]
