"""USD-M-only stream feeds, registered in ``feeds._SYMBOL_FEEDS``."""

from __future__ import annotations

from typing import Any

from .feeds import KlineFeed


class ContinuousKlineFeed(KlineFeed):
    """USD-M "Continuous Contract Kline/Candlestick Streams"
    (``<pair>_perpetual@continuousKline_<interval>``): the perpetual's klines as
    ``continuous_kline`` events, ``ps`` and ``ct`` instead of ``s``."""

    def poll(self, now: int) -> list[Any]:
        return [continuous_kline(e) for e in super().poll(now)]


def continuous_kline(event: dict[str, Any]) -> dict[str, Any]:
    k = {key: value for key, value in event["k"].items() if key != "s"}
    return {"e": "continuous_kline", "E": event["E"], "ps": event["s"], "ct": "PERPETUAL", "k": k}
