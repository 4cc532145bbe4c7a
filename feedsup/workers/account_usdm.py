"""USD-M futures user data: the listenKey lifecycle and the ``/private`` route.

- ``POST /fapi/v1/listenKey`` (API key header, no signature) creates the
  key, or returns the account's active one extended by 60 min;
- ``<ws_url>/private/ws?listenKey=<key>`` delivers ``ACCOUNT_UPDATE``,
  ``ORDER_TRADE_UPDATE`` and, when the key lapses, ``listenKeyExpired``;
- a keepalive thread ``PUT``s every ``KEEPALIVE_INTERVAL``, well inside the
  key's 60 min validity. ``-1125`` (key gone) or ``listenKeyExpired`` ends the
  connection as retryable: the parent restarts the worker, which creates a
  new key and resyncs. The worker never reconnects by itself;
- on SIGTERM the key is deleted (``DELETE``), closing the stream at Binance.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import websocket

from feedsup.credentials import Credentials
from feedsup.workers.account import SignedRest
from feedsup.workers.account_normalise import LISTEN_KEY_EXPIRED, normalise_usdm, usdm_snapshot
from feedsup.workers.runtime import ConnectionEnded, Runtime

log = logging.getLogger("feedsup.worker.account")

LISTEN_KEY_PATH = "/fapi/v1/listenKey"
# Binance recommends a keepalive about every 30 min for a 60 min key.
KEEPALIVE_INTERVAL = 1800.0
# After a failed keepalive (network, 5xx), try again sooner than a full period.
KEEPALIVE_RETRY = 60.0
# Tests and operators may shorten the period (seconds); the config has no key for it.
KEEPALIVE_ENV = "FEEDSUP_LISTEN_KEY_KEEPALIVE"
DELETE_TIMEOUT = 2.0   # stays inside the parent's TERM -> KILL grace
PUBLISHED = frozenset({"ACCOUNT_UPDATE", "ORDER_TRADE_UPDATE"})


def keepalive_interval(environ: Mapping[str, str] = os.environ) -> float:
    text = environ.get(KEEPALIVE_ENV, "")
    try:
        value = float(text) if text else KEEPALIVE_INTERVAL
    except ValueError:
        value = KEEPALIVE_INTERVAL
    return value if value > 0 else KEEPALIVE_INTERVAL


def private_url(ws_url: str, listen_key: str) -> str:
    return f"{ws_url.rstrip('/')}/private/ws?listenKey={quote(listen_key, safe='')}"


class UsdmSession:
    def __init__(self, rt: Runtime, creds: Credentials) -> None:
        self.rt = rt
        self.rest = SignedRest.for_worker(rt, creds)
        self.listen_key: str | None = None
        self.keepalives = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> websocket.WebSocket:
        reply = self.rest.call("POST", LISTEN_KEY_PATH)
        key = reply.get("listenKey") if isinstance(reply, dict) else None
        if not isinstance(key, str) or not key:
            raise ConnectionEnded(f"POST {LISTEN_KEY_PATH}: no listenKey in the reply")
        self.listen_key = key
        try:
            ws = self.rt.connect(private_url(self.rt.spec.endpoint.ws_url, key))
        except ConnectionEnded as exc:
            if exc.fatal and "HTTP 400" in exc.reason:
                # The key vanished between POST and connect (expired, deleted
                # by another client): a new one will do.
                raise ConnectionEnded(f"listenKey refused by the private route ({exc.reason})") from None
            raise
        self.rt.extra_stats["keepalives"] = 0   # keys fixed before the ticker reads them
        self._thread = threading.Thread(target=self._keepalive_loop, name="listenkey", daemon=True)
        self._thread.start()
        log.info("listenKey stream open; keepalive every %g s", keepalive_interval())
        return ws

    def snapshot(self) -> dict[str, Any]:
        account = self.rest.signed("GET", "/fapi/v2/account")
        orders = self.rest.signed("GET", "/fapi/v1/openOrders")
        return usdm_snapshot(account, orders)

    def event_of(self, msg: Any) -> dict[str, Any] | None:
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        return msg.get("data", msg) if "e" not in msg else msg

    def handle(self, event: dict[str, Any]) -> tuple[str, dict[str, Any], int] | None:
        kind = event.get("e")
        if kind in PUBLISHED:
            return normalise_usdm(event)
        if kind == LISTEN_KEY_EXPIRED:
            raise ConnectionEnded("listenKey expired (listenKeyExpired event)")
        if kind == "serverShutdown":
            self.rt.notice("serverShutdown", event_time=event.get("E"))
        return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(DELETE_TIMEOUT)
        if self.listen_key is not None and self.rt.ending == "terminated":
            try:
                self.rest.call("DELETE", LISTEN_KEY_PATH, timeout=DELETE_TIMEOUT)
                log.info("listenKey deleted")
            except ConnectionEnded as exc:
                log.warning("listenKey delete failed: %s", exc.reason)

    # -- keepalive thread --------------------------------------------------------------

    def _keepalive_loop(self) -> None:
        interval = keepalive_interval()
        wait = interval
        while not self._stop.wait(wait):
            wait = interval
            try:
                self.rest.call("PUT", LISTEN_KEY_PATH)
            except ConnectionEnded as exc:
                if "-1125" in exc.reason or exc.fatal:
                    self.rt.end(f"listenKey keepalive failed: {exc.reason}")
                    return
                log.warning("listenKey keepalive failed, retrying: %s", exc.reason)
                wait = min(interval, KEEPALIVE_RETRY)
                continue
            self.keepalives += 1
            self.rt.extra_stats["keepalives"] = self.keepalives
