"""Local order book worker (``channel = "depth"``): REST snapshot + diffs.

One connection carries ``<symbol>@depth@100ms`` for every configured symbol;
each symbol has its own book sync (``feedsup.binance.book``: spot ``U``/``u``
rules, futures ``pu`` chaining). Snapshots come from a fetcher thread through
the shared REST weight budget while the reader keeps buffering diffs, as
Binance's procedure asks; a failed or stale snapshot is fetched again after a
growing delay (``snapshot_retry_delay``). After every diff applied to a synced
book the worker publishes the top ``depth_levels`` on ``depth.<SYMBOL>`` with
the ordering key ``(update_id, 0, True)``. A sequence break discards that book
and resyncs it in place (``resyncs`` in the liveness stats); the connection
and the other symbols' books carry on.

What consumers and the parent hear (``Announcer``, pure):

* STREAMING (the rotation handover) waits for synced books, not for diffs: a
  successor that only buffers diffs leaves the old worker serving.
* A book that is not in sync is never silent: its topic gets an open gap
  notice at once (once, however many snapshots fail), and its next synced
  book closes it (a notice with ``to_ms``, then the book).
* ``idle`` in the liveness stats is the time since the last published book,
  so diffs that cannot be turned into a book do not keep a dead book fresh:
  past ``stale_after`` the parent restarts the worker.
"""

from __future__ import annotations

import heapq
import logging
import queue
import random
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import msgpack
import websocket

from feedsup.ipc import frames
from feedsup.ipc.topics import symbol_topic
from feedsup import restlimit
from feedsup.workers import rest
from feedsup.binance import book
from feedsup.binance.normalise import MalformedEvent, depth_frame, make_normaliser
from feedsup.workers.runtime import Runtime, check_symbols, read_event
from feedsup.workers.threads import Clock, Threads
from feedsup.binance.streams import stream_url

log = logging.getLogger("feedsup.worker.depth")

SNAPSHOT_LIMIT = 1000          # levels per side; weight 50 spot, 20 futures
SNAPSHOT_DEADLINE_S = 10.0     # one snapshot, retries and waits for weight included
REST_TIMEOUT_S = 5.0
POLL_S = 0.05                  # how soon a finished snapshot is applied on a quiet stream
SNAPSHOT_PATHS = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth"}
# A snapshot that failed (or was older than the buffered diffs) is asked for
# again after a delay doubling from RETRY_INITIAL_S to RETRY_MAX_S, so a REST
# outage or a ban costs a request every half minute, not a stream of them.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0
# STREAMING waits for every book to be synced, or this long after the first
# one: a symbol that cannot sync must not hold a rotation back for ever.
HANDOVER_GRACE_S = 10.0
BREAK_REASON = "order book out of sync (sequence break): resyncing"
NOT_SYNCED_REASON = "order book not synced yet"


def snapshot_retry_delay(failures: int, jitter: float) -> float:
    """Seconds to wait before asking again for a snapshot whose last
    ``failures`` (>= 1) attempts failed. ``jitter`` in [0, 1) picks a point in
    the upper half of the ceiling: workers that failed together spread out,
    and no retry is ever immediate."""
    ceiling = min(RETRY_MAX_S, RETRY_INITIAL_S * 2.0 ** min(max(failures, 1) - 1, 32))
    return ceiling * (0.5 + 0.5 * jitter)


class Gap(NamedTuple):
    """A gap notice for one symbol's topic; ``to_ms`` None while open."""

    symbol: str
    from_ms: int | None
    to_ms: int | None
    reason: str


class Announcer:
    """When to send STREAMING, and which gap notices the books call for (pure).

    STREAMING goes once every book is synced, or ``grace`` seconds after the
    first one was, whichever comes first. From then on, and for any book this
    worker has published, a book that is not in sync has an open gap notice,
    announced once; the book's next sync closes it. A book this worker has
    not served yet needs no notice before STREAMING: the old worker of a
    rotation still serves it, or the parent has announced the loss of the
    previous worker.
    """

    def __init__(self, symbols: list[str], grace: float = HANDOVER_GRACE_S) -> None:
        self.streaming = False
        self.grace = grace
        self._unsynced = set(symbols)
        self._published: set[str] = set()
        self._open: dict[str, Gap] = {}
        self._first_synced_at: float | None = None

    def lost(self, symbol: str, from_ms: int | None, reason: str) -> Gap | None:
        """``symbol``'s book is not in sync any more: the notice to open, if any."""
        self._unsynced.add(symbol)
        if symbol in self._open or not (self.streaming or symbol in self._published):
            return None
        gap = self._open[symbol] = Gap(symbol, from_ms, None, reason)
        return gap

    def synced(self, symbol: str, recv_ms: int, now: float) -> Gap | None:
        """``symbol``'s book is synced and about to be published (received at
        ``recv_ms``): the notice that closes its gap, if one is open."""
        self._unsynced.discard(symbol)
        self._published.add(symbol)
        if self._first_synced_at is None:
            self._first_synced_at = now
        gap = self._open.pop(symbol, None)
        return None if gap is None else gap._replace(to_ms=recv_ms)

    def start_streaming(self, now: float) -> list[Gap] | None:
        """None while STREAMING is not due; once it is, the notices to open
        right after it (books still not synced), and streaming is on."""
        if self.streaming or self._first_synced_at is None:
            return None
        if self._unsynced and now - self._first_synced_at < self.grace:
            return None
        self.streaming = True
        opened = [self.lost(s, None, NOT_SYNCED_REASON) for s in sorted(self._unsynced)]
        return [g for g in opened if g is not None]


class SnapshotFetcher:
    """A thread that turns snapshot requests into REST calls, each when it is
    due. Results land in ``results`` as ``(symbol, body | None, error)``; the
    reader applies them."""

    def __init__(self, market: str, client: Any, stop: threading.Event, clock: Clock = time.monotonic) -> None:
        self.market = market
        self.clock = clock
        self.stop = stop
        self.client = client
        # (due, symbol) from the reader; None wakes the thread to end.
        self.requests: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.results: deque[tuple[str, Any, str]] = deque()
        self.pending: set[str] = set()      # reader thread only
        self._due: list[tuple[float, str]] = []   # fetcher thread only: a heap
        self._thread: threading.Thread | None = None

    @classmethod
    def for_runtime(cls, rt: Runtime) -> "SnapshotFetcher":
        spec = rt.spec
        stop = threading.Event()
        budget = restlimit.SharedBudget.for_spec(spec)
        client = rest.RestClient(spec.endpoint.rest_url, spec.stream.market, budget, REST_TIMEOUT_S, stop,
                                 clock=rt.clock)
        return cls(spec.stream.market, client, stop, rt.clock)

    def start(self, threads: Threads) -> None:
        self._thread = threads.start("snapshots", self._run, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.requests.put(None)

    def request(self, symbol: str, delay: float = 0.0) -> None:
        """Reader thread: fetch a snapshot of ``symbol`` in ``delay`` seconds,
        unless one is on its way."""
        if symbol not in self.pending:
            self.pending.add(symbol)
            self.requests.put((self.clock() + delay, symbol))

    def _next_due(self) -> str | None:
        """Wait for the next request that is due; None when closing."""
        due = self._due
        while True:
            wait = None
            if due:
                wait = due[0][0] - self.clock()
                if wait <= 0:
                    return heapq.heappop(due)[1]
            try:
                item = self.requests.get(timeout=wait)
            except queue.Empty:
                continue
            if item is None:
                return None
            heapq.heappush(due, item)

    def _run(self) -> None:
        path = SNAPSHOT_PATHS[self.market]
        while not self.stop.is_set():
            symbol = self._next_due()
            if symbol is None:
                return
            try:
                body = self.client.fetch(path, {"symbol": symbol, "limit": SNAPSHOT_LIMIT},
                                         self.clock() + SNAPSHOT_DEADLINE_S)
                self.results.append((symbol, body, ""))
            except rest.RestFailed as exc:
                self.results.append((symbol, None, str(exc)))


class Books:
    """Every symbol's sync, and what to do with each verdict (reader thread)."""

    def __init__(self, rt: Runtime, fetcher: SnapshotFetcher, rng: random.Random | None = None) -> None:
        stream = rt.spec.stream
        self.rt = rt
        self.fetcher = fetcher
        self.levels = stream.depth_levels
        self.topic_prefix = stream.topic_prefix
        self.syncs = {s.upper(): book.make_book_sync(stream.market) for s in stream.symbols}
        self.announcer = Announcer(list(self.syncs))
        self.event_time: dict[str, int] = {}
        self.last_recv_ns: dict[str, int] = {}    # of each symbol's last published book
        self.failures: dict[str, int] = {}        # snapshots failed in a row, per symbol
        self.published = 0                        # books published: what ``idle`` measures
        self.topics: dict[str, bytes] = {}
        self.rng = rng or random.Random()
        self.stats = rt.extra_stats
        self.stats.update(resyncs=0, snapshots=0, snapshot_errors=0, gaps=0)

    def on_diff(self, symbol: str, diff: dict[str, Any], recv_ns: int) -> None:
        sync = self.syncs[symbol]
        self.event_time[symbol] = diff["event_time"]
        verdict = sync.on_diff(diff)
        if verdict is book.Verdict.APPLIED:      # the common case, kept short
            self._publish(symbol, recv_ns)
        else:
            self._act(symbol, verdict, recv_ns)

    def on_snapshot(self, symbol: str, body: Any, error: str) -> None:
        self.fetcher.pending.discard(symbol)
        sync = self.syncs[symbol]
        if sync.synced or not sync.buffered:
            return                         # nothing asked for it any more
        if body is None:
            self.stats["snapshot_errors"] += 1
            log.warning("depth snapshot %s failed: %s", symbol, error)
            self._retry(symbol)
            return
        self.stats["snapshots"] += 1
        try:
            verdict = sync.on_snapshot(body["lastUpdateId"], body["bids"], body["asks"])
        except (KeyError, TypeError, book.BadLevel) as exc:
            self.stats["snapshot_errors"] += 1
            log.warning("depth snapshot %s malformed: %s", symbol, exc)
            self._retry(symbol)
            return
        self._act(symbol, verdict, time.time_ns(), snapshot=True)

    def tick(self, now: float) -> None:
        """Send STREAMING once it is due, then open the gaps it calls for."""
        opened = self.announcer.start_streaming(now)
        if opened is None:
            return
        self.rt.streaming()
        for gap in opened:
            self._send_gap(gap, time.time_ns())

    def _act(self, symbol: str, verdict: book.Verdict, recv_ns: int, snapshot: bool = False) -> None:
        """Everything but APPLIED (``on_diff`` publishes those itself);
        BUFFERED and SKIPPED need nothing. ``snapshot``: the verdict came from
        applying a snapshot."""
        V = book.Verdict
        if verdict is V.SYNCED:
            self.failures.pop(symbol, None)
            gap = self.announcer.synced(symbol, recv_ns // 1_000_000, time.monotonic())
            if gap is not None:
                self._send_gap(gap, recv_ns)
            self._publish(symbol, recv_ns)
            self.tick(time.monotonic())
        elif verdict is V.RESYNC:
            self.stats["resyncs"] += 1
            last = self.last_recv_ns.get(symbol)
            gap = self.announcer.lost(symbol, None if last is None else last // 1_000_000, BREAK_REASON)
            if gap is not None:
                self._send_gap(gap, recv_ns)
            if snapshot:
                # The buffered diffs do not follow the snapshot: a failed
                # attempt, paced like one (lost diffs could repeat it at once).
                self._retry(symbol)
            else:
                self.fetcher.request(symbol)
        elif verdict is V.STALE_SNAPSHOT:
            self._retry(symbol)       # REST trails the stream: ask again, not at once
        elif verdict is V.NEED_SNAPSHOT:
            self.fetcher.request(symbol)

    def _retry(self, symbol: str) -> None:
        failures = self.failures[symbol] = self.failures.get(symbol, 0) + 1
        self.fetcher.request(symbol, snapshot_retry_delay(failures, self.rng.random()))

    def _topic(self, topic: str) -> bytes:
        tb = self.topics.get(topic)
        if tb is None:
            tb = self.topics[topic] = topic.encode()
        return tb

    def _publish(self, symbol: str, recv_ns: int) -> None:
        sync = self.syncs[symbol]
        bids, asks = sync.top(self.levels)
        topic, data, major, minor, final = depth_frame(symbol, sync.update_id, bids, asks,
                                                       self.event_time.get(symbol, 0), self.topic_prefix)
        body = msgpack.packb({"topic": topic, "stream": self.rt.name, "recv_ns": recv_ns, "data": data})
        self.rt.uplink.send(frames.encode_data(self._topic(topic), major, minor, final, body))
        self.last_recv_ns[symbol] = recv_ns
        self.published += 1

    def _send_gap(self, gap: Gap, recv_ns: int) -> None:
        topic = symbol_topic("depth", gap.symbol, "", self.topic_prefix)
        body = frames.encode_gap_body(topic, self.rt.name, recv_ns, gap.from_ms, gap.to_ms, gap.reason)
        self.rt.uplink.send(frames.encode_gap(self._topic(topic), body))
        if gap.to_ms is None:
            self.stats["gaps"] += 1
            log.warning("depth %s: gap opened: %s", gap.symbol, gap.reason)


def run(rt: Runtime) -> None:
    stream = rt.spec.stream
    check_symbols(rt)
    url = stream_url(stream, rt.spec.endpoint)
    ws = rt.connect(url)
    rt.ready(url=url)
    fetcher = SnapshotFetcher.for_runtime(rt)
    books = Books(rt, fetcher)
    rt.progress = lambda: books.published    # stale means no book published, not no diff
    fetcher.start(rt.threads)
    try:
        read_loop(rt, ws, books, make_normaliser(stream))
    finally:
        fetcher.close()


def read_loop(rt: Runtime, ws: websocket.WebSocket, books: Books, normalise) -> None:
    counters = rt.counters
    results = books.fetcher.results
    pending = books.fetcher.pending
    announcer = books.announcer
    while True:
        while results:
            books.on_snapshot(*results.popleft())
        if not announcer.streaming:
            books.tick(time.monotonic())
        # Block in recv unless a snapshot is on its way or STREAMING may fall
        # due: then wake to act on it, and send what is queued before waiting.
        wait = None
        if pending or not announcer.streaming:
            rt.uplink.flush()
            wait = POLL_S
        got = read_event(rt, ws, normalise, wait)
        if got is None:
            continue
        recv_ns, event, (_, data, _, _, _) = got
        try:
            books.on_diff(data["symbol"].upper(), data, recv_ns)
        except (ValueError, KeyError, TypeError, MalformedEvent):
            rt.counters.malformed += 1   # a depth diff the book refuses (its checks)
            continue
        counters.last_event_ms = event.get("E") or 0
        counters.last_recv_ms = recv_ns // 1_000_000
