"""Binance's market-data streams: which channels and intervals each market
serves, on which route, under which stream names, and the combined-stream URL
of one configured stream.

Pure: no I/O. The config refuses what is not listed here; the worker connects
to ``stream_url(stream, endpoint)``; every event then arrives wrapped as
``{"stream": name, "data": event}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feedsup.config_model import Endpoint, Stream

# Binance's production hosts per market: market streams, REST, and (spot
# only) the WebSocket API that serves user data.
DEFAULT_URLS = {
    "spot": {
        "ws_url": "wss://stream.binance.com:9443",
        "rest_url": "https://api.binance.com",
        "ws_api_url": "wss://ws-api.binance.com:443/ws-api/v3",
    },
    "usdm": {
        "ws_url": "wss://fstream.binance.com",
        "rest_url": "https://fapi.binance.com",
    },
}

KLINE_INTERVALS = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h",
    "12h", "1d", "3d", "1w", "1M",
)
MARKET_CHANNELS = (
    "trade", "aggTrade", "bookTicker", "miniTicker", "ticker", "kline",
    "markPrice", "depth",
)
# Binance serves at most 1024 streams on one connection.
MAX_STREAMS_PER_CONNECTION = 1024

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
# Where each channel exists. ``markPrice`` is futures-only. USD-M lists no
# raw @trade stream: a subscription would be acknowledged and then stay
# silent, which would look like a stale feed forever.
CHANNELS_BY_MARKET = {
    "spot": frozenset(MARKET_CHANNELS) - {"markPrice"},
    "usdm": frozenset(_USDM_ROUTES),
}
# Futures klines start at 1m; only spot has 1s.
INTERVALS_BY_MARKET = {
    "spot": KLINE_INTERVALS,
    "usdm": tuple(i for i in KLINE_INTERVALS if i != "1s"),
}
# Sources disagree between 200 and 1024 streams per futures connection; we
# plan for the lower figure so a config that loads also works.
MAX_STREAMS_BY_MARKET = {"spot": MAX_STREAMS_PER_CONNECTION, "usdm": 200}

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
    known = CHANNELS_BY_MARKET.get(market)
    if known is None:
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
