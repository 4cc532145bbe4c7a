"""Minimal blocking REST client for workers (standard library only).

Workers make few REST calls (symbol validation, snapshots, backfill), so
urllib is enough and adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from feedsup import restlimit
from feedsup.binance.rest import classify, request_weight


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


def invalid_symbols(market: str, rest_url: str, symbols: tuple[str, ...], timeout: float,
                    budget: Any = None) -> list[str] | None:
    """Symbols the exchange does not list, or None when it could not be asked.

    Binance accepts a stream for an unknown symbol and then sends nothing, so
    without this check a typo would look like a stale feed and loop forever.
    With a ``budget`` (restlimit.SharedBudget) the call is charged to the
    shared weight, and skipped (None) while the IP is backing off or banned:
    asking during a ban only lengthens it.
    """
    if not symbols:
        return []

    def ask(path: str, params: dict[str, Any] | None) -> Response | None:
        if budget is not None:
            try:
                budget.acquire(request_weight(market, path, params or {}), time.monotonic())
            except restlimit.BudgetUnavailable:
                return None
        resp = get(rest_url, path, params, timeout)
        if budget is not None:
            budget.observe(resp.status, resp.headers)
        return resp

    try:
        if market == "spot":
            resp = ask("/api/v3/exchangeInfo",
                       {"symbols": json.dumps(list(symbols), separators=(",", ":"))})
            if resp is not None and resp.status == 400 and isinstance(resp.body, dict) \
                    and resp.body.get("code") == -1121:
                return _probe_each(ask, symbols)
        else:
            resp = ask("/fapi/v1/exchangeInfo", None)
        if resp is None or resp.status != 200 or not isinstance(resp.body, dict):
            return None
        listed = {s.get("symbol") for s in resp.body.get("symbols", [])}
        return [s for s in symbols if s not in listed]
    except (OSError, ValueError, http.client.HTTPException):
        return None


def _probe_each(ask, symbols: tuple[str, ...]) -> list[str] | None:
    bad = []
    for symbol in symbols:
        resp = ask("/api/v3/exchangeInfo", {"symbol": symbol})
        if resp is None:
            return None
        if resp.status == 400:
            bad.append(symbol)
    return bad


# -- budgeted calls with retries (backfill, snapshots) --------------------------

class RestFailed(Exception):
    """A REST call that could not succeed before its deadline, or never can."""


class RestClient:
    """GETs under the shared weight budget, retried until a deadline.

    Each request has its own timeout; the caller's deadline (``time.monotonic``
    seconds: an NTP step must not end a call early) bounds the whole call
    including waits for weight. ``stop``
    interrupts waits so a worker that is told to end does not linger.
    """

    def __init__(self, base: str, market: str, budget: Any, timeout: float = 5.0,
                 stop: threading.Event | None = None, retry_initial: float = 0.1,
                 retry_max: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.base = base
        self.market = market
        self.budget = budget
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.calls = 0
        self.failures = 0

    def fetch(self, path: str, params: dict[str, Any], deadline: float) -> Any:
        """The JSON body of a 2xx answer, or raise ``RestFailed``."""
        weight = request_weight(self.market, path, params)
        delay = self.retry_initial
        last = "no attempt"
        while True:
            try:
                self.budget.acquire(weight, deadline, self.stop)
            except restlimit.BudgetUnavailable as exc:
                raise RestFailed(f"{exc} (last: {last})") from None
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise RestFailed(f"deadline passed (last: {last})")
            self.calls += 1
            try:
                resp = get(self.base, path, params, timeout=min(self.timeout, remaining))
            except (OSError, http.client.HTTPException) as exc:
                outcome, last = "retry", f"{exc.__class__.__name__}: {exc}"
            else:
                self.budget.observe(resp.status, resp.headers)
                outcome, last = classify(resp.status), f"HTTP {resp.status} {str(resp.body)[:120]}"
                if outcome == "ok":
                    return resp.body
                if outcome == "fatal":
                    raise RestFailed(f"{path} rejected: {last}")
            self.failures += 1
            if outcome == "limited":
                continue            # the budget now holds everyone until Retry-After
            if self.clock() + delay > deadline:
                raise RestFailed(f"deadline passed (last: {last})")
            if self.stop.wait(delay):
                raise RestFailed("stopped")
            delay = min(delay * 2, self.retry_max)
