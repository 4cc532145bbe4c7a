"""The matching engine's pure rules: parameter checks, symbol filters, and
walking the book. No I/O, no clock: the account (``userdata.py``) calls these
with the book and the time it has.

Sources (github binance/binance-spot-api-docs):
- rest-api.md "New order (TRADE)": mandatory parameters per order type,
  ``newOrderRespType`` defaults, ``quoteOrderQty``.
- filters.md: PRICE_FILTER, LOT_SIZE, MARKET_LOT_SIZE, NOTIONAL; errors.md
  "-1013 INVALID_MESSAGE" ("Filter failure: <FILTER>") and "-2010 NEW_ORDER_REJECTED".
- USD-M "New Order (TRADE)" and "Error Codes" (-1111, -2021, -4164).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from .rest import RestError, mandatory
from .streams import SPOT

ZERO = Decimal(0)

SPOT_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
FUTURES_TYPES = ("LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET")
SPOT_TIFS = ("GTC", "IOC", "FOK")
FUTURES_TIFS = ("GTC", "IOC", "FOK", "GTX")


@dataclass(frozen=True)
class Kind:
    """What an order type needs and does (rest-api.md "Other info" table)."""

    has_price: bool      # a limit price (after any trigger)
    has_stop: bool       # waits for stopPrice
    needs_tif: bool
    stop_loss: bool      # stop side: SELL triggers at or below stopPrice, BUY at or above


_KINDS = {
    "LIMIT": Kind(True, False, True, False),
    "LIMIT_MAKER": Kind(True, False, False, False),
    "MARKET": Kind(False, False, False, False),
    "STOP_LOSS": Kind(False, True, False, True),
    "STOP_LOSS_LIMIT": Kind(True, True, True, True),
    "TAKE_PROFIT": Kind(False, True, False, False),
    "TAKE_PROFIT_LIMIT": Kind(True, True, True, False),
    # USD-M: STOP/TAKE_PROFIT carry a price, the *_MARKET ones do not.
    "STOP": Kind(True, True, True, True),
    "STOP_MARKET": Kind(False, True, False, True),
    "TAKE_PROFIT_MARKET": Kind(False, True, False, False),
}


def kind_of(otype: str, market: str) -> Kind:
    if market == SPOT:
        if otype == "TAKE_PROFIT":
            return _KINDS["TAKE_PROFIT"]
        if otype in SPOT_TYPES:
            return _KINDS[otype]
    else:
        if otype == "TAKE_PROFIT":   # USD-M TAKE_PROFIT is the limit variant
            return Kind(True, True, True, False)
        if otype in FUTURES_TYPES:
            return _KINDS[otype]
    raise RestError(400, -1116, "Invalid orderType.")


def decimal_param(params: Mapping[str, str], name: str) -> Decimal | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RestError(400, -1100, f"Illegal characters found in parameter '{name}'; "
                                    "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.") from None
    if not value.is_finite() or value < 0:
        raise RestError(400, -1100, f"Illegal characters found in parameter '{name}'; "
                                    "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
    return value


@dataclass
class Request:
    """A validated new-order request."""

    side: str
    type: str
    kind: Kind
    tif: str
    qty: Decimal | None
    quote_qty: Decimal | None
    price: Decimal
    stop: Decimal
    resp_type: str


def parse_new_order(params: Mapping[str, str], market: str) -> Request:
    """Mandatory and forbidden parameters per order type (rest-api.md "New order")."""
    side = params.get("side") or ""
    if not side:
        raise mandatory("side")
    if side not in ("BUY", "SELL"):
        raise RestError(400, -1100 if market == SPOT else -1117, "Invalid side.")
    otype = params.get("type") or ""
    if not otype:
        raise mandatory("type")
    kind = kind_of(otype, market)
    qty, quote_qty = decimal_param(params, "quantity"), decimal_param(params, "quoteOrderQty")
    price, stop = decimal_param(params, "price"), decimal_param(params, "stopPrice")
    tif = params.get("timeInForce") or ""
    if otype == "MARKET" and market == SPOT:
        # "MARKET orders using quoteOrderQty specifies the amount the user wants to spend (when
        # buying) or receive (when selling)"; exactly one of the two (-1102 / -1106 otherwise).
        if qty is None and quote_qty is None:
            raise RestError(400, -1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!")
        if qty is not None and quote_qty is not None:
            raise RestError(400, -1106, "Parameter 'quoteOrderQty' sent when not required.")
    else:
        if quote_qty is not None:
            raise RestError(400, -1106, "Parameter 'quoteOrderQty' sent when not required.")
        if qty is None:
            raise mandatory("quantity")
    if kind.has_price and price is None:
        raise mandatory("price")
    if kind.has_stop and stop is None:
        raise mandatory("stopPrice")
    if kind.needs_tif and not tif:
        raise mandatory("timeInForce")
    if market == SPOT:
        # Binance rejects parameters that do not belong to the type (errors.md -1106).
        if not kind.has_price and price is not None:
            raise RestError(400, -1106, "Parameter 'price' sent when not required.")
        if not kind.needs_tif and tif:
            raise RestError(400, -1106, "Parameter 'timeInForce' sent when not required.")
        if not kind.has_stop and stop is not None:
            raise RestError(400, -1106, "Parameter 'stopPrice' sent when not required.")
    tifs = SPOT_TIFS if market == SPOT else FUTURES_TIFS
    if kind.needs_tif and tif not in tifs:
        raise RestError(400, -1115, "Invalid timeInForce.")
    if not kind.needs_tif:
        tif = "GTC" if otype == "LIMIT_MAKER" or market != SPOT else ""
    resp_type = params.get("newOrderRespType") or ""
    if resp_type and resp_type not in ("ACK", "RESULT", "FULL" if market == SPOT else "RESULT"):
        raise RestError(400, -1100 if market == SPOT else -1116, "Invalid newOrderRespType.")
    if not resp_type:
        # Spot: "MARKET and LIMIT order types default to FULL; all other orders default to ACK."
        # USD-M: "newOrderRespType ... default ACK".
        resp_type = ("FULL" if otype in ("MARKET", "LIMIT") else "ACK") if market == SPOT else "ACK"
    return Request(side, otype, kind, tif, qty, quote_qty, price or ZERO, stop or ZERO, resp_type)


# -- filters --------------------------------------------------------------------------


def _fail(market: str, name: str, futures_code: int, futures_msg: str) -> RestError:
    if market == SPOT:
        return RestError(400, -1013, f"Filter failure: {name}")
    return RestError(400, futures_code, futures_msg)


def _steps(value: Decimal, minimum: Decimal, step: Decimal) -> bool:
    return step == 0 or (value - minimum) % step == 0


def check_price(value: Decimal, filters: list[dict[str, Any]], market: str) -> None:
    """PRICE_FILTER (filters.md): minPrice <= price <= maxPrice, (price-minPrice) % tickSize == 0."""
    f = _filter(filters, "PRICE_FILTER")
    lo, hi, tick = Decimal(f["minPrice"]), Decimal(f["maxPrice"]), Decimal(f["tickSize"])
    if market != SPOT and value.as_tuple().exponent < tick.normalize().as_tuple().exponent:
        raise RestError(400, -1111, "Precision is over the maximum defined for this asset.")
    if value <= 0 and market != SPOT:
        raise RestError(400, -4001, "Price less than 0.")
    if lo and value < lo:
        raise _fail(market, "PRICE_FILTER", -4013, "Price less than min price.")
    if hi and value > hi:
        raise _fail(market, "PRICE_FILTER", -4016, "Price greater than max price.")
    if not _steps(value, lo, tick):
        raise _fail(market, "PRICE_FILTER", -4014, "Price not increased by tick size.")


def check_qty(value: Decimal, filters: list[dict[str, Any]], market: str, is_market: bool) -> None:
    """LOT_SIZE, or MARKET_LOT_SIZE for MARKET orders (filters.md)."""
    name = "MARKET_LOT_SIZE" if is_market and _has(filters, "MARKET_LOT_SIZE") else "LOT_SIZE"
    f = _filter(filters, name)
    lo, hi, step = Decimal(f["minQty"]), Decimal(f["maxQty"]), Decimal(f["stepSize"])
    if market != SPOT and step and value.as_tuple().exponent < step.normalize().as_tuple().exponent:
        raise RestError(400, -1111, "Precision is over the maximum defined for this asset.")
    if value < lo or value <= 0:
        raise _fail(market, name, -4003 if value <= 0 else -4004,
                    "Quantity less than or equal to zero." if value <= 0 else "Quantity less than min quantity.")
    if value > hi:
        raise _fail(market, name, -4005, "Quantity greater than max quantity.")
    if not _steps(value, lo, step):
        raise _fail(market, name, -1111, "Precision is over the maximum defined for this asset.")


def check_notional(notional: Decimal, filters: list[dict[str, Any]], market: str, is_market: bool) -> None:
    """Spot NOTIONAL (filters.md; MARKET orders use the average price, applyMinToMarket);
    USD-M MIN_NOTIONAL (-4164)."""
    if market == SPOT:
        f = _filter(filters, "NOTIONAL")
        if (not is_market or f["applyMinToMarket"]) and notional < Decimal(f["minNotional"]):
            raise _fail(market, "NOTIONAL", 0, "")
        if (not is_market or f["applyMaxToMarket"]) and notional > Decimal(f["maxNotional"]):
            raise _fail(market, "NOTIONAL", 0, "")
        return
    minimum = Decimal(_filter(filters, "MIN_NOTIONAL")["notional"])
    if notional < minimum:
        raise RestError(400, -4164, f"Order's notional must be no smaller than {minimum.normalize()} "
                                    "(unless you choose reduce only).")


def check_open_orders(open_count: int, filters: list[dict[str, Any]], market: str) -> None:
    """MAX_NUM_ORDERS: open orders per symbol (filters.md; USD-M -2025)."""
    f = _filter(filters, "MAX_NUM_ORDERS")
    limit = f.get("maxNumOrders", f.get("limit"))
    if open_count >= int(limit):
        if market == SPOT:
            raise RestError(400, -1013, "Filter failure: MAX_NUM_ORDERS")
        raise RestError(400, -2025, "Reach max open order limit.")


def _has(filters: list[dict[str, Any]], name: str) -> bool:
    return any(f["filterType"] == name for f in filters)


def _filter(filters: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(f for f in filters if f["filterType"] == name)


# -- the book --------------------------------------------------------------------------


def walk(levels: Iterable[tuple[Decimal, Decimal]], side: str, qty: Decimal | None, quote: Decimal | None,
         limit: Decimal | None, step: Decimal) -> list[tuple[Decimal, Decimal]]:
    """Fills (price, qty) taking ``levels`` best first: one fill per level, up to
    the limit price, until ``qty`` (or ``quote`` worth, in whole steps) is done."""
    fills: list[tuple[Decimal, Decimal]] = []
    left_qty, left_quote = qty, quote
    for price, available in levels:
        if limit is not None and (price > limit if side == "BUY" else price < limit):
            break
        if left_qty is not None:
            take = min(available, left_qty)
        else:
            assert left_quote is not None
            take = min(available, (left_quote / price).quantize(step, rounding=ROUND_DOWN) if step
                       else left_quote / price)
        if take <= 0:
            break
        fills.append((price, take))
        if left_qty is not None:
            left_qty -= take
            if left_qty <= 0:
                break
        else:
            assert left_quote is not None
            left_quote -= take * price
    return fills


def triggered(stop_loss: bool, side: str, stop: Decimal, last: Decimal) -> bool:
    """Whether a stop order's trigger is met by the last price (enums.md order types):
    STOP_LOSS sells when the price falls to stopPrice, buys when it rises to it;
    TAKE_PROFIT the other way round."""
    rising = (side == "BUY") == stop_loss
    return last >= stop if rising else last <= stop
