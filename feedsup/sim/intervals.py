"""Kline interval arithmetic, Binance's alignment rules.

Weekly klines open on Monday 00:00 UTC; monthly ones on the 1st of the month;
every other interval is aligned on multiples of its length since the epoch.
"""

from __future__ import annotations

from datetime import datetime, timezone

INTERVALS = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h",
    "12h", "1d", "3d", "1w", "1M",
)
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_MONDAY_OFFSET_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday


def interval_ms(interval: str) -> int:
    """Fixed length in ms; months have none (raises)."""
    if interval == "1M":
        raise ValueError("1M has no fixed length")
    return int(interval[:-1]) * _UNIT_MS[interval[-1]]


def open_time(interval: str, t_ms: int) -> int:
    """Open time of the kline of ``interval`` containing ``t_ms``."""
    if interval == "1M":
        d = datetime.fromtimestamp(t_ms / 1000, tz=timezone.utc)
        return _month_ms(d.year, d.month)
    length = interval_ms(interval)
    if interval == "1w":
        return (t_ms - _MONDAY_OFFSET_MS) // length * length + _MONDAY_OFFSET_MS
    return t_ms // length * length


def next_open(interval: str, open_ms: int) -> int:
    """Open time of the kline after the one opening at ``open_ms``."""
    if interval == "1M":
        d = datetime.fromtimestamp(open_ms / 1000, tz=timezone.utc)
        year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return _month_ms(year, month)
    return open_ms + interval_ms(interval)


def _month_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)
