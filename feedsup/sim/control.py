"""The fault-injection control API under /_sim/ (no Binance client uses it).

POST   /_sim/faults        {"kind": ..., "target": {...}, ...params} -> the fault
GET    /_sim/faults        active lasting faults
DELETE /_sim/faults[/id]   clear all (or one)
GET    /_sim/connections   live connections
GET    /_sim/book          ?market=spot|usdm&symbol=BTCUSDT: the full book (truth)
GET    /_sim/state         simulated time, seed, speed, symbols (and delisted ones)
POST   /_sim/faults        {"kind": "list" | "delist", "symbol": "NEWUSDT"}: a listing or delisting
POST   /_sim/balance       {"market": "spot"|"usdm", "asset": "USDT", "delta": "100"}: deposit/withdraw
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .faults import FaultError
from .rest import RestError
from .payloads import fmt_of
from .streams import SPOT, USDM

if TYPE_CHECKING:
    from .server import SimCore


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def control_handler(core: "SimCore", request: web.Request) -> web.Response:
    path = request.path.rstrip("/")
    method = request.method
    if path == "/_sim/faults" and method == "POST":
        try:
            body = await request.json(loads=orjson.loads)
        except ValueError:
            return _json({"error": "body must be a JSON object"}, 400)
        if not isinstance(body, dict) or "kind" not in body:
            return _json({"error": "body must be a JSON object with a kind"}, 400)
        params = {k: v for k, v in body.items() if k not in ("kind", "target")}
        try:
            fault = core.inject(body["kind"], body.get("target") or {}, params)
        except FaultError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(fault)
    if path == "/_sim/faults" and method == "GET":
        core.faults.expire(time.monotonic())
        return _json([f.as_dict() for f in core.faults.active])
    if path == "/_sim/faults" and method == "DELETE":
        return _json({"cleared": core.clear_faults()})
    if path.startswith("/_sim/faults/") and method == "DELETE":
        tail = path.rsplit("/", 1)[1]
        if not tail.isdigit():
            return _json({"error": "fault id must be an integer"}, 400)
        return _json({"cleared": core.clear_faults(int(tail))})
    if path == "/_sim/connections" and method == "GET":
        now = time.monotonic()
        return _json([c.info(now) for c in core.hub.connections.values()])
    if path == "/_sim/book" and method == "GET":
        return book(core, request)
    if path == "/_sim/balance" and method == "POST":
        return await balance(core, request)
    if path == "/_sim/state" and method == "GET":
        return _json(core.state())
    return _json({"error": f"no such control endpoint: {method} {path}"}, 404)


async def balance(core: "SimCore", request: web.Request) -> web.Response:
    """Credit or debit an asset: a deposit/withdrawal producing balanceUpdate."""
    try:
        body = await request.json(loads=orjson.loads)
        market = body.get("market", SPOT)
        account = core.userdata.spot if market == SPOT else core.userdata.futures_account
        account.deposit(str(body["asset"]), Decimal(str(body["delta"])), core.hub.advance())
    except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError) as exc:
        return _json({"error": f"expected {{market?, asset, delta}}: {exc}"}, 400)
    except RestError as exc:
        return _json({"error": exc.msg}, 400)
    return _json({"ok": True})


def book(core: "SimCore", request: web.Request) -> web.Response:
    market = request.query.get("market", SPOT)
    if market not in (SPOT, USDM):
        return _json({"error": "market must be spot or usdm"}, 400)
    m = core.hub.market(market, request.query.get("symbol", ""))
    if m is None:
        return _json({"error": "unknown symbol"}, 400)
    core.hub.advance()
    f = fmt_of(m)
    return _json({
        "lastUpdateId": m.update_id,
        "bids": [[f.p(p), f.q(q)] for p, q in sorted(m.bids.items(), reverse=True)],
        "asks": [[f.p(p), f.q(q)] for p, q in sorted(m.asks.items())],
    })
