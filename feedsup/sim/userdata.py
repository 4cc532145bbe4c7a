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

Orders fill against the simulated book's best price: MARKET at once, LIMIT at
once when marketable, otherwise when the market reaches the limit price.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

import orjson
from aiohttp import WSMsgType, web

from .conn import Connection
from .decimals import d8, plain
from .futures_account import futures_account, futures_open_order
from .hub import Hub
from .market import SymbolMarket
from .options import SimOptions
from .rest import RestError, mandatory
from .signing import check_api_key, check_timestamp, hmac_hex, verify_rest, ws_api_payload
from .streams import SPOT, USDM

if TYPE_CHECKING:
    from .server import SimCore

ZERO = Decimal(0)
OPEN = ("NEW", "PARTIALLY_FILLED")


def dec(params: Mapping[str, str], name: str, required: bool = True) -> Decimal | None:
    text = params.get(name)
    if text is None or text == "":
        if required:
            raise mandatory(name)
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RestError(400, -1100, f"Illegal characters found in parameter '{name}'.") from None
    if value <= 0:
        raise RestError(400, -1013, f"Invalid {name}.")
    return value


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


class Account:
    """Balances and orders of one market; fills against the simulated book."""

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

    # -- placing orders ---------------------------------------------------------------

    def place(self, params: Mapping[str, str], now: int) -> Order:
        m = self.market_of(params.get("symbol"))
        side = params.get("side") or ""
        otype = params.get("type") or ""
        if side not in ("BUY", "SELL"):
            raise mandatory("side")
        if otype not in ("MARKET", "LIMIT"):
            raise RestError(400, -1116, "Invalid orderType.")
        qty = dec(params, "quantity")
        assert qty is not None
        price = dec(params, "price", required=otype == "LIMIT") or ZERO
        tif = params.get("timeInForce", "GTC" if otype == "LIMIT" else "")
        if otype == "LIMIT" and not params.get("timeInForce"):
            raise mandatory("timeInForce")
        order = Order(m.spec.symbol, self._next_order, params.get("newClientOrderId") or secrets.token_hex(11),
                      side, otype, tif, qty, price, now, updated=now)
        self._next_order += 1
        locked = self._reserve(m, order)
        self.orders[order.order_id] = order
        self.report(order, "NEW", now)
        self.match(m, order, now)
        if locked is not None and order.status in OPEN:
            # Binance reports every free/locked change; a fill reports its own.
            self.position_changed(None, now, [locked])
        return order

    def _reserve(self, m: SymbolMarket, order: Order) -> str | None:
        """Lock what the order may spend; returns the asset locked (spot only)."""
        if self.market != SPOT:
            return None  # futures margin is not modelled: the wallet only pays commission
        if order.side == "BUY":
            ask = self.price_of(m, m.center + 1)
            asset, amount = m.spec.quote, order.qty * (order.price if order.type == "LIMIT" else ask)
        else:
            asset, amount = m.spec.base, order.qty
        free_locked = self.balances.setdefault(asset, [ZERO, ZERO])
        if free_locked[0] < amount:
            raise RestError(400, -2010, "Account has insufficient balance for requested action.")
        free_locked[0] -= amount
        free_locked[1] += amount
        return asset

    def match(self, m: SymbolMarket, order: Order, now: int) -> None:
        """Fill ``order`` if the book allows it (whole quantity, one price)."""
        if order.status not in ("NEW", "PARTIALLY_FILLED"):
            return
        bid, ask = self.price_of(m, m.center - 1), self.price_of(m, m.center + 1)
        if order.type == "MARKET":
            fill = ask if order.side == "BUY" else bid
        elif order.side == "BUY" and order.price >= ask:
            fill = ask if order.created == now else order.price
        elif order.side == "SELL" and order.price <= bid:
            fill = bid if order.created == now else order.price
        else:
            return
        self._fill(m, order, fill, now)

    def _fill(self, m: SymbolMarket, order: Order, price: Decimal, now: int) -> None:
        qty = order.qty - order.filled
        quote = qty * price
        order.filled += qty
        order.quote += quote
        order.status = "FILLED"
        order.updated = now
        trade = {"price": price, "qty": qty, "tradeId": self._next_trade, "maker": order.created != now}
        self._next_trade += 1
        order.trades.append(trade)
        self._settle(m, order, qty, price)
        self.report(order, "TRADE", now, trade)
        self.position_changed(m, now)

    def _settle(self, m: SymbolMarket, order: Order, qty: Decimal, price: Decimal) -> None:
        if self.market == SPOT:
            base, quote = self.balances.setdefault(m.spec.base, [ZERO, ZERO]), self.balances[m.spec.quote]
            if order.side == "BUY":
                reserved = qty * (order.price if order.type == "LIMIT" else price)
                quote[1] -= reserved
                quote[0] += reserved - qty * price   # a better fill than the limit refunds the rest
                base[0] += qty
            else:
                base[1] -= qty
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

    def cancel(self, params: Mapping[str, str], now: int) -> Order:
        m = self.market_of(params.get("symbol"))
        order = None
        if params.get("orderId", "").isdigit():
            order = self.orders.get(int(params["orderId"]))
        elif params.get("origClientOrderId"):
            order = next((o for o in self.orders.values() if o.client_id == params["origClientOrderId"]), None)
        else:
            raise mandatory("orderId")
        if order is None or order.symbol != m.spec.symbol or order.status not in ("NEW", "PARTIALLY_FILLED"):
            raise RestError(400, -2011, "Unknown order sent.")
        order.status, order.updated = "CANCELED", now
        self.report(order, "CANCELED", now)
        if self.market == SPOT:   # futures: no balance or position changes, so no ACCOUNT_UPDATE
            asset, amount = ((m.spec.quote, (order.qty - order.filled) * order.price) if order.side == "BUY"
                             else (m.spec.base, order.qty - order.filled))
            self.balances[asset][0] += amount
            self.balances[asset][1] -= amount
            self.position_changed(None, now, [asset])
        return order

    def tick(self, now: int) -> None:
        for order in list(self.orders.values()):
            if order.status in ("NEW", "PARTIALLY_FILLED"):
                self.match(self.market_of(order.symbol), order, now)
        if len(self.orders) > 10_000:  # keep finished orders bounded
            for oid in [o for o, v in self.orders.items() if v.status in ("FILLED", "CANCELED")][:5000]:
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

    def report(self, order: Order, exec_type: str, now: int, trade: dict[str, Any] | None = None) -> None:
        self.emit(spot_execution_report(order, exec_type, now, trade) if self.market == SPOT
                  else futures_order_update(order, exec_type, now, trade))

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


def spot_execution_report(o: Order, exec_type: str, now: int, trade: dict[str, Any] | None) -> dict[str, Any]:
    last_qty = trade["qty"] if trade else ZERO
    last_price = trade["price"] if trade else ZERO
    return {
        "e": "executionReport", "E": now, "s": o.symbol, "c": o.client_id, "S": o.side, "o": o.type,
        "f": o.tif or "GTC", "q": d8(o.qty), "p": d8(o.price), "P": d8(ZERO), "F": d8(ZERO), "g": -1, "C": "",
        "x": exec_type, "X": o.status, "r": "NONE", "i": o.order_id, "l": d8(last_qty), "z": d8(o.filled),
        "L": d8(last_price), "n": d8(ZERO), "N": None, "T": now, "t": trade["tradeId"] if trade else -1,
        "I": 0, "w": o.status in ("NEW", "PARTIALLY_FILLED"), "m": bool(trade and trade["maker"]), "M": False,
        "O": o.created, "Z": d8(o.quote), "Y": d8(last_qty * last_price), "Q": d8(ZERO), "W": o.created,
        "V": "EXPIRE_MAKER",
    }


def futures_order_update(o: Order, exec_type: str, now: int, trade: dict[str, Any] | None) -> dict[str, Any]:
    last_qty = trade["qty"] if trade else ZERO
    last_price = trade["price"] if trade else ZERO
    avg = (o.quote / o.filled) if o.filled else ZERO
    return {"e": "ORDER_TRADE_UPDATE", "E": now, "T": now, "o": {
        "s": o.symbol, "c": o.client_id, "S": o.side, "o": o.type, "f": o.tif or "GTC", "q": plain(o.qty),
        "p": plain(o.price), "ap": d8(avg), "sp": "0", "x": exec_type, "X": o.status, "i": o.order_id,
        "l": plain(last_qty), "z": plain(o.filled), "L": plain(last_price), "n": "0", "N": "USDT", "T": now,
        "t": trade["tradeId"] if trade else 0, "b": "0", "a": "0", "m": bool(trade and trade["maker"]), "R": False,
        "wt": "CONTRACT_PRICE", "ot": o.type, "ps": "BOTH", "cp": False, "rp": "0", "pP": False, "si": 0, "ss": 0,
        "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0}}


def spot_order_json(o: Order) -> dict[str, Any]:
    return {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.client_id,
            "price": d8(o.price), "origQty": d8(o.qty), "executedQty": d8(o.filled),
            "cummulativeQuoteQty": d8(o.quote), "status": o.status, "timeInForce": o.tif or "GTC", "type": o.type,
            "side": o.side, "stopPrice": d8(ZERO), "icebergQty": d8(ZERO), "time": o.created,
            "updateTime": o.updated, "isWorking": True, "workingTime": o.created, "origQuoteOrderQty": d8(ZERO),
            "selfTradePreventionMode": "EXPIRE_MAKER"}


def spot_order_response(o: Order) -> dict[str, Any]:
    body = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.client_id,
            "transactTime": o.updated, "price": d8(o.price), "origQty": d8(o.qty), "executedQty": d8(o.filled),
            "origQuoteOrderQty": d8(ZERO), "cummulativeQuoteQty": d8(o.quote), "status": o.status,
            "timeInForce": o.tif or "GTC", "type": o.type, "side": o.side, "workingTime": o.created,
            "selfTradePreventionMode": "EXPIRE_MAKER"}
    body["fills"] = [{"price": d8(t["price"]), "qty": d8(t["qty"]), "commission": d8(ZERO),
                      "commissionAsset": "BNB", "tradeId": t["tradeId"]} for t in o.trades]
    return body


def futures_order_response(o: Order) -> dict[str, Any]:
    avg = (o.quote / o.filled) if o.filled else ZERO
    return {"orderId": o.order_id, "symbol": o.symbol, "status": o.status, "clientOrderId": o.client_id,
            "price": plain(o.price), "avgPrice": d8(avg), "origQty": plain(o.qty), "executedQty": plain(o.filled),
            "cumQty": plain(o.filled), "cumQuote": d8(o.quote), "timeInForce": o.tif or "GTC", "type": o.type,
            "reduceOnly": False, "closePosition": False, "side": o.side, "positionSide": "BOTH", "stopPrice": "0",
            "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": o.type, "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0, "updateTime": o.updated}


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
        self.spot = Account(SPOT, hub)
        self.futures_account = Account(USDM, hub)
        self.futures = FuturesUserData(options, self.futures_account)
        self._subscription_ids = 0
        self.sockets: set[web.WebSocketResponse] = set()   # open WebSocket API sessions

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
        return verify_rest(total, request.headers.get("X-MBX-APIKEY"), self.options.api_key,
                           self.options.api_secret, self.hub.advance(), int(time.time() * 1000),
                           self.options.recv_window_ms)

    # -- WebSocket API (spot) ------------------------------------------------------------

    async def ws_api_handler(self, core: "SimCore", request: web.Request) -> web.StreamResponse:
        refused = core.admit(request)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse(autoping=True, compress=False, timeout=2.0)
        await ws.prepare(request)
        subscriptions: dict[int, Callable[[dict[str, Any]], None]] = {}
        self.sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                reply = self._ws_api_request(msg.data, ws, subscriptions)
                await ws.send_frame(orjson.dumps(reply), WSMsgType.TEXT)
        finally:
            self.sockets.discard(ws)
            for listener in subscriptions.values():
                if listener in self.spot.listeners:
                    self.spot.listeners.remove(listener)
        return ws

    def _ws_api_request(self, text: str, ws: web.WebSocketResponse,
                        subscriptions: dict[int, Callable[[dict[str, Any]], None]]) -> dict[str, Any]:
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            return _ws_error(None, 400, -1000, "Malformed request.")
        if not isinstance(req, dict):
            return _ws_error(None, 400, -1000, "Malformed request.")
        req_id, method, params = req.get("id"), req.get("method"), req.get("params") or {}
        now = self.hub.advance()
        try:
            if method == "ping":
                return _ws_ok(req_id, {})
            if method == "time":
                return _ws_ok(req_id, {"serverTime": now})
            if method == "userDataStream.subscribe.signature":
                self._verify_ws(params, now)
                self._subscription_ids += 1
                sub_id = self._subscription_ids
                listener = _ws_forwarder(ws, sub_id)
                subscriptions[sub_id] = listener
                self.spot.listeners.append(listener)
                return _ws_ok(req_id, {"subscriptionId": sub_id})
            if method == "userDataStream.unsubscribe":
                wanted = params.get("subscriptionId")
                for sub_id in [s for s in subscriptions if wanted is None or s == wanted]:
                    listener = subscriptions.pop(sub_id)
                    self.spot.listeners.remove(listener)
                return _ws_ok(req_id, {})
            if method == "session.subscriptions":
                return _ws_ok(req_id, [{"subscriptionId": s} for s in subscriptions])
        except RestError as exc:
            return _ws_error(req_id, exc.status, exc.code, exc.msg)
        return _ws_error(req_id, 400, -1102 if not method else -1000, f"Unknown method: {method}")

    def _verify_ws(self, params: Mapping[str, Any], now: int) -> None:
        check_api_key(params.get("apiKey"), self.options.api_key)
        signature = params.get("signature")
        if not signature:
            raise mandatory("signature")
        expected = hmac_hex(self.options.api_secret, ws_api_payload(params))
        if not isinstance(signature, str) or signature != expected:
            raise RestError(400, -1022, "Signature for this request is not valid.")
        check_timestamp({k: str(v) for k, v in params.items()}, now, int(time.time() * 1000),
                        self.options.recv_window_ms)


def _ws_ok(req_id: Any, result: Any) -> dict[str, Any]:
    return {"id": req_id, "status": 200, "result": result}


def _ws_error(req_id: Any, status: int, code: int, msg: str) -> dict[str, Any]:
    return {"id": req_id, "status": status, "error": {"code": code, "msg": msg}}


def _ws_forwarder(ws: web.WebSocketResponse, sub_id: int) -> Callable[[dict[str, Any]], None]:
    def forward(event: dict[str, Any]) -> None:
        if not ws.closed:
            frame = orjson.dumps({"subscriptionId": sub_id, "event": event})
            asyncio.ensure_future(ws.send_frame(frame, WSMsgType.TEXT))
    return forward


# -- signed REST handlers: (core, market, request, query) -> body -------------------------------


async def _spot_order(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    order = core.userdata.spot.place(params, core.hub.advance())
    return spot_order_response(order)


async def _spot_cancel(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    params = await core.userdata.signed_params(core, request)
    return spot_order_json(core.userdata.spot.cancel(params, core.hub.advance()))


async def _spot_account(core: "SimCore", market: str, request: web.Request, query: dict[str, str]) -> Any:
    await core.userdata.signed_params(core, request)
    acct = core.userdata.spot
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
    order = core.userdata.futures_account.place(params, core.hub.advance())
    return futures_order_response(order)


def _api_key(core: "SimCore", request: web.Request) -> None:
    check_api_key(request.headers.get("X-MBX-APIKEY"), core.options.api_key)


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
    ("DELETE", "/api/v3/order"): (_spot_cancel, _fixed(1)),
    ("GET", "/api/v3/account"): (_spot_account, _fixed(20)),
    ("GET", "/api/v3/openOrders"): (_spot_open_orders, _by_symbol(6, 80)),
    ("POST", "/fapi/v1/order"): (_futures_order, _fixed(1)),
    ("GET", "/fapi/v2/account"): (_futures_account_v2, _fixed(5)),
    ("GET", "/fapi/v3/account"): (_futures_account_v3, _fixed(5)),
    ("GET", "/fapi/v1/openOrders"): (_futures_open_orders, _by_symbol(1, 40)),
    ("POST", "/fapi/v1/listenKey"): (_listen_key_post, _fixed(1)),
    ("PUT", "/fapi/v1/listenKey"): (_listen_key_put, _fixed(1)),
    ("DELETE", "/fapi/v1/listenKey"): (_listen_key_delete, _fixed(1)),
}
