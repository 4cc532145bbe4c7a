"""What Binance's REST and WebSocket APIs expect and answer: request weights,
the classification of an answer, how a request is signed, which rejections
no retry can fix.

Pure: no I/O. The REST clients (``workers/rest.py``, ``workers/signed_rest.py``)
and the spot account session apply these rules.
"""

from __future__ import annotations

from typing import Any

# Binance's default recvWindow; we sign with our wall clock right before sending.
RECV_WINDOW_MS = 5000

# Binance error codes meaning "these credentials will not work": a retry
# cannot help, a human must act. -1021 (timestamp outside recvWindow) is not
# here: it is a clock problem and may pass.
CREDENTIAL_CODES = {
    -1002: "unauthorized",
    -1022: "signature not valid (wrong API secret or Ed25519 key?)",
    -2008: "invalid API key id",
    -2014: "API key format invalid",
    -2015: "invalid API key, IP, or permissions",
}


def classify(status: int) -> str:
    """``ok``, ``limited`` (429/418: the shared budget waits), ``retry``
    (the exchange or network hiccuped) or ``fatal`` (the request is wrong)."""
    if 200 <= status < 300:
        return "ok"
    if status in (418, 429):
        return "limited"
    if status >= 500 or status == 408:
        return "retry"
    return "fatal"


def request_weight(market: str, path: str, params: dict[str, Any]) -> int:
    """Binance's request weight of one GET (rest-api.md, futures docs)."""
    limit = int(params.get("limit", 500))
    name = path.rsplit("/", 1)[-1]
    if market == "spot":
        if name == "depth":
            return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
        return {"klines": 2, "aggTrades": 4, "trades": 25, "exchangeInfo": 20}.get(name, 2)
    if name == "depth":
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
    if name == "klines":
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    return {"aggTrades": 20, "trades": 5, "exchangeInfo": 1}.get(name, 1)


# Binance's request weights of the signed calls we make (rest-api.md, futures
# docs); they count against the IP's per-minute weight like every other request.
SIGNED_WEIGHTS = {
    "/api/v3/account": 20, "/api/v3/openOrders": 80,    # openOrders without a symbol
    "/fapi/v2/account": 5, "/fapi/v1/openOrders": 40, "/fapi/v1/listenKey": 1,
    "/api/v3/time": 1, "/fapi/v1/time": 1,
}


def classify_rejection(what: str, status: int, body: Any) -> tuple[str, bool]:
    """An error reply (REST or WebSocket API) -> (reason, fatal)."""
    code, msg = None, ""
    if isinstance(body, dict):
        err = body.get("error") if isinstance(body.get("error"), dict) else body
        code, msg = err.get("code"), str(err.get("msg") or "")[:200]
    detail = f"HTTP {status}" + (f", code {code}" if code is not None else "") + (f": {msg}" if msg else "")
    if code in CREDENTIAL_CODES or (status == 401 and code is None):
        why = CREDENTIAL_CODES.get(code, "unauthorized")
        return f"{what}: credentials rejected, {why} ({detail})", True
    return f"{what}: {detail}", False


def ws_api_payload(params: dict[str, Any]) -> str:
    """The WebSocket API signing payload: every param but ``signature``,
    sorted by name, as ``key=value`` joined with ``&``."""
    def text(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)
    return "&".join(f"{k}={text(v)}" for k, v in sorted(params.items()) if k != "signature")
