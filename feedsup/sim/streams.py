"""Stream names: parsing, and which route delivers which stream.

Unknown or misrouted names are not errors: Binance acknowledges them and
simply never delivers anything, and so do we (``parse_stream`` -> None or
``deliverable`` -> False).
"""

from __future__ import annotations

from dataclasses import dataclass

from .intervals import INTERVALS

SPOT, USDM = "spot", "usdm"
PUBLIC, MARKET, PRIVATE = "public", "market", "private"
# USD-M's legacy ``/ws`` and ``/stream`` paths on the futures host, which serve
# every USD-M market stream (and a listenKey as a stream name); the simulator
# serves them under the ``/usdm`` prefix, its stand-in for fstream.binance.com.
LEGACY = "legacy"

# kind -> futures route that serves it
_FUTURES_ROUTE = {
    "bookTicker": PUBLIC, "allBookTicker": PUBLIC, "depth": PUBLIC, "partialDepth": PUBLIC,
    "aggTrade": MARKET, "kline": MARKET, "markPrice": MARKET, "allMarkPrice": MARKET,
    "miniTicker": MARKET, "ticker": MARKET, "allMiniTicker": MARKET, "allTicker": MARKET,
    "continuousKline": MARKET,
}
_SPOT_KINDS = {"trade", "aggTrade", "bookTicker", "miniTicker", "ticker", "kline", "depth", "partialDepth",
               "allMiniTicker"}


@dataclass(frozen=True)
class StreamSpec:
    name: str                 # canonical name (lower-case symbol)
    kind: str
    symbol: str | None        # upper case; None for all-market streams
    interval: str = ""        # kline only
    period_ms: int = 0        # update period on the simulated clock
    levels: int = 0           # partial depth only


def parse_stream(name: str, market: str, symbols: frozenset[str]) -> StreamSpec | None:
    """Parse a stream name for ``market``; None when it can never deliver.

    Names are case-sensitive: web-socket-streams.md "All symbols for streams are
    lowercase", and Binance acknowledges ``BTCUSDT@trade`` but never delivers it.
    """
    if name.startswith("!"):
        return _parse_all_market(name, market)
    sym, sep, rest = name.partition("@")
    if not sep or sym != sym.lower():
        return None
    if market == USDM and rest.startswith("continuousKline_"):
        # USD-M "Continuous Contract Kline": <pair>_<contractType>@continuousKline_<interval>;
        # only perpetual contracts are simulated.
        pair, _, contract = sym.partition("_")
        interval = rest[len("continuousKline_"):]
        if contract != "perpetual" or pair.upper() not in symbols or interval not in INTERVALS:
            return None
        return StreamSpec(name, "continuousKline", pair.upper(), interval, 1000 if interval == "1s" else 2000)
    if sym.upper() not in symbols:
        return None
    symbol = sym.upper()
    canonical = name
    spec = _parse_symbol_stream(rest, market)
    if spec is None:
        return None
    kind, interval, period, levels = spec
    return StreamSpec(canonical, kind, symbol, interval, period, levels)


def _parse_symbol_stream(rest: str, market: str) -> tuple[str, str, int, int] | None:
    futures = market == USDM
    if rest == "trade" and not futures:
        return "trade", "", 0, 0
    if rest in ("aggTrade", "bookTicker"):
        return rest, "", 0, 0
    if rest in ("miniTicker", "ticker"):
        return rest, "", 1000, 0
    if rest.startswith("kline_"):
        interval = rest[len("kline_"):]
        if interval in INTERVALS:
            return "kline", interval, 1000 if interval == "1s" else 2000, 0
        return None
    if futures and rest in ("markPrice", "markPrice@1s"):
        return "markPrice", "", 1000 if rest.endswith("@1s") else 3000, 0
    if rest.startswith("depth"):
        return _parse_depth(rest[len("depth"):], futures)
    return None


def _parse_depth(rest: str, futures: bool) -> tuple[str, str, int, int] | None:
    levels_text, _, speed = rest.partition("@")
    speeds = {"": 250 if futures else 1000, "100ms": 100, "1000ms": 1000}
    if futures:
        speeds.update({"250ms": 250, "500ms": 500})
        speeds.pop("1000ms")
    if speed not in speeds:
        return None
    if levels_text == "":
        return "depth", "", speeds[speed], 0
    if levels_text in ("5", "10", "20"):
        return "partialDepth", "", speeds[speed], int(levels_text)
    return None


def _parse_all_market(name: str, market: str) -> StreamSpec | None:
    table = {"!miniTicker@arr": ("allMiniTicker", 1000)}
    if market == SPOT:
        table["!miniTicker@arr@1000ms"] = ("allMiniTicker", 1000)   # the name python-binance subscribes
    if market == USDM:
        table.update({"!bookTicker": ("allBookTicker", 0), "!ticker@arr": ("allTicker", 1000),
                      "!markPrice@arr": ("allMarkPrice", 3000), "!markPrice@arr@1s": ("allMarkPrice", 1000)})
    if name not in table:
        return None
    kind, period = table[name]
    return StreamSpec(name, kind, None, period_ms=period)


def deliverable(spec: StreamSpec | None, market: str, route: str) -> bool:
    """Whether a connection on ``route`` receives ``spec`` at all."""
    if spec is None:
        return False
    if market == SPOT:
        return spec.kind in _SPOT_KINDS
    if route == LEGACY:
        return spec.kind in _FUTURES_ROUTE
    return _FUTURES_ROUTE.get(spec.kind) == route


def canonical_name(name: str) -> str:
    """The name as sent: stream names are case-sensitive (an upper-case symbol is
    kept, listed by LIST_SUBSCRIPTIONS, and never delivers, as on Binance)."""
    return name
