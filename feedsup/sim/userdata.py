"""User data: a simulated account per market, its orders and its event streams.

Spot: the WebSocket API (``/ws-api/v3``) with ``userDataStream.subscribe.signature``
delivers ``outboundAccountPosition``, ``balanceUpdate`` and ``executionReport``
as ``{"subscriptionId": N, "event": {...}}``; signed REST places orders and
returns the account and open orders. Futures: the listenKey lifecycle on
``/fapi/v1/listenKey`` (validity on the simulated clock) and ``/private``
connections receiving ``ACCOUNT_UPDATE``, ``ORDER_TRADE_UPDATE`` and
``listenKeyExpired``; signed ``GET /fapi/v2|v3/account`` and
``GET /fapi/v1/openOrders`` (bodies in ``futures_account.py``).

Every change of a spot balance (free or locked) sends an
``outboundAccountPosition`` whose ``u`` is also the account's ``updateTime``.

Orders follow the matching engine's rules (``orders.py``): the symbol filters
of the simulator's own exchangeInfo, timeInForce GTC/IOC/FOK (and USD-M GTX),
takers walking the simulated book level by level (one trade per level), stop
orders triggering on the last price; a resting limit order fills at its price
when the market reaches it.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Mapping

import orjson
from aiohttp import web

from .conn import Connection
from .decimals import d8, plain
from .exchange_info import futures_symbol, spot_symbol
from .futures_account import (futures_account, futures_open_order, leverage_bracket, position_risk,
                              position_risk_v3)
from .hub import Hub
from .limits import OrderCounter
from .market import SymbolMarket
from .options import SimOptions
from .orders import check_notional, check_open_orders, check_price, check_qty, parse_new_order, triggered, walk
from .rest import RestError, mandatory
from .signing import ApiKeys, verify_rest
from .streams import SPOT, USDM
from .wsapi import ws_api_handler

if TYPE_CHECKING:
    from .server import SimCore

ZERO = Decimal(0)
# Extra response headers a handler leaves for server.py (X-MBX-ORDER-COUNT-*).
SIM_HEADERS = web.RequestKey("sim_headers", dict)
OPEN = ("NEW", "PARTIALLY_FILLED")


@dataclass
class Order:
    symbol: str
    order_id: int
    client_id: str
    side: str
    type: str
    tif: str
    qty: Decimal
    price: Decimal
    created: int
    status: str = "NEW"
    filled: Decimal = ZERO
    quote: Decimal = ZERO
    updated: int = 0
    trades: list[dict[str, Any]] = field(default_factory=list)
    stop: Decimal = ZERO
    quote_qty: Decimal = ZERO       # origQuoteOrderQty (spot MARKET by quote)
    working: bool = True            # False while a stop order waits for its trigger
    working_time: int = -1
    reserved: Decimal = ZERO        # spot: what this order still holds locked
    has_price: bool = True
    stop_loss: bool = False
    book_seen: int = 0              # the book's update id when last matched


class Account:
    """Balances and orders of one market; orders take the simulated book level by
    level (the simulated market's own liquidity is not consumed by them)."""

    def __init__(self, market: str, hub: Hub) -> None:
        self.market = market
        self.hub = hub
        self.balances: dict[str, list[Decimal]] = {}   # asset -> [free, locked]
        for m in hub.markets[market].values():
            self.balances.setdefault(m.spec.quote, [Decimal(100_000), ZERO])
            if market == SPOT:
                self.balances.setdefault(m.spec.base, [Decimal(10), ZERO])
        self.orders: dict[int, Order] = {}
        self.positions: dict[str, list[Decimal]] = {}  # futures: symbol -> [amount, entry price]
        # When balances last changed: the spot account's ``updateTime`` (and the
        # ``u`` of the outboundAccountPosition saying so); futures keep one per
        # asset and per position, as GET /fapi/v2/account reports them.
        self.update_time = hub.now_ms
        self.asset_times: dict[str, int] = {a: hub.now_ms for a in self.balances}
        self.position_times: dict[str, int] = {}
        self._next_order = 1_000_001
        self._next_trade = 9_000_001
        self._next_exec = 1
        self.my_trades: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, event: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(event)

    def market_of(self, symbol: str | None) -> SymbolMarket:
        if not symbol:
            raise mandatory("symbol")
        m = self.hub.market(self.market, symbol)
        if m is None:
            raise RestError(400, -1121, "Invalid symbol.")
        return m

    def price_of(self, m: SymbolMarket, ticks: int) -> Decimal:
        return Decimal(ticks).scaleb(-m.price_decimals)

    def filters_of(self, m: SymbolMarket) -> list[dict[str, Any]]:
        # The very filters GET exchangeInfo advertises (filters.md).
        return spot_symbol(m)["filters"] if self.market == SPOT else futures_symbol(m, 0)["filters"]

    def levels(self, m: SymbolMarket, side: str) -> Iterator[tuple[Decimal, Decimal]]:
        """The book a taker on ``side`` walks, best first (lazily: a taker
        usually needs a level or two of thousands)."""
        book = m.asks if side == "BUY" else m.bids
        for ticks in sorted(book, reverse=side != "BUY"):
            units = book[ticks]
            if units > 0:
                yield self.price_of(m, ticks), Decimal(units).scaleb(-m.qty_decimals)

    def step_of(self, m: SymbolMarket) -> Decimal:
        return Decimal(1).scaleb(-m.qty_decimals)

    # -- placing orders ---------------------------------------------------------------

    def place(self, params: Mapping[str, str], now: int, test: bool = False) -> tuple[Order | None, dict[str, Any]]:
        """Validate and (unless ``test``) place an order. Returns the order and the
        futures ACK snapshot (its state when accepted, before any fill)."""
        m = self.market_of(params.get("symbol"))
        req = parse_new_order(params, self.market)
        kind = req.kind
        filters = self.filters_of(m)
        if kind.has_price:
            check_price(req.price, filters, self.market)
        if kind.has_stop:
            check_price(req.stop, filters, self.market)
        is_market = not kind.has_price
        if req.qty is not None:
            check_qty(req.qty, filters, self.market, is_market)
        ref = req.price if kind.has_price else (req.stop if kind.has_stop else self.avg_price(m))
        notional = req.qty * ref if req.qty is not None else (req.quote_qty or ZERO)
        check_notional(notional, filters, self.market, is_market)
        check_open_orders(len(self.open_orders(m.spec.symbol)), filters, self.market)
        client_id = params.get("newClientOrderId") or _client_id()
        if any(o.client_id == client_id and o.status in OPEN for o in self.orders.values()):
            raise RestError(400, -2010 if self.market == SPOT else -4116,
                            "Duplicate order sent." if self.market == SPOT else "ClientOrderId is duplicated.")
        last = self.price_of(m, m.last_price)
        if kind.has_stop and triggered(kind.stop_loss, req.side, req.stop, last):
            if self.market == SPOT:
                raise RestError(400, -2010, "Stop price would trigger immediately.")
            raise RestError(400, -2021, "Order would immediately trigger.")
        fills = [] if kind.has_stop else self._taker_fills(m, req.side, req.qty, req.quote_qty,
                                                            req.price if kind.has_price else None, req.tif)
        if req.type == "LIMIT_MAKER" and fills:
            raise RestError(400, -2010, "Order would immediately match and take.")
        if test:
            return None, {}
        order = Order(m.spec.symbol, self._next_order, client_id, req.side, req.type, req.tif,
                      req.qty if req.qty is not None else sum((q for _, q in fills), ZERO), req.price, now,
                      updated=now, stop=req.stop, quote_qty=req.quote_qty or ZERO, working=not kind.has_stop,
                      working_time=-1 if kind.has_stop else now, has_price=kind.has_price, stop_loss=kind.stop_loss)
        if req.tif == "GTX" and fills:
            fills = []   # USD-M post-only: a crossing GTX order is accepted and expires at once
        self._reserve(m, order, fills)
        order.book_seen = m.update_id
        self._next_order += 1
        self.orders[order.order_id] = order
        snapshot = futures_order_response(order) if self.market != SPOT else {}
        self.report(order, "NEW", now)
        self._execute(m, order, fills, now, maker=False)
        return order, snapshot

    def avg_price(self, m: SymbolMarket) -> Decimal:
        """GET /api/v3/avgPrice, approximated by the mid price (the simulator keeps no
        5-minute trade window)."""
        return self.price_of(m, m.center)

    def _taker_fills(self, m: SymbolMarket, side: str, qty: Decimal | None, quote: Decimal | None,
                     limit: Decimal | None, tif: str) -> list[tuple[Decimal, Decimal]]:
        fills = walk(self.levels(m, side), side, qty, quote, limit, self.step_of(m))
        if tif == "FOK" and qty is not None and sum((q for _, q in fills), ZERO) < qty:
            return []   # "Fill or Kill": all or nothing (enums.md timeInForce)
        return fills

    def _rests(self, order: Order) -> bool:
        return order.has_price and order.tif in ("GTC", "GTX", "")

    def _reserve(self, m: SymbolMarket, order: Order, fills: list[tuple[Decimal, Decimal]]) -> None:
        """Spot: lock what the order may spend, or refuse it (-2010)."""
        if self.market != SPOT:
            return  # futures margin is not modelled: the wallet only pays commission
        if order.side == "BUY":
            filled = sum((q for _, q in fills), ZERO)
            rest = order.qty - filled if self._rests(order) or not order.working else ZERO
            amount = sum((p * q for p, q in fills), ZERO) + rest * (order.price if order.has_price else order.stop)
            asset = m.spec.quote
        else:
            amount, asset = order.qty, m.spec.base
        free_locked = self.balances.setdefault(asset, [ZERO, ZERO])
        if free_locked[0] < amount:
            raise RestError(400, -2010, "Account has insufficient balance for requested action.")
        free_locked[0] -= amount
        free_locked[1] += amount
        order.reserved = amount

    def _execute(self, m: SymbolMarket, order: Order, fills: list[tuple[Decimal, Decimal]], now: int,
                 maker: bool) -> None:
        """Book the fills (one trade each), then expire what may not rest."""
        for price, qty in fills:
            self._fill(m, order, price, qty, now, maker)
        if order.status in OPEN and order.working and not self._rests(order):
            # IOC remainder, FOK not fillable, MARKET beyond the book (enums.md).
            order.status, order.updated = "EXPIRED", now
            self.report(order, "EXPIRED", now)
        elif order.status in OPEN and order.tif == "GTX" and fills == [] and self._crosses(m, order):
            order.status, order.updated = "EXPIRED", now
            self.report(order, "EXPIRED", now)
        released = self._release(m, order)
        if fills:
            self.position_changed(m, now)
        elif released or (self.market == SPOT and order.status in OPEN and order.reserved):
            self.position_changed(None, now, [m.spec.quote if order.side == "BUY" else m.spec.base])

    def _crosses(self, m: SymbolMarket, order: Order) -> bool:
        ask, bid = self.price_of(m, m.center + 1), self.price_of(m, m.center - 1)
        return order.price >= ask if order.side == "BUY" else order.price <= bid

    def _release(self, m: SymbolMarket, order: Order) -> bool:
        """Spot: unlock what the order no longer needs; True if anything moved."""
        if self.market != SPOT:
            return False
        left = order.qty - order.filled if order.status in OPEN else ZERO
        keep = left * (order.price if order.has_price else order.stop) if order.side == "BUY" else left
        excess = order.reserved - keep
        if excess <= 0:
            return False
        asset = m.spec.quote if order.side == "BUY" else m.spec.base
        self.balances[asset][0] += excess
        self.balances[asset][1] -= excess
        order.reserved = keep
        return True

    def match(self, m: SymbolMarket, order: Order, now: int) -> None:
        """A resting order against the moving market: stops trigger on the last
        price; a resting limit fills at its own price once the market reaches it."""
        if order.status not in OPEN:
            return
        if not order.working:
            if not triggered(order.stop_loss, order.side, order.stop, self.price_of(m, m.last_price)):
                return
            order.working, order.working_time, order.book_seen = True, now, m.update_id
            remaining = order.qty - order.filled
            fills = self._taker_fills(m, order.side, remaining, None, order.price if order.has_price else None,
                                      order.tif)
            self._execute(m, order, fills, now, maker=False)
            return
        if not order.has_price or m.update_id == order.book_seen:
            # The levels it crossed when placed were taken by it: only a book that
            # changed since can fill it (our fills do not remove simulated liquidity).
            return
        order.book_seen = m.update_id
        bid, ask = self.price_of(m, m.center - 1), self.price_of(m, m.center + 1)
        if (order.side == "BUY" and order.price >= ask) or (order.side == "SELL" and order.price <= bid):
            self._execute(m, order, [(order.price, order.qty - order.filled)], now, maker=True)

    def _fill(self, m: SymbolMarket, order: Order, price: Decimal, qty: Decimal, now: int, maker: bool) -> None:
        order.filled += qty
        order.quote += qty * price
        order.status = "FILLED" if order.filled >= order.qty else "PARTIALLY_FILLED"
        order.updated = now
        received = (m.spec.base if order.side == "BUY" else m.spec.quote) if self.market == SPOT else m.spec.quote
        trade = {"price": price, "qty": qty, "tradeId": self._next_trade, "maker": maker, "asset": received}
        self._next_trade += 1
        order.trades.append(trade)
        self.my_trades.append({"symbol": order.symbol, "id": trade["tradeId"], "orderId": order.order_id,
                               "orderListId": -1, "price": d8(price), "qty": d8(qty), "quoteQty": d8(qty * price),
                               "commission": d8(ZERO), "commissionAsset": received, "time": now,
                               "isBuyer": order.side == "BUY", "isMaker": maker, "isBestMatch": True})
        self._settle(m, order, qty, price)
        self.report(order, "TRADE", now, trade)

    def _settle(self, m: SymbolMarket, order: Order, qty: Decimal, price: Decimal) -> None:
        if self.market == SPOT:
            base, quote = self.balances.setdefault(m.spec.base, [ZERO, ZERO]), self.balances[m.spec.quote]
            if order.side == "BUY":
                quote[1] -= qty * price
                order.reserved -= qty * price
                base[0] += qty
            else:
                base[1] -= qty
                order.reserved -= qty
                quote[0] += qty * price
            return
        amount, entry = self.positions.get(m.spec.symbol, [ZERO, ZERO])
        signed = qty if order.side == "BUY" else -qty
        new_amount = amount + signed
        if new_amount == 0:
            entry = ZERO
        elif amount == 0 or (amount > 0) == (signed > 0):
            entry = (abs(amount) * entry + qty * price) / abs(new_amount)
        self.positions[m.spec.symbol] = [new_amount, entry]

    def find(self, params: Mapping[str, str], m: SymbolMarket) -> Order | None:
        """By orderId, else origClientOrderId; when both are sent they must agree
        (rest-api.md "Cancel order": "orderId is searched first, then the
        origClientOrderId from that result is checked against that order")."""
        oid, cid = params.get("orderId", ""), params.get("origClientOrderId")
        if not oid and not cid:
            raise RestError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if oid:
            if not oid.isdigit():
                raise RestError(400, -1100, "Illegal characters found in parameter 'orderId'; "
                                            "legal range is '^[0-9]{1,20}$'.")
            order = self.orders.get(int(oid))
            if order is not None and cid and order.client_id != cid:
                order = None
        else:
            order = next((o for o in reversed(list(self.orders.values())) if o.client_id == cid), None)
        return order if order is not None and order.symbol == m.spec.symbol else None

    def cancel(self, params: Mapping[str, str], now: int) -> tuple[Order, str]:
        """Cancel; returns the order and the cancel's own client id (``newClientOrderId``)."""
        m = self.market_of(params.get("symbol"))
        order = self.find(params, m)
        if order is None or order.status not in OPEN:
            raise RestError(400, -2011, "Unknown order sent.")
        cancel_id = params.get("newClientOrderId") or _client_id()
        order.status, order.updated = "CANCELED", now
        self.report(order, "CANCELED", now, cancel_id=cancel_id)
        if self._release(m, order):   # futures: no balance or position changes, so no ACCOUNT_UPDATE
            self.position_changed(None, now, [m.spec.quote if order.side == "BUY" else m.spec.base])
        return order, cancel_id

    def tick(self, now: int) -> None:
        for order in list(self.orders.values()):
            if order.status in OPEN:
                self.match(self.market_of(order.symbol), order, now)
        if len(self.orders) > 10_000:  # keep finished orders bounded
            for oid in [o for o, v in self.orders.items() if v.status not in OPEN][:5000]:
                del self.orders[oid]

    def open_orders(self, symbol: str | None) -> list[Order]:
        return [o for o in self.orders.values() if o.status in OPEN
                and (symbol is None or o.symbol == symbol.upper())]

    def deposit(self, asset: str, delta: Decimal, now: int) -> None:
        free_locked = self.balances.setdefault(asset.upper(), [ZERO, ZERO])
        if free_locked[0] + delta < 0:
            raise RestError(400, -2010, "Account has insufficient balance for requested action.")
        free_locked[0] += delta
        if self.market == SPOT:
            self.emit({"e": "balanceUpdate", "E": now, "a": asset.upper(), "d": d8(delta), "T": now})
        self.position_changed(None, now, [asset.upper()])

    # -- events (spot and futures shapes) --------------------------------------------------

    def report(self, order: Order, exec_type: str, now: int, trade: dict[str, Any] | None = None,
               cancel_id: str | None = None) -> None:
        if self.market == SPOT:
            exec_id = self._next_exec   # user-data-stream.md: "I": execution id, unique per report
            self._next_exec += 1
            self.emit(spot_execution_report(order, exec_type, now, trade, exec_id, cancel_id))
        else:
            self.emit(futures_order_update(order, exec_type, now, trade, cancel_id))

    def position_changed(self, m: SymbolMarket | None, now: int, assets: list[str] | None = None) -> None:
        self.update_time = now
        if self.market == SPOT:
            if m is not None:
                assets = [m.spec.base, m.spec.quote]
            balances = [{"a": a, "f": d8(self.balances[a][0]), "l": d8(self.balances[a][1])} for a in assets or []]
            self.emit({"e": "outboundAccountPosition", "E": now, "u": now, "B": balances})
            return
        for asset in assets or []:
            self.asset_times[asset] = now
        positions = []
        if m is not None:
            self.position_times[m.spec.symbol] = now
            amount, entry = self.positions.get(m.spec.symbol, [ZERO, ZERO])
            positions.append({"s": m.spec.symbol, "pa": plain(amount), "ep": d8(entry), "bep": d8(entry), "cr": "0",
                              "up": "0", "mt": "cross", "iw": "0", "ps": "BOTH"})
        wallets = [{"a": a, "wb": d8(v[0]), "cw": d8(v[0]), "bc": "0"} for a, v in self.balances.items()]
        self.emit({"e": "ACCOUNT_UPDATE", "E": now, "T": now,
                   "a": {"m": "ORDER" if m is not None else "DEPOSIT", "B": wallets, "P": positions}})


def _client_id() -> str:
    # Binance generates 22-character ids for orders (and cancels) sent without one.
    return "x-sim" + secrets.token_urlsafe(13)[:17]


def spot_execution_report(o: Order, exec_type: str, now: int, trade: dict[str, Any] | None, exec_id: int = 0,
                          cancel_id: str | None = None) -> dict[str, Any]:
    last_qty = trade["qty"] if trade else ZERO
    last_price = trade["price"] if trade else ZERO
    return {
        # user-data-stream.md "Order Update": on a cancel, "c" is the cancel's client id
        # and "C" the original client order id; "C" is empty otherwise.
        "e": "executionReport", "E": now, "s": o.symbol, "c": cancel_id or o.client_id, "S": o.side, "o": o.type,
        "f": o.tif or "GTC", "q": d8(o.qty), "p": d8(o.price), "P": d8(o.stop), "F": d8(ZERO), "g": -1,
        "C": o.client_id if cancel_id else "",
        "x": exec_type, "X": o.status, "r": "NONE", "i": o.order_id, "l": d8(last_qty), "z": d8(o.filled),
        "L": d8(last_price), "n": d8(ZERO), "N": trade["asset"] if trade else None, "T": now,
        "t": trade["tradeId"] if trade else -1, "I": exec_id, "w": o.status in OPEN and o.working,
        "m": bool(trade and trade["maker"]), "M": False, "O": o.created, "Z": d8(o.quote),
        "Y": d8(last_qty * last_price), "Q": d8(o.quote_qty), "W": o.working_time, "V": "EXPIRE_MAKER",
    }


def futures_order_update(o: Order, exec_type: str, now: int, trade: dict[str, Any] | None,
                         cancel_id: str | None = None) -> dict[str, Any]:
    last_qty = trade["qty"] if trade else ZERO
    last_price = trade["price"] if trade else ZERO
    avg = (o.quote / o.filled) if o.filled else ZERO
    return {"e": "ORDER_TRADE_UPDATE", "E": now, "T": now, "o": {
        "s": o.symbol, "c": o.client_id, "S": o.side, "o": o.type, "f": o.tif or "GTC", "q": plain(o.qty),
        "p": plain(o.price), "ap": d8(avg), "sp": plain(o.stop) if o.stop else "0", "x": exec_type, "X": o.status,
        "i": o.order_id, "l": plain(last_qty), "z": plain(o.filled), "L": plain(last_price), "n": "0", "N": "USDT",
        "T": now, "t": trade["tradeId"] if trade else 0, "b": "0", "a": "0", "m": bool(trade and trade["maker"]),
        "R": False, "wt": "CONTRACT_PRICE", "ot": o.type, "ps": "BOTH", "cp": False, "rp": "0", "pP": False,
        "si": 0, "ss": 0, "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0}}


def spot_order_json(o: Order) -> dict[str, Any]:
    """GET /api/v3/order, openOrders and allOrders rows."""
    return {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.client_id,
            "price": d8(o.price), "origQty": d8(o.qty), "executedQty": d8(o.filled),
            "cummulativeQuoteQty": d8(o.quote), "status": o.status, "timeInForce": o.tif or "GTC", "type": o.type,
            "side": o.side, "stopPrice": d8(o.stop), "icebergQty": d8(ZERO), "time": o.created,
            "updateTime": o.updated, "isWorking": o.working, "workingTime": o.working_time,
            "origQuoteOrderQty": d8(o.quote_qty), "selfTradePreventionMode": "EXPIRE_MAKER"}


def spot_order_response(o: Order, resp_type: str = "FULL") -> dict[str, Any]:
    """POST /api/v3/order in its three shapes (rest-api.md "New order": ACK, RESULT, FULL)."""
    body: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1,
                            "clientOrderId": o.client_id, "transactTime": o.created}
    if resp_type == "ACK":
        return body
    body.update({"price": d8(o.price), "origQty": d8(o.qty), "executedQty": d8(o.filled),
                 "origQuoteOrderQty": d8(o.quote_qty), "cummulativeQuoteQty": d8(o.quote), "status": o.status,
                 "timeInForce": o.tif or "GTC", "type": o.type, "side": o.side})
    if o.stop:
        body["stopPrice"] = d8(o.stop)
    body.update({"workingTime": o.working_time, "selfTradePreventionMode": "EXPIRE_MAKER"})
    if resp_type == "FULL":
        body["fills"] = [{"price": d8(t["price"]), "qty": d8(t["qty"]), "commission": d8(ZERO),
                          "commissionAsset": t["asset"], "tradeId": t["tradeId"]} for t in o.trades]
    return body


def spot_cancel_response(o: Order, cancel_id: str, now: int) -> dict[str, Any]:
    """DELETE /api/v3/order (rest-api.md "Cancel order"): ``origClientOrderId`` is the
    order's, ``clientOrderId`` the cancel's own."""
    return {"symbol": o.symbol, "origClientOrderId": o.client_id, "orderId": o.order_id, "orderListId": -1,
            "clientOrderId": cancel_id, "transactTime": now, "price": d8(o.price), "origQty": d8(o.qty),
            "executedQty": d8(o.filled), "origQuoteOrderQty": d8(o.quote_qty), "cummulativeQuoteQty": d8(o.quote),
            "status": o.status, "timeInForce": o.tif or "GTC", "type": o.type, "side": o.side,
            "selfTradePreventionMode": "EXPIRE_MAKER"}


def futures_order_response(o: Order) -> dict[str, Any]:
    avg = (o.quote / o.filled) if o.filled else ZERO
    return {"orderId": o.order_id, "symbol": o.symbol, "status": o.status, "clientOrderId": o.client_id,
            "price": plain(o.price), "avgPrice": d8(avg), "origQty": plain(o.qty), "executedQty": plain(o.filled),
            "cumQty": plain(o.filled), "cumQuote": d8(o.quote), "timeInForce": o.tif or "GTC", "type": o.type,
            "reduceOnly": False, "closePosition": False, "side": o.side, "positionSide": "BOTH",
            "stopPrice": plain(o.stop) if o.stop else "0", "workingType": "CONTRACT_PRICE", "priceProtect": False,
            "origType": o.type, "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0,
            "updateTime": o.updated}


class FuturesUserData:
    """listenKeys (simulated-clock validity) and the /private connections using them."""

    def __init__(self, options: SimOptions, account: Account) -> None:
        self.validity_ms = int(options.listen_key_validity * 1000)
        self.account = account
        self.keys: dict[str, int] = {}            # key -> valid until (sim ms)
        self.conns: dict[str, list[Connection]] = {}
        account.listeners.append(self._publish)

    def create(self, now: int) -> str:
        key = next(iter(self.keys), None) or secrets.token_urlsafe(48)[:64]
        self.keys[key] = now + self.validity_ms   # one key per account: POST again extends it
        return key

    def keepalive(self, now: int) -> None:
        if not self.keys:
            raise RestError(400, -1125, "This listenKey does not exist.")
        for key in self.keys:
            self.keys[key] = now + self.validity_ms

    def delete(self) -> None:
        for key in list(self.keys):
            del self.keys[key]
            for conn in self.conns.pop(key, []):
                conn.close_soon(1000, "listenKey deleted")

    def key_valid(self, key: str, now: int) -> bool:
        return key in self.keys and now < self.keys[key]

    def attach(self, key: str, conn: Connection) -> None:
        self.conns.setdefault(key, []).append(conn)

    def detach(self, conn: Connection) -> None:
        for conns in self.conns.values():
            if conn in conns:
                conns.remove(conn)

    def expire(self, key: str | None, now: int) -> list[int]:
        hit: list[int] = []
        for k in [k for k in self.keys if key is None or k == key]:
            del self.keys[k]
            event = orjson.dumps({"e": "listenKeyExpired", "E": now, "listenKey": k})
            for conn in self.conns.pop(k, []):
                conn.push("listenKeyExpired", event, event)
                hit.append(conn.id)
        return hit

    def tick(self, now: int) -> None:
        for key in [k for k, until in self.keys.items() if now >= until]:
            self.expire(key, now)

    def _publish(self, event: dict[str, Any]) -> None:
        raw = orjson.dumps(event)
        for conns in self.conns.values():
            for conn in conns:
                wanted = _event_filter(conn)
                if wanted is None or event["e"] in wanted:
                    conn.push(event["e"], raw, raw)


def _event_filter(conn: Connection) -> set[str] | None:
    _, _, query = conn.path.partition("?")
    for part in query.split("&"):
        if part.startswith("events="):
            return set(part[len("events="):].split("/"))
    return None


class UserData:
    def __init__(self, options: SimOptions, hub: Hub) -> None:
        self.options = options
        self.hub = hub
        self.keys = ApiKeys.from_options(options)   # ValueError on a key Binance would refuse
        self.spot = Account(SPOT, hub)
        self.futures_account = Account(USDM, hub)
        self.futures = FuturesUserData(options, self.futures_account)
        self.sockets: set[web.WebSocketResponse] = set()   # open WebSocket API sessions
        # The ORDERS limits exchangeInfo advertises (spot 100/10s, 200000/day; USD-M 300/10s, 1200/min).
        self.order_counts = {SPOT: OrderCounter({"10S": (10.0, 100), "1D": (86_400.0, 200_000)}),
                             USDM: OrderCounter({"10S": (10.0, 300), "1M": (60.0, 1200)})}

    def count_order(self, request: web.Request, market: str) -> None:
        """Count a new order; the headers go on the response (server.py reads
        ``request["sim_headers"]``). Over a limit: 429 -1015 (errors.md)."""
        headers, over = self.order_counts[market].count(time.monotonic())
        request[SIM_HEADERS] = headers
        if over is not None:
            limit = self.order_counts[market].windows[over][1]
            unit = {"10S": "10 SECOND", "1D": "1 DAY", "1M": "1 MINUTE"}[over]
            raise RestError(429, -1015, f"Too many new orders; current limit is {limit} orders per {unit}.")

    def tick(self, sim_ms: int) -> None:
        self.spot.tick(sim_ms)
        self.futures_account.tick(sim_ms)
        self.futures.tick(sim_ms)

    def expire_keys(self, key: str | None) -> list[int]:
        return self.futures.expire(key, self.hub.advance())

    # -- REST ------------------------------------------------------------------------

    def rest_route(self, request: web.Request) -> tuple[Callable[..., Awaitable[Any]], Weight] | None:
        return _USER_ROUTES.get((request.method, request.path))

    async def signed_params(self, core: "SimCore", request: web.Request) -> dict[str, str]:
        body = (await request.read()).decode()  # cached by aiohttp, even after post()
        total = request.query_string + body
        return verify_rest(total, request.headers.get("X-MBX-APIKEY"), self.keys,
                           self.hub.advance(), int(time.time() * 1000),
                           self.options.recv_window_ms, query=request.query_string, body=body)

    # -- WebSocket API (spot): wsapi.py ---------------------------------------------------

    async def ws_api_handler(self, core: "SimCore", request: web.Request) -> web.StreamResponse:
        return await ws_api_handler(core, request)


# -- signed REST handlers: (core, market, request, query) -> body -------------------------------


async def _spot_order(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    core.userdata.count_order(request, SPOT)
    order, _ = core.userdata.spot.place(params, core.hub.advance())
    assert order is not None
    resp_type = params.get("newOrderRespType") or ("FULL" if order.type in ("MARKET", "LIMIT") else "ACK")
    return spot_order_response(order, resp_type)


async def _spot_order_test(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    # rest-api.md "Test new order": validated like a new order, never sent to the engine.
    params = await core.userdata.signed_params(core, request)
    core.userdata.spot.place(params, core.hub.advance(), test=True)
    if params.get("computeCommissionRates") == "true":
        rate = {"maker": "0.00000000", "taker": "0.00000000"}
        return {"standardCommissionForOrder": rate, "specialCommissionForOrder": rate,
                "taxCommissionForOrder": rate, "discount": {"enabledForAccount": False, "enabledForSymbol": False,
                                                            "discountAsset": "BNB", "discount": "0.00000000"}}
    return {}


async def _spot_cancel(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    now = core.hub.advance()
    order, cancel_id = core.userdata.spot.cancel(params, now)
    return spot_cancel_response(order, cancel_id, now)


async def _spot_cancel_all(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct, now = core.userdata.spot, core.hub.advance()
    m = acct.market_of(params.get("symbol"))
    out = []
    for o in acct.open_orders(m.spec.symbol):
        order, cancel_id = acct.cancel({"symbol": o.symbol, "orderId": str(o.order_id)}, now)
        out.append(spot_cancel_response(order, cancel_id, now))
    return out


async def _spot_get_order(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct = core.userdata.spot
    order = acct.find(params, acct.market_of(params.get("symbol")))
    if order is None:
        raise RestError(400, -2013, "Order does not exist.")
    return spot_order_json(order)


async def _spot_all_orders(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct = core.userdata.spot
    symbol = acct.market_of(params.get("symbol")).spec.symbol
    rows = [o for o in acct.orders.values() if o.symbol == symbol]
    return [spot_order_json(o) for o in _window(rows, params, "order_id", "orderId", "created")]


async def _spot_my_trades(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct = core.userdata.spot
    symbol = acct.market_of(params.get("symbol")).spec.symbol
    rows = [t for t in acct.my_trades if t["symbol"] == symbol]
    if params.get("orderId"):
        rows = [t for t in rows if str(t["orderId"]) == params["orderId"]]
    return _window(rows, params, "id", "fromId", "time")


def _window(rows: list[Any], params: Mapping[str, str], id_attr: str, from_param: str, time_attr: str) -> list[Any]:
    """startTime/endTime/fromId/limit as the list endpoints take them (oldest first)."""
    def get(row: Any, attr: str) -> int:
        return row[attr] if isinstance(row, dict) else getattr(row, attr)
    limit = min(int(params.get("limit") or 500), 1000)
    if params.get(from_param):
        rows = [r for r in rows if get(r, id_attr) >= int(params[from_param])]
        return rows[:limit]
    if params.get("startTime"):
        rows = [r for r in rows if get(r, time_attr) >= int(params["startTime"])]
    if params.get("endTime"):
        rows = [r for r in rows if get(r, time_attr) <= int(params["endTime"])]
    return rows[:limit] if params.get("startTime") else rows[-limit:]


async def _avg_price(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    # rest-api.md "Current average price"; public, not signed.
    m = core.userdata.spot.market_of(query.get("symbol"))
    now = core.hub.advance()
    return {"mins": 5, "price": d8(core.userdata.spot.avg_price(m)), "closeTime": now}


async def _spot_account(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    await core.userdata.signed_params(core, request)
    return spot_account_body(core.userdata.spot)


def spot_account_body(acct: Account) -> dict[str, Any]:
    """GET /api/v3/account, and the WebSocket API's account.status."""
    return {"makerCommission": 0, "takerCommission": 0, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": "0.00000000", "taker": "0.00000000", "buyer": "0.00000000",
                                "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": acct.update_time,   # the last balance change, not the request's time
            "accountType": "SPOT",
            "balances": [{"asset": a, "free": d8(v[0]), "locked": d8(v[1])} for a, v in sorted(acct.balances.items())],
            "permissions": ["SPOT"], "uid": 1}


async def _spot_open_orders(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    symbol = params.get("symbol")
    if symbol:
        core.userdata.spot.market_of(symbol)
    return [spot_order_json(o) for o in core.userdata.spot.open_orders(symbol)]


async def _futures_account(core: "SimCore", request: web.Request, version: int) -> Any:
    await core.userdata.signed_params(core, request)
    return futures_account(core.userdata.futures_account, version)


async def _futures_account_v2(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    return await _futures_account(core, request, 2)


async def _futures_account_v3(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    return await _futures_account(core, request, 3)


async def _futures_open_orders(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct = core.userdata.futures_account
    symbol = params.get("symbol")
    if symbol:
        acct.market_of(symbol)
    return [futures_open_order(o) for o in acct.open_orders(symbol)]


async def _futures_order(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    core.userdata.count_order(request, USDM)
    order, ack = core.userdata.futures_account.place(params, core.hub.advance())
    assert order is not None
    # USD-M "New Order": newOrderRespType defaults to ACK, the order as accepted.
    return futures_order_response(order) if params.get("newOrderRespType") == "RESULT" else ack


async def _futures_cancel(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    order, _ = core.userdata.futures_account.cancel(params, core.hub.advance())
    return futures_order_response(order)


async def _futures_get_order(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct = core.userdata.futures_account
    order = acct.find(params, acct.market_of(params.get("symbol")))
    if order is None:
        raise RestError(400, -2013, "Order does not exist.")
    row = futures_open_order(order)
    return row


async def _futures_position_risk(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct = core.userdata.futures_account
    if params.get("symbol"):
        acct.market_of(params["symbol"])
    version3 = request.path.startswith("/fapi/v3/")
    return (position_risk_v3 if version3 else position_risk)(acct, params.get("symbol"))


async def _futures_leverage_bracket(core: "SimCore", market: str, request: web.Request,
                                    query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    acct = core.userdata.futures_account
    if params.get("symbol"):
        acct.market_of(params["symbol"])
        return leverage_bracket(params["symbol"].upper())   # one object for ?symbol=
    return [leverage_bracket(s) for s in sorted(acct.hub.markets[USDM])]


def _api_key(core: "SimCore", request: web.Request) -> None:
    # USER_STREAM: an API key of either type, no signature.
    core.userdata.keys.check_api_key(request.headers.get("X-MBX-APIKEY"))


async def _listen_key_post(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    _api_key(core, request)
    return {"listenKey": core.userdata.futures.create(core.hub.advance())}


async def _listen_key_put(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    _api_key(core, request)
    core.userdata.futures.keepalive(core.hub.advance())
    return {"listenKey": next(iter(core.userdata.futures.keys))}


async def _listen_key_delete(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    _api_key(core, request)
    core.userdata.futures.delete()
    return {}


Weight = Callable[[Mapping[str, str]], int]


def _by_symbol(one: int, every: int) -> Weight:
    return lambda query: one if query.get("symbol") else every


def _fixed(weight: int) -> Weight:
    return lambda query: weight


# (handler, request weight as Binance documents it for the request's parameters)
_USER_ROUTES: dict[tuple[str, str], tuple[Callable[..., Awaitable[Any]], Weight]] = {
    ("POST", "/api/v3/order"): (_spot_order, _fixed(1)),
    ("POST", "/api/v3/order/test"): (_spot_order_test, _fixed(1)),
    ("DELETE", "/api/v3/order"): (_spot_cancel, _fixed(1)),
    ("GET", "/api/v3/order"): (_spot_get_order, _fixed(4)),
    ("DELETE", "/api/v3/openOrders"): (_spot_cancel_all, _fixed(1)),
    ("GET", "/api/v3/allOrders"): (_spot_all_orders, _fixed(20)),
    ("GET", "/api/v3/myTrades"): (_spot_my_trades, _fixed(20)),
    ("GET", "/api/v3/avgPrice"): (_avg_price, _fixed(2)),
    ("GET", "/api/v3/account"): (_spot_account, _fixed(20)),
    ("GET", "/api/v3/openOrders"): (_spot_open_orders, _by_symbol(6, 80)),
    ("POST", "/fapi/v1/order"): (_futures_order, _fixed(1)),
    ("DELETE", "/fapi/v1/order"): (_futures_cancel, _fixed(1)),
    ("GET", "/fapi/v1/order"): (_futures_get_order, _fixed(1)),
    ("GET", "/fapi/v2/positionRisk"): (_futures_position_risk, _fixed(5)),
    ("GET", "/fapi/v3/positionRisk"): (_futures_position_risk, _fixed(5)),
    ("GET", "/fapi/v1/leverageBracket"): (_futures_leverage_bracket, _fixed(1)),
    ("GET", "/fapi/v2/account"): (_futures_account_v2, _fixed(5)),
    ("GET", "/fapi/v3/account"): (_futures_account_v3, _fixed(5)),
    ("GET", "/fapi/v1/openOrders"): (_futures_open_orders, _by_symbol(1, 40)),
    ("POST", "/fapi/v1/listenKey"): (_listen_key_post, _fixed(1)),
    ("PUT", "/fapi/v1/listenKey"): (_listen_key_put, _fixed(1)),
    ("DELETE", "/fapi/v1/listenKey"): (_listen_key_delete, _fixed(1)),
}
