"""Binance stream names and the combined-stream URL of one configured stream.

Pure: no I/O. The worker connects to ``stream_url(stream, endpoint)``; every
event then arrives wrapped as ``{"stream": name, "data": event}``.
"""

from __future__ import annotations

from feedsup.config import Endpoint, Stream

# USD-M futures serve each channel on one route only. Binance retired the
# un-routed URLs on 2026-04-23, and a stream subscribed on the wrong route is
# acknowledged but never delivers, so a wrong entry here means silence.
_USDM_ROUTES = {
    "bookTicker": "/public",
    "depth": "/public",
    "aggTrade": "/market",
    "kline": "/market",
    "markPrice": "/market",
    "miniTicker": "/market",
    "ticker": "/market",
}
# USD-M lists no raw @trade stream (config refuses it too); spot has no markPrice.
_SPOT_CHANNELS = frozenset(_USDM_ROUTES) - {"markPrice"} | {"trade"}

# Channel -> suffix after "<symbol>@". kline is per interval, see stream_names.
_SUFFIXES = {
    "aggTrade": "aggTrade",
    "trade": "trade",
    "bookTicker": "bookTicker",
    "miniTicker": "miniTicker",
    "ticker": "ticker",
    "markPrice": "markPrice@1s",
    "depth": "depth@100ms",
}


def _check_channel(market: str, channel: str) -> None:
    if market == "spot":
        known = _SPOT_CHANNELS
    elif market == "usdm":
        known = _USDM_ROUTES.keys()
    else:
        raise ValueError(f"unknown market {market!r}")
    if channel not in known:
        raise ValueError(f"channel {channel!r} has no market-data stream on {market}")


def stream_names(stream: Stream) -> list[str]:
    """Binance stream names of ``stream``: one per symbol (x interval for kline)."""
    _check_channel(stream.market, stream.channel)
    symbols = [symbol.lower() for symbol in stream.symbols]
    if stream.channel == "kline":
        return [f"{s}@kline_{i}" for s in symbols for i in stream.intervals]
    suffix = _SUFFIXES[stream.channel]
    return [f"{s}@{suffix}" for s in symbols]


def route(market: str, channel: str) -> str:
    """URL path prefix that serves ``channel``: "" on spot, "/public" or "/market" on usdm."""
    _check_channel(market, channel)
    return "" if market == "spot" else _USDM_ROUTES[channel]


def stream_url(stream: Stream, endpoint: Endpoint) -> str:
    """Combined-stream URL: ``<ws_url><route>/stream?streams=a/b/c``."""
    names = stream_names(stream)
    if not names:
        raise ValueError(f"stream {stream.name!r} has no symbols (or, for kline, no intervals)")
    base = endpoint.ws_url.rstrip("/")
    return f"{base}{route(stream.market, stream.channel)}/stream?streams={'/'.join(names)}"
