"""``exchangeInfo`` bodies for spot and USD-M futures."""

from __future__ import annotations

from typing import Any

from .decimals import fmt_units
from .market import SymbolMarket
from .options import SimOptions

_SPOT_ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                     "TAKE_PROFIT_LIMIT"]
# Only what the simulator's matching engine serves (orders.py): OCO/OTO lists,
# trailing stops, icebergs, amend and cancel-replace are not advertised.
_FUT_ORDER_TYPES = ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"]


def _unit(decimals: int, out: int) -> str:
    return fmt_units(1, decimals, out)


def spot_rate_limits(options: SimOptions) -> list[dict[str, Any]]:
    window = int(options.rest_weight_window)
    return [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE" if window == 60 else "SECOND",
         "intervalNum": 1 if window == 60 else window, "limit": options.rest_weight_limit},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
        {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
        {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
    ]


def spot_symbol(m: SymbolMarket, status: str = "TRADING") -> dict[str, Any]:
    s = m.spec
    tick, step = _unit(s.price_decimals, 8), _unit(s.qty_decimals, 8)
    return {
        "symbol": s.symbol, "status": status, "baseAsset": s.base, "baseAssetPrecision": 8,
        "quoteAsset": s.quote, "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8, "orderTypes": _SPOT_ORDER_TYPES, "icebergAllowed": False,
        "ocoAllowed": False, "otoAllowed": False, "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False,
        "cancelReplaceAllowed": False, "amendAllowed": False, "pegInstructionsAllowed": False,
        "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
            {"filterType": "MARKET_LOT_SIZE", "minQty": step, "maxQty": "100.00000000", "stepSize": step},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        ],
        "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"],
    }


def spot_exchange_info(options: SimOptions, markets: list[SymbolMarket], now_ms: int,
                       delisted: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``delisted``: symbols listed with status BREAK (trading stopped)."""
    return {"timezone": "UTC", "serverTime": now_ms, "rateLimits": spot_rate_limits(options),
            "exchangeFilters": [], "symbols": [spot_symbol(m, _status(m, delisted)) for m in markets]}


def _status(m: SymbolMarket, delisted: frozenset[str]) -> str:
    return "BREAK" if m.spec.symbol in delisted else "TRADING"


def futures_symbol(m: SymbolMarket, onboard_ms: int, status: str = "TRADING") -> dict[str, Any]:
    s = m.spec
    tick, step = _unit(s.price_decimals, s.price_decimals), _unit(m.qty_decimals, m.qty_decimals)
    return {
        "symbol": s.symbol, "pair": s.symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
        "onboardDate": onboard_ms, "status": status, "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000", "baseAsset": s.base, "quoteAsset": s.quote, "marginAsset": s.quote,
        "pricePrecision": s.price_decimals, "quantityPrecision": m.qty_decimals, "baseAssetPrecision": 8,
        "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [], "triggerProtect": "0.0500",
        "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "4529764", "tickSize": tick},
            {"filterType": "LOT_SIZE", "stepSize": step, "maxQty": "1000", "minQty": step},
            {"filterType": "MARKET_LOT_SIZE", "stepSize": step, "maxQty": "120", "minQty": step},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"},
        ],
        "orderTypes": _FUT_ORDER_TYPES, "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def futures_exchange_info(options: SimOptions, markets: list[SymbolMarket], now_ms: int,
                          delisted: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {
        "timezone": "UTC", "serverTime": now_ms, "futuresType": "U_MARGINED",
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": options.futures_rest_weight_limit},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": q, "marginAvailable": True, "autoAssetExchange": "-10000"}
                   for q in sorted({m.spec.quote for m in markets})],
        "symbols": [futures_symbol(m, options.start_ms, _status(m, delisted)) for m in markets],
    }
