"""Static per-symbol facts: assets, precisions and a starting price."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")

# symbol: (start price in ticks, price decimals, spot qty decimals, futures qty decimals, max qty units)
_KNOWN = {
    "BTCUSDT": (9_000_000, 2, 5, 3, 50_000),
    "ETHUSDT": (300_000, 2, 4, 3, 50_000),
    "BNBUSDT": (60_000, 2, 3, 2, 5_000),
    "SOLUSDT": (15_000, 2, 3, 2, 5_000),
}


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str           # upper case, as Binance lists it
    base: str
    quote: str
    start_ticks: int      # starting price in ticks of 10**-price_decimals
    price_decimals: int   # tick size = 10**-price_decimals
    qty_decimals: int     # step size = 10**-qty_decimals (spot)
    futures_qty_decimals: int
    max_qty_units: int    # largest random order quantity, in steps


def split_symbol(symbol: str) -> tuple[str, str]:
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[:-3], symbol[-3:]


def spec_for(symbol: str) -> SymbolSpec:
    symbol = symbol.upper()
    base, quote = split_symbol(symbol)
    if symbol in _KNOWN:
        ticks, pdec, qdec, fqdec, qmax = _KNOWN[symbol]
    else:
        # Any other symbol gets a stable made-up price between 1 and 500.
        h = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
        ticks, pdec, qdec, fqdec, qmax = 10_000 + h % 4_990_000, 4, 1, 0, 20_000
    return SymbolSpec(symbol, base, quote, ticks, pdec, qdec, fqdec, qmax)
