"""REST paths outside /api/ and /fapi/ that clients call on Binance's hosts.

A client library pointed at the simulator by URL alone (ccxt loads currencies
from ``/sapi/v1/capital/config/getall`` and COIN-M markets from
``/dapi/v1/exchangeInfo``, margin pairs from ``/sapi/v1/margin/allPairs``) gets
these; every other path answers as
Binance's REST hosts answer an unknown path: HTTP 404 with a small HTML body,
not JSON.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from .decimals import d8
from .rest import RestError
from .streams import SPOT

if TYPE_CHECKING:
    from .server import SimCore

NOT_FOUND_HTML = "<html><body><h2>404 Not found</h2></body></html>"
_REST_PREFIXES = ("/sapi/", "/dapi/", "/eapi/", "/papi/", "/futures/", "/wapi/")


def not_found() -> web.Response:
    return web.Response(status=404, text=NOT_FOUND_HTML, content_type="text/html")


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def handle(core: "SimCore", request: web.Request) -> web.StreamResponse | None:
    """The answer for a REST path served here, or None for a WebSocket path."""
    path = request.path
    if not path.startswith(_REST_PREFIXES):
        return None
    if request.method == "GET" and path == "/dapi/v1/exchangeInfo":
        # The simulator models no COIN-M markets: a valid exchangeInfo listing none.
        return _json({"timezone": "UTC", "serverTime": core.hub.advance(), "rateLimits": [],
                      "exchangeFilters": [], "symbols": []})
    if request.method == "GET" and path in ("/sapi/v1/capital/config/getall", "/sapi/v1/margin/allPairs",
                                            "/sapi/v1/margin/isolated/allPairs"):
        verdict = core.weights[SPOT].charge(request.remote or "?", 10, time.time())
        if verdict.status != 200:
            return _json({"code": -1003, "msg": "Too much request weight used."}, verdict.status)
        try:
            await core.userdata.signed_params(core, request)
        except RestError as exc:
            return _json(exc.body(), exc.status)
        if path.endswith("/allPairs"):
            return _json([])   # no margin trading is modelled (exchangeInfo: isMarginTradingAllowed false)
        acct = core.userdata.spot
        return _json([_coin(asset, v[0], v[1]) for asset, v in sorted(acct.balances.items())])
    return not_found()


def _coin(asset: str, free: object, locked: object) -> dict[str, object]:
    network = {"network": asset, "coin": asset, "withdrawIntegerMultiple": "0.00000001", "isDefault": True,
               "depositEnable": True, "withdrawEnable": True, "depositDesc": "", "withdrawDesc": "",
               "name": asset, "resetAddressStatus": False, "withdrawFee": "0", "withdrawMin": "0",
               "withdrawMax": "9999999999", "minConfirm": 1, "unLockConfirm": 0, "sameAddress": False,
               "estimatedArrivalTime": 1, "busy": False, "contractAddressUrl": "", "contractAddress": ""}
    return {"coin": asset, "depositAllEnable": True, "withdrawAllEnable": True, "name": asset,
            "free": d8(free), "locked": d8(locked), "freeze": "0", "withdrawing": "0",  # type: ignore[arg-type]
            "ipoing": "0", "ipoable": "0", "storage": "0", "isLegalMoney": False, "trading": True,
            "networkList": [network]}
