"""Minimal blocking REST client for workers (standard library only).

Workers make few REST calls (symbol validation, snapshots, backfill), so
urllib is enough and adds no dependency.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    headers: dict[str, str]


def get(base: str, path: str, params: dict[str, Any] | None = None, timeout: float = 10.0,
        headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    url = base.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, _json(resp.read()), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Response(err.code, _json(err.read()), dict(err.headers or {}))


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def invalid_symbols(market: str, rest_url: str, symbols: tuple[str, ...], timeout: float) -> list[str] | None:
    """Symbols the exchange does not list, or None when it could not be asked.

    Binance accepts a stream for an unknown symbol and then sends nothing, so
    without this check a typo would look like a stale feed and loop forever.
    """
    if not symbols:
        return []
    try:
        if market == "spot":
            resp = get(rest_url, "/api/v3/exchangeInfo",
                       {"symbols": json.dumps(list(symbols), separators=(",", ":"))}, timeout)
            if resp.status == 400 and isinstance(resp.body, dict) and resp.body.get("code") == -1121:
                return _probe_each(rest_url, symbols, timeout)
        else:
            resp = get(rest_url, "/fapi/v1/exchangeInfo", None, timeout)
        if resp.status != 200 or not isinstance(resp.body, dict):
            return None
        listed = {s.get("symbol") for s in resp.body.get("symbols", [])}
        return [s for s in symbols if s not in listed]
    except (OSError, ValueError):
        return None


def _probe_each(rest_url: str, symbols: tuple[str, ...], timeout: float) -> list[str]:
    bad = []
    for symbol in symbols:
        resp = get(rest_url, "/api/v3/exchangeInfo", {"symbol": symbol}, timeout)
        if resp.status == 400:
            bad.append(symbol)
    return bad
