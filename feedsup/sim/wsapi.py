"""The spot WebSocket API (``/ws-api/v3``), as web-socket-api.md describes it.

- Responses carry ``rateLimits`` unless ``returnRateLimits`` is false (in the
  request's params, or ``?returnRateLimits=false`` on the connection URL)
  ("How to show/hide rate limit information").
- Weight is charged per IP and shared with REST; connecting costs 2 ("IP limits").
- The server pings every ``ping_interval`` (20 s) and disconnects a client that
  leaves a ping unanswered for ``pong_timeout`` (a minute); a connection lives
  ``max_lifetime`` (24 h) and gets a ``serverShutdown`` event before it ends
  ("General API Information", "Connection events").
- User data: ``userDataStream.subscribe.signature``, one active subscription per
  account per connection (-2035), ``subscriptionId`` counted per session from 0,
  ``eventStreamTerminated`` after ``userDataStream.unsubscribe``
  ("User Data Stream subscriptions"; user-data-stream.md "Event Stream Terminated").
- Market data and trading requests reuse the REST handlers and the account.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

import orjson
from aiohttp import WSMsgType, web

from . import rest
from .decimals import d8
from .exchange_info import spot_rate_limits
from .rest import RestError, mandatory
from .signing import check_timestamp, ws_api_payload
from .streams import SPOT

if TYPE_CHECKING:
    from .server import SimCore

CONNECT_WEIGHT = 2

# method -> REST path of the public handler it shares
_PUBLIC = {
    "ping": "/api/v3/ping", "time": "/api/v3/time", "exchangeInfo": "/api/v3/exchangeInfo",
    "depth": "/api/v3/depth", "trades.recent": "/api/v3/trades", "trades.aggregate": "/api/v3/aggTrades",
    "klines": "/api/v3/klines", "uiKlines": "/api/v3/uiKlines", "ticker.24hr": "/api/v3/ticker/24hr",
    "ticker.price": "/api/v3/ticker/price", "ticker.book": "/api/v3/ticker/bookTicker",
}


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else orjson.dumps(v).decode() if isinstance(
        v, (list, dict)) else str(v)


class RateLimited(RestError):
    def __init__(self, status: int, code: int, msg: str, data: dict[str, int]) -> None:
        super().__init__(status, code, msg)
        self.data = data


class Session:
    """One WebSocket API connection."""

    def __init__(self, core: "SimCore", ws: web.WebSocketResponse, ip: str, rate_limits: bool) -> None:
        self.core = core
        self.ws = ws
        self.ip = ip
        self.rate_limits = rate_limits           # the connection's default for returnRateLimits
        self.subscriptions: dict[int, Callable[[dict[str, Any]], None]] = {}
        self.next_subscription = 0               # per session, from 0
        self.opened = time.monotonic()
        self.pings: dict[bytes, float] = {}
        self.shutdown_sent = False

    # -- requests ------------------------------------------------------------------

    def handle(self, text: str) -> tuple[dict[str, Any], list[bytes]]:
        """The reply to one request, and frames to send after it."""
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            return _error(None, 400, -1000, "Malformed request."), []
        if not isinstance(req, dict):
            return _error(None, 400, -1000, "Malformed request."), []
        req_id, method, params = req.get("id"), req.get("method"), req.get("params") or {}
        if not isinstance(params, dict):
            return _error(req_id, 400, -1000, "Malformed request."), []
        show = params.get("returnRateLimits", self.rate_limits)
        after: list[bytes] = []
        orders = False
        try:
            weight = self._weight(method, params)
            limits = self._charge(weight)
            if method in _PUBLIC:
                route = rest.SPOT_ROUTES[_PUBLIC[method]]
                result = route[0](self.core.hub, SPOT, self._strings(params))
            elif method == "avgPrice":
                acct = self.core.userdata.spot
                m = acct.market_of(params.get("symbol"))
                result = {"mins": 5, "price": d8(acct.avg_price(m)), "closeTime": self.core.hub.advance()}
            elif method in _SIGNED:
                p = self._verify(params)
                result, orders, after = _SIGNED[method](self, p)
            else:
                raise RestError(400, -1100 if method else -1102, f"Unknown method: {method}" if method
                                else "Mandatory parameter 'method' was not sent, was empty/null, or malformed.")
        except RestError as exc:
            reply = _error(req_id, exc.status, exc.code, exc.msg)
            if isinstance(exc, RateLimited):
                reply["error"]["data"] = exc.data
            if show is not False:
                reply["rateLimits"] = self._rate_limits()
            return reply, []
        reply = {"id": req_id, "status": 200, "result": result}
        if show is not False:
            reply["rateLimits"] = limits + (self._order_limits() if orders else [])
        return reply, after

    def _weight(self, method: Any, params: Mapping[str, Any]) -> int:
        if method in _PUBLIC:
            return rest.SPOT_ROUTES[_PUBLIC[method]][1](self._strings(params))
        return {"account.status": 20, "openOrders.status": 6 if params.get("symbol") else 80, "allOrders": 20,
                "myTrades": 20, "order.status": 4}.get(method, 2 if str(method).startswith(("userData", "session"))
                                                        else 1)

    def _charge(self, weight: int) -> list[dict[str, Any]]:
        now = time.time()
        verdict = self.core.weights[SPOT].charge(self.ip, weight, now)
        if verdict.status != 200:
            # web-socket-api.md "IP limits": 429/418 with "data": {serverTime, retryAfter (ms)}.
            retry_at = verdict.banned_until if verdict.status == 418 else now + verdict.retry_after
            raise RateLimited(verdict.status, -1003, verdict.message(),
                              {"serverTime": self.core.hub.advance(), "retryAfter": int(retry_at * 1000)})
        return self._rate_limits()

    def _rate_limits(self) -> list[dict[str, Any]]:
        lim = spot_rate_limits(self.core.options)[0]
        return [{**lim, "count": self.core.weights[SPOT].used(self.ip, time.time())}]

    def _order_limits(self) -> list[dict[str, Any]]:
        counter = self.core.userdata.order_counts[SPOT]
        out = []
        for name, (win, limit) in counter.windows.items():
            interval, num = ("SECOND", 10) if name == "10S" else ("DAY", 1)
            out.append({"rateLimitType": "ORDERS", "interval": interval, "intervalNum": num, "limit": limit,
                        "count": len(win._hits)})
        return out

    def _strings(self, params: Mapping[str, Any]) -> dict[str, str]:
        return {k: _text(v) for k, v in params.items() if k != "returnRateLimits"}

    def _verify(self, params: Mapping[str, Any]) -> dict[str, str]:
        """API key and its signature (HMAC or Ed25519) over the sorted params
        (web-socket-api.md "SIGNED request security")."""
        o = self.core.options
        keys = self.core.userdata.keys
        keys.check_api_key(params.get("apiKey"))
        signature = params.get("signature")
        if not signature:
            raise mandatory("signature")
        keys.verify(params.get("apiKey"), ws_api_payload(params), signature)
        strings = {k: _text(v) for k, v in params.items()}
        check_timestamp(strings, self.core.hub.advance(), int(time.time() * 1000), o.recv_window_ms)
        return {k: v for k, v in strings.items() if k not in ("apiKey", "signature", "returnRateLimits")}

    # -- user data ---------------------------------------------------------------------

    def subscribe(self) -> int:
        if self.subscriptions:
            # "You can have only one active subscription for a given account on a given connection."
            raise RestError(400, -2035, "User Data Stream subscription already active.")
        sub_id = self.next_subscription
        self.next_subscription += 1
        listener = self._forwarder(sub_id)
        self.subscriptions[sub_id] = listener
        self.core.userdata.spot.listeners.append(listener)
        return sub_id

    def unsubscribe(self, wanted: Any) -> list[bytes]:
        now = self.core.hub.advance()
        ended = []
        for sub_id in [s for s in self.subscriptions if wanted is None or s == wanted]:
            self._drop(sub_id)
            ended.append(orjson.dumps({"subscriptionId": sub_id,
                                       "event": {"e": "eventStreamTerminated", "E": now}}))
        return ended

    def _drop(self, sub_id: int) -> None:
        listener = self.subscriptions.pop(sub_id)
        if listener in self.core.userdata.spot.listeners:
            self.core.userdata.spot.listeners.remove(listener)

    def close(self) -> None:
        for sub_id in list(self.subscriptions):
            self._drop(sub_id)

    def _forwarder(self, sub_id: int) -> Callable[[dict[str, Any]], None]:
        ws = self.ws

        def forward(event: dict[str, Any]) -> None:
            if not ws.closed:
                frame = orjson.dumps({"subscriptionId": sub_id, "event": event})
                asyncio.ensure_future(ws.send_frame(frame, WSMsgType.TEXT))
        return forward

    # -- keepalive and lifetime ---------------------------------------------------------

    async def keepalive(self) -> None:
        rules = self.core.rules[SPOT]
        step = max(0.05, min(1.0, rules.ping_interval / 4))
        last_ping = time.monotonic()
        while not self.ws.closed:
            await asyncio.sleep(step)
            now = time.monotonic()
            if self.pings and now - min(self.pings.values()) > rules.pong_timeout:
                await self.ws.close(code=1008, message=b"Pong timeout")
                return
            if now - last_ping >= rules.ping_interval:
                last_ping = now
                payload = str(self.core.hub.advance()).encode()
                self.pings[payload] = now
                await self.ws.ping(payload)
            age = now - self.opened
            if not self.shutdown_sent and age >= rules.max_lifetime - rules.shutdown_lead:
                self.shutdown_sent = True
                event = {"event": {"e": "serverShutdown", "E": self.core.hub.advance()}}
                await self.ws.send_frame(orjson.dumps(event), WSMsgType.TEXT)
            if age >= rules.max_lifetime:
                await self.ws.close(code=1001, message=b"Connection lifetime expired")
                return

    def on_pong(self, payload: bytes) -> None:
        # Unsolicited pongs are allowed but do not keep the connection alive.
        sent_at = self.pings.get(bytes(payload))
        if sent_at is not None:
            self.pings = {p: t for p, t in self.pings.items() if t > sent_at}


def _error(req_id: Any, status: int, code: int, msg: str) -> dict[str, Any]:
    return {"id": req_id, "status": status, "error": {"code": code, "msg": msg}}


# -- signed methods: (session, params) -> (result, counts as an order, frames after) ---------------


def _account_status(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    from .userdata import spot_account_body
    return spot_account_body(s.core.userdata.spot), False, []


def _order_place(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    from .userdata import spot_order_response
    ud = s.core.userdata
    _, over = ud.order_counts[SPOT].count(time.monotonic())
    if over is not None:
        raise RestError(429, -1015, "Too many new orders.")
    order, _ = ud.spot.place(p, s.core.hub.advance())
    assert order is not None
    resp_type = p.get("newOrderRespType") or ("FULL" if order.type in ("MARKET", "LIMIT") else "ACK")
    return spot_order_response(order, resp_type), True, []


def _order_test(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    s.core.userdata.spot.place(p, s.core.hub.advance(), test=True)
    return {}, False, []


def _order_status(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    from .userdata import spot_order_json
    acct = s.core.userdata.spot
    order = acct.find(p, acct.market_of(p.get("symbol")))
    if order is None:
        raise RestError(400, -2013, "Order does not exist.")
    return spot_order_json(order), False, []


def _order_cancel(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    from .userdata import spot_cancel_response
    now = s.core.hub.advance()
    order, cancel_id = s.core.userdata.spot.cancel(p, now)
    return spot_cancel_response(order, cancel_id, now), False, []


def _open_orders(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    from .userdata import spot_order_json
    acct = s.core.userdata.spot
    if p.get("symbol"):
        acct.market_of(p["symbol"])
    return [spot_order_json(o) for o in acct.open_orders(p.get("symbol"))], False, []


def _subscribe(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    return {"subscriptionId": s.subscribe()}, False, []


def _orders_limits(s: Session, p: dict[str, str]) -> tuple[Any, bool, list[bytes]]:
    return s._order_limits(), False, []


_SIGNED: dict[str, Callable[[Session, dict[str, str]], tuple[Any, bool, list[bytes]]]] = {
    "account.status": _account_status, "order.place": _order_place, "order.test": _order_test,
    "order.status": _order_status, "order.cancel": _order_cancel, "openOrders.status": _open_orders,
    "userDataStream.subscribe.signature": _subscribe, "account.rateLimits.orders": _orders_limits,
}


def _unsigned_session_method(s: Session, method: Any, params: Mapping[str, Any]) -> tuple[Any, list[bytes]] | None:
    if method == "userDataStream.unsubscribe":
        return {}, s.unsubscribe(params.get("subscriptionId"))
    if method == "session.subscriptions":
        return [{"subscriptionId": sub} for sub in s.subscriptions], []
    return None


async def ws_api_handler(core: "SimCore", request: web.Request) -> web.StreamResponse:
    refused = core.admit(request)
    if refused is not None:
        return refused
    ip = request.remote or "?"
    verdict = core.weights[SPOT].charge(ip, CONNECT_WEIGHT, time.time())
    if verdict.status != 200:
        return web.json_response({"code": -1003, "msg": "Too much request weight used."}, status=verdict.status,
                                 headers={"Retry-After": str(verdict.retry_after)})
    ws = web.WebSocketResponse(autoping=False, compress=False, timeout=2.0)
    await ws.prepare(request)
    session = Session(core, ws, ip, request.query.get("returnRateLimits", "true").lower() != "false")
    core.userdata.sockets.add(ws)
    pinger = asyncio.ensure_future(session.keepalive())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                session.on_pong(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await _serve(session, msg.data)
    finally:
        pinger.cancel()
        core.userdata.sockets.discard(ws)
        session.close()
    return ws


async def _serve(session: Session, text: str) -> None:
    try:
        req = orjson.loads(text)
    except orjson.JSONDecodeError:
        req = None
    after: list[bytes] = []
    if isinstance(req, dict) and req.get("method") in ("userDataStream.unsubscribe", "session.subscriptions"):
        params = req.get("params") or {}
        show = params.get("returnRateLimits", session.rate_limits) if isinstance(params, dict) else True
        try:
            limits = session._charge(2)
            result, after = _unsigned_session_method(session, req["method"], params)  # type: ignore[misc]
            reply: dict[str, Any] = {"id": req.get("id"), "status": 200, "result": result}
            if show is not False:
                reply["rateLimits"] = limits
        except RestError as exc:
            reply = _error(req.get("id"), exc.status, exc.code, exc.msg)
    else:
        reply, after = session.handle(text)
    await session.ws.send_frame(orjson.dumps(reply), WSMsgType.TEXT)
    for frame in after:
        await session.ws.send_frame(frame, WSMsgType.TEXT)
