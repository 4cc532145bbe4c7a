"""Re-reading exchangeInfo for ``symbols = "*"`` streams, off the parent's loop.

A daemon thread wakes every ``[feedsup] universe_refresh`` seconds and GETs
exchangeInfo once per market, through the REST weight budget the workers
share (``restlimit``), each fetch bounded in time. Answers (or failures)
wait in a deque the parent's housekeeping takes from; the parent decides
and acts (``feedsup/universe.py``: ``Universe.update``, ``plan``). A failure
is logged and retried at the next period: it never reaches the parent's loop.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from feedsup import logs, restlimit
from feedsup.universe import EXCHANGE_INFO_PATH, EXCHANGE_INFO_WEIGHT

log = logging.getLogger("feedsup.universe")

# One exchangeInfo fetch (weight waits and retries included) gets this long.
FETCH_DEADLINE_S = 30.0
REQUEST_TIMEOUT_S = 10.0
MAX_RESULTS = 16        # answers not taken yet; older ones are superseded anyway
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 5.0
# Binance's full spot exchangeInfo is about 15 MB; refuse anything far larger.
MAX_BODY = 64 << 20


@dataclass(frozen=True)
class Source:
    market: str
    rest_url: str
    budget_dir: str     # where the market's shared REST weight budget lives


@dataclass(frozen=True)
class Answer:
    market: str
    body: dict[str, Any] | None     # None: the fetch failed (``error``)
    error: str = ""


Fetch = Callable[[Source, float, threading.Event], dict[str, Any]]


def budgeted_fetch(source: Source, deadline: float, stop: threading.Event, retry: bool = True) -> dict[str, Any]:
    """GET exchangeInfo under the shared weight budget (a ban or a 429 is
    honoured by everyone), retried with a doubling delay until ``deadline``
    (``retry`` False: one try, as ``feedsup run`` at start, whose exit 69
    its supervisor retries)."""
    budget = restlimit.SharedBudget.for_market(source.budget_dir, source.market, rest_url=source.rest_url)
    path = EXCHANGE_INFO_PATH[source.market]
    delay, last = RETRY_INITIAL_S, "no attempt"
    while True:
        budget.acquire(EXCHANGE_INFO_WEIGHT[source.market], deadline, stop)   # BudgetUnavailable: give up
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"deadline passed (last: {last})")
        try:
            status, headers, raw = _get(source.rest_url.rstrip("/") + path, min(REQUEST_TIMEOUT_S, remaining))
        except (OSError, http.client.HTTPException) as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        else:
            budget.observe(status, headers)
            if status == 200:
                body = json.loads(raw)
                if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
                    raise ValueError("exchangeInfo answer has no symbols list")
                return body
            last = f"HTTP {status} {raw[:120]!r}"
            if status in (418, 429) and retry:
                continue        # the budget now holds everyone until Retry-After
        if not retry or time.monotonic() + delay > deadline or stop.wait(delay):
            raise TimeoutError(f"gave up (last: {last})")
        delay = min(delay * 2, RETRY_MAX_S)


def _get(url: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read(MAX_BODY)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {}), err.read(4096)


def start_fetch(state_file: str) -> Callable[[str, str], dict[str, Any]]:
    """``universe.resolve``'s fetch for ``feedsup run``: one try, charged to
    the budget the workers will share (so a ban a previous parent met holds)."""
    def fetch(rest_url: str, market: str) -> dict[str, Any]:
        source = Source(market, rest_url, restlimit.budget_dir(state_file, "", rest_url))
        return budgeted_fetch(source, time.monotonic() + REQUEST_TIMEOUT_S, threading.Event(), retry=False)
    return fetch


class Refresher:
    """The thread; ``take()`` is the parent's side (never blocks)."""

    def __init__(self, sources: list[Source], period: float, fetch: Fetch = budgeted_fetch) -> None:
        self.sources = sources
        self.period = period
        self._fetch = fetch
        self._stop = threading.Event()
        self._answers: collections.deque[Answer] = collections.deque(maxlen=MAX_RESULTS)
        self._thread = threading.Thread(target=self._main, name="feedsup-universe", daemon=True)
        self.fetches = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_S)

    def take(self) -> list[Answer]:
        out = []
        while self._answers:
            out.append(self._answers.popleft())
        return out

    @property
    def pending(self) -> bool:
        return bool(self._answers)

    def _main(self) -> None:
        # The first answer came at start (universe.resolve): wait a period first.
        while not self._stop.wait(self.period):
            for source in self.sources:
                self._answers.append(self._one(source))

    def _one(self, source: Source) -> Answer:
        self.fetches += 1
        try:
            body = self._fetch(source, time.monotonic() + FETCH_DEADLINE_S, self._stop)
        except Exception as exc:     # any failure: logged, retried next period
            self.failures += 1
            error = f"{exc.__class__.__name__}: {exc}"
            logs.event(log, "exchangeInfo failed", logging.WARNING, market=source.market, error=error[:300],
                       retry_in=f"{self.period:g}s")
            return Answer(source.market, None, error)
        return Answer(source.market, body)
