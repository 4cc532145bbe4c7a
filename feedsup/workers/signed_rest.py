"""Signed (``USER_DATA``) and API-key (``USER_STREAM``) REST calls of the
account workers, charged to the shared weight budget."""

from __future__ import annotations

import http.client
import time
import urllib.parse
from typing import Any

from feedsup import restlimit
from feedsup.binance.account_normalise import SNAPSHOT_CALLS, SNAPSHOTS
from feedsup.binance.rest import RECV_WINDOW_MS, SIGNED_WEIGHTS, classify_rejection
from feedsup.credentials import Credentials
from feedsup.workers import rest
from feedsup.workers.runtime import ConnectionEnded, Runtime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed_query(params: dict[str, Any], creds: Credentials, timestamp_ms: int) -> dict[str, Any]:
    """``params`` + recvWindow + timestamp + signature over their query string.

    rest.get urlencodes the dict the same way, so the signed string is
    exactly the query string before ``&signature=``."""
    query = {**params, "recvWindow": RECV_WINDOW_MS, "timestamp": timestamp_ms}
    query["signature"] = creds.sign(urllib.parse.urlencode(query))
    return query


class SignedRest:
    """Signed (``USER_DATA``) and API-key (``USER_STREAM``) REST calls,
    charged to the weight budget every worker of this parent shares."""

    def __init__(self, base: str, creds: Credentials, timeout: float, budget: Any = None) -> None:
        self.base = base
        self.creds = creds
        self.timeout = timeout
        self.budget = budget

    @classmethod
    def for_worker(cls, rt: Runtime, creds: Credentials) -> "SignedRest":
        return cls(rt.spec.endpoint.rest_url, creds, rt.conn.connect_timeout,
                   restlimit.SharedBudget.for_spec(rt.spec))

    def account_snapshot(self, market: str) -> dict[str, Any]:
        """The account's balances and open orders, normalised, then the
        exchange's time (asked last: when both answers were complete)."""
        account, orders, server_time = SNAPSHOT_CALLS[market]
        return SNAPSHOTS[market](self.signed("GET", account), self.signed("GET", orders),
                                 self.call("GET", server_time))

    def signed(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.call(method, path, signed_query(params or {}, self.creds, now_ms()))

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        """The JSON body of a 2xx reply, else ConnectionEnded (classified)."""
        what = f"{method} {path}"
        timeout = timeout or self.timeout
        if self.budget is not None:
            try:   # while the IP is told to back off, asking again only lengthens it
                self.budget.acquire(SIGNED_WEIGHTS.get(path, 1), time.monotonic() + timeout)
            except restlimit.BudgetUnavailable as exc:
                raise ConnectionEnded(f"{what} not sent: {exc}") from None
        try:
            resp = rest.get(self.base, path, params, timeout,
                            headers={"X-MBX-APIKEY": self.creds.api_key}, method=method)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise ConnectionEnded(f"{what} failed: {exc.__class__.__name__}: {exc}") from None
        if self.budget is not None:
            self.budget.observe(resp.status, resp.headers)
        if 200 <= resp.status < 300:
            return resp.body
        raise ConnectionEnded(*classify_rejection(what, resp.status, resp.body))
