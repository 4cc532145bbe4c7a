"""Local order book worker (``channel = "depth"``): REST snapshot + diffs.

One connection carries ``<symbol>@depth@100ms`` for every configured symbol;
each symbol has its own book sync (``feedsup.workers.book``: spot ``U``/``u``
rules, futures ``pu`` chaining). Snapshots come from a fetcher thread through
the shared REST weight budget while the reader keeps buffering diffs, as
Binance's procedure asks. After every diff applied to a synced book the
worker publishes the top ``depth_levels`` on ``depth.<SYMBOL>`` with the
ordering key ``(update_id, 0, True)``. A sequence break discards that book
and resyncs it in place (``resyncs`` in the liveness stats); the connection
and the other symbols' books carry on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import msgpack
import orjson
import websocket

from feedsup.ipc import frames
from feedsup.workers import book, rest, restlimit
from feedsup.workers.market import (check_symbols, handle_other,
                                    wait_readable)
from feedsup.workers.normalise import MalformedEvent, depth_frame, make_normaliser
from feedsup.workers.runtime import Runtime, receive
from feedsup.workers.streams import stream_url

log = logging.getLogger("feedsup.worker.depth")

SNAPSHOT_LIMIT = 1000          # levels per side; weight 50 spot, 20 futures
SNAPSHOT_DEADLINE_S = 10.0     # one snapshot, retries and waits for weight included
REST_TIMEOUT_S = 5.0
POLL_S = 0.05                  # how soon a finished snapshot is applied on a quiet stream
SNAPSHOT_PATHS = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth"}


class SnapshotFetcher:
    """A thread that turns snapshot requests into REST calls. Results land in
    ``results`` as ``(symbol, body | None, error)``; the reader applies them."""

    def __init__(self, rt: Runtime) -> None:
        spec = rt.spec
        self.market = spec.stream.market
        self.stop = threading.Event()
        budget = restlimit.SharedBudget.for_spec(spec)
        self.client = rest.RestClient(spec.endpoint.rest_url, self.market, budget, REST_TIMEOUT_S, self.stop)
        self.requests: queue.Queue[str | None] = queue.Queue()
        self.results: deque[tuple[str, Any, str]] = deque()
        self.pending: set[str] = set()      # reader thread only
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self.requests.put(None)

    def request(self, symbol: str) -> None:
        """Reader thread: fetch a snapshot of ``symbol`` unless one is on its way."""
        if symbol not in self.pending:
            self.pending.add(symbol)
            self.requests.put(symbol)

    def _run(self) -> None:
        path = SNAPSHOT_PATHS[self.market]
        while not self.stop.is_set():
            symbol = self.requests.get()
            if symbol is None:
                return
            try:
                body = self.client.fetch(path, {"symbol": symbol, "limit": SNAPSHOT_LIMIT},
                                         time.monotonic() + SNAPSHOT_DEADLINE_S)
                self.results.append((symbol, body, ""))
            except rest.RestFailed as exc:
                self.results.append((symbol, None, str(exc)))


class Books:
    """Every symbol's sync, and what to do with each verdict (reader thread)."""

    def __init__(self, rt: Runtime, fetcher: SnapshotFetcher) -> None:
        stream = rt.spec.stream
        self.rt = rt
        self.fetcher = fetcher
        self.levels = stream.depth_levels
        self.topic_prefix = stream.topic_prefix
        self.syncs = {s.upper(): book.make_book_sync(stream.market) for s in stream.symbols}
        self.event_time: dict[str, int] = {}
        self.topics: dict[str, bytes] = {}
        self.stats = rt.extra_stats
        self.stats.update(resyncs=0, snapshots=0, snapshot_errors=0)

    def on_diff(self, symbol: str, diff: dict[str, Any], recv_ns: int) -> None:
        sync = self.syncs[symbol]
        self.event_time[symbol] = diff["event_time"]
        self._act(symbol, sync.on_diff(diff), recv_ns)

    def on_snapshot(self, symbol: str, body: Any, error: str) -> None:
        self.fetcher.pending.discard(symbol)
        sync = self.syncs[symbol]
        if sync.synced or not sync.buffered:
            return                         # nothing asked for it any more
        if body is None:
            self.stats["snapshot_errors"] += 1
            log.warning("depth snapshot %s failed: %s", symbol, error)
            self.fetcher.request(symbol)
            return
        self.stats["snapshots"] += 1
        try:
            verdict = sync.on_snapshot(body["lastUpdateId"], body["bids"], body["asks"])
        except (KeyError, TypeError, book.BadLevel) as exc:
            self.stats["snapshot_errors"] += 1
            log.warning("depth snapshot %s malformed: %s", symbol, exc)
            self.fetcher.request(symbol)
            return
        self._act(symbol, verdict, time.time_ns())

    def _act(self, symbol: str, verdict: book.Verdict, recv_ns: int) -> None:
        if verdict is book.Verdict.RESYNC:
            self.stats["resyncs"] += 1
        if verdict.fetch_snapshot:
            self.fetcher.request(symbol)
        elif verdict.book_changed:
            self._publish(symbol, recv_ns)

    def _publish(self, symbol: str, recv_ns: int) -> None:
        sync = self.syncs[symbol]
        bids, asks = sync.top(self.levels)
        topic, data, major, minor, final = depth_frame(symbol, sync.update_id, bids, asks,
                                                       self.event_time.get(symbol, 0), self.topic_prefix)
        tb = self.topics.get(topic)
        if tb is None:
            tb = self.topics[topic] = topic.encode()
        body = msgpack.packb({"topic": topic, "stream": self.rt.name, "recv_ns": recv_ns, "data": data})
        self.rt.uplink.send(frames.encode_data(tb, major, minor, final, body))


def run(rt: Runtime) -> None:
    stream = rt.spec.stream
    check_symbols(rt)
    url = stream_url(stream, rt.spec.endpoint)
    ws = rt.connect(url)
    rt.ready(url=url)
    fetcher = SnapshotFetcher(rt)
    fetcher.start()
    try:
        read_loop(rt, ws, Books(rt, fetcher), make_normaliser(stream))
    finally:
        fetcher.close()


def read_loop(rt: Runtime, ws: websocket.WebSocket, books: Books, normalise) -> None:
    counters = rt.counters
    results = books.fetcher.results
    pending = books.fetcher.pending
    first = True
    while True:
        while results:
            books.on_snapshot(*results.popleft())
        # Block in recv unless a snapshot is on its way: then wake to apply it.
        if pending and not wait_readable(ws, POLL_S):
            continue
        got = receive(rt, ws)
        if got is None:
            continue
        payload, recv_ns = got
        try:
            event = orjson.loads(payload)["data"]
            _, data, _, _, _ = normalise(event)
            books.on_diff(data["symbol"].upper(), data, recv_ns)
        except (ValueError, KeyError, TypeError, MalformedEvent):
            handle_other(rt, payload)
            continue
        counters.last_event_ms = event.get("E") or 0
        counters.last_recv_ms = recv_ns // 1_000_000
        if first:
            first = False
            rt.streaming()
