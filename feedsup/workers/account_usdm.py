"""USD-M futures user data: the listenKey lifecycle and the ``/private`` route.

- ``POST /fapi/v1/listenKey`` (API key header, no signature) creates the
  key, or returns the account's active one extended by 60 min;
- ``<ws_url>/private/ws?listenKey=<key>`` delivers ``ACCOUNT_UPDATE``,
  ``ORDER_TRADE_UPDATE`` and, when the key lapses, ``listenKeyExpired``;
- a keepalive thread ``PUT``s every ``listen_key_keepalive`` seconds (a
  ``[connection]`` key, 30 min by default), well inside the key's 60 min
  validity. ``-1125`` (key gone) or ``listenKeyExpired`` ends the
  connection as retryable: the parent restarts the worker, which creates a
  new key and resyncs. The worker never reconnects by itself;
- on SIGTERM the key is deleted (``DELETE``), closing the stream at Binance,
  unless another worker of this parent still uses it. Binance gives every
  client of one account the same key, so in a make-before-break rotation the
  successor shares the retiring worker's key: a DELETE would cut the
  successor off. Workers record their use of a key as lease files in the
  parent's run directory; the last one out deletes the key.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

import websocket

from feedsup.credentials import Credentials
from feedsup.workers.signed_rest import SignedRest
from feedsup.workers.runtime import ConnectionEnded, Runtime
from feedsup.workers.threads import Waiter

log = logging.getLogger("feedsup.worker.account")

LISTEN_KEY_PATH = "/fapi/v1/listenKey"
# After a failed keepalive (network, 5xx), try again sooner than a full period.
KEEPALIVE_RETRY = 60.0
DELETE_TIMEOUT = 2.0   # stays inside the parent's TERM -> KILL grace


class KeyLeases:
    """Which live workers of this parent use one listenKey (files named by
    pid in ``<rundir>/listenkeys/<hash of the key>``, under an flock)."""

    def __init__(self, rundir: str, listen_key: str, pid: int | None = None) -> None:
        digest = hashlib.sha256(listen_key.encode()).hexdigest()[:24]
        self.dir = os.path.join(rundir, "listenkeys", digest) if rundir else ""
        self.pid = pid or os.getpid()

    def take(self) -> None:
        if self.dir:
            with self._locked():
                open(os.path.join(self.dir, str(self.pid)), "w").close()

    def release(self) -> bool:
        """Drop our lease; True if nobody else alive holds one (delete the key)."""
        if not self.dir:
            return True
        with self._locked():
            try:
                os.unlink(os.path.join(self.dir, str(self.pid)))
            except FileNotFoundError:
                pass
            others = [int(n) for n in os.listdir(self.dir) if n.isdigit()]
            return not any(_alive(pid) for pid in others)

    def _locked(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        return _FileLock(os.path.join(self.dir, ".lock"))


class _FileLock:
    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)   # closing releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A SIGKILLed worker is a zombie until the parent reaps it: not a user.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def private_url(ws_url: str, listen_key: str) -> str:
    return f"{ws_url.rstrip('/')}/private/ws?listenKey={quote(listen_key, safe='')}"


class UsdmSession:
    def __init__(self, rt: Runtime, creds: Credentials) -> None:
        self.rt = rt
        self.rest = SignedRest.for_worker(rt, creds)
        self.listen_key: str | None = None
        self.leases: KeyLeases | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> websocket.WebSocket:
        reply = self.rest.call("POST", LISTEN_KEY_PATH)
        key = reply.get("listenKey") if isinstance(reply, dict) else None
        if not isinstance(key, str) or not key:
            raise ConnectionEnded(f"POST {LISTEN_KEY_PATH}: no listenKey in the reply")
        self.listen_key = key
        self.leases = KeyLeases(self.rt.spec.rundir, key)
        self.leases.take()
        try:
            ws = self.rt.connect(private_url(self.rt.spec.endpoint.ws_url, key))
        except ConnectionEnded as exc:
            if exc.fatal and "HTTP 400" in exc.reason:
                # The key vanished between POST and connect (expired, deleted
                # by another client): a new one will do.
                raise ConnectionEnded(f"listenKey refused by the private route ({exc.reason})") from None
            raise
        self.rt.extra_stats["keepalives"] = 0   # keys fixed before the ticker reads them
        keepalive = Keepalive(lambda: self.rest.call("PUT", LISTEN_KEY_PATH), self.rt.end, self._on_keepalive,
                              self.rt.conn.listen_key_keepalive, self._stop)
        self._thread = self.rt.threads.start("listenkey", keepalive.run, self._stop)
        log.info("listenKey stream open; keepalive every %g s", keepalive.interval)
        return ws

    def _on_keepalive(self, count: int) -> None:
        self.rt.extra_stats["keepalives"] = count

    def snapshot(self) -> dict[str, Any]:
        return self.rest.account_snapshot(self.rt.spec.stream.market)

    def event_of(self, msg: Any) -> dict[str, Any] | None:
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        return msg.get("data", msg) if "e" not in msg else msg

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self.rt.threads.join(DELETE_TIMEOUT, only=self._thread)
        if self.leases is None:
            return                           # no key was created
        last_user = self.leases.release()
        if self.rt.ending != "terminated":
            return                           # a restart follows: the next worker reuses the key
        if not last_user:
            log.info("listenKey kept: another worker of this parent uses it (rotation)")
            return
        try:
            self.rest.call("DELETE", LISTEN_KEY_PATH, timeout=DELETE_TIMEOUT)
            log.info("listenKey deleted")
        except ConnectionEnded as exc:
            log.warning("listenKey delete failed: %s", exc.reason)


@dataclass
class Keepalive:
    """The listenKey keepalive thread: ``put()`` every ``interval`` seconds,
    again after ``KEEPALIVE_RETRY`` (or ``interval``, if shorter) when one
    failed for a reason that passes, and ``end(reason)`` when the key is gone
    (``-1125``) or refused. Its only clock is ``stop.wait``: a test's fake
    returns at once."""

    put: Callable[[], Any]
    end: Callable[[str], None]
    sent: Callable[[int], None]
    interval: float
    stop: Waiter
    retry: float = KEEPALIVE_RETRY
    count: int = 0

    def run(self) -> None:
        interval = self.interval
        wait = interval
        while not self.stop.wait(wait):
            wait = interval
            try:
                self.put()
            except ConnectionEnded as exc:
                if "-1125" in exc.reason or exc.fatal:
                    self.end(f"listenKey keepalive failed: {exc.reason}")
                    return
                log.warning("listenKey keepalive failed, retrying: %s", exc.reason)
                wait = min(interval, self.retry)
                continue
            self.count += 1
            self.sent(self.count)
