"""The optional Prometheus endpoint: the parent's status, as metrics.

The parent calls ``update(Parent.status())`` about once a second, plus
``count_restart`` for every ``policy.Restarted`` (a worker replaced after a
failure, by the operator or by a rotation, or a stream going FATAL) and
``observe_lag`` per lag sample. This
module only translates; it decides nothing. Each instance owns a private
``CollectorRegistry`` so several can live in one process (tests, embedding).

Worker counters (``msgs``, ``drops``, ...) start again from 0 in every new
worker process, but Prometheus counters must never go down. So the totals
here add the *delta* since the previous sample of the same worker instance,
and a new instance (restart, rotation) or a decrease counts as a reset: the
new worker's value is added whole. What the old worker counted between its
last liveness report and its exit is not in its stats and so is not counted.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

# supervisord's vocabulary, as in policy.State; every one gets a 0/1 series.
STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")

REASONS = (
    "killed", "ping_timeout", "closed", "connect_failed", "liveness", "stale",
    "start_timeout", "rotated", "manual", "fatal", "spawn_failed", "other",
)

# Ordered: the first rule whose fragment occurs in the lower-cased reason wins.
# Specific causes come before generic ones, because wrapped reasons such as
# "successor took over (ping/pong timed out)" or "rotation failed: stale: ..."
# should count under their underlying cause.
_REASON_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The policy reports a stream going FATAL as "fatal"; a rejected upgrade
    # it retries (the URL worked before) is a connect failure.
    ("fatal", ("restart intensity exceeded", "invalid symbol", "fatal")),
    ("spawn_failed", ("spawn failed",)),
    ("manual", ("restart requested", "manual")),
    ("ping_timeout", ("ping/pong", "ping timeout", "pong timeout", "keepalive ping")),
    ("liveness", ("liveness",)),
    ("stale", ("stale", "no data")),
    ("start_timeout", ("start timeout",)),
    ("connect_failed", ("connect failed", "upgrade refused", "upgrade rejected", "connection refused")),
    ("killed", ("killed", "terminated", "sigkill", "sigterm", "still alive")),
    ("closed", ("closed", "connection lost")),
    ("rotated", ("rotat", "servershutdown", "max_age")),
)

# Exchange lag is milliseconds from the event's exchange time to our receipt:
# ~1 ms on a near-exchange host, seconds when something is badly behind.
LAG_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# Worker stats key -> counter, all kept monotonic across worker restarts.
_WORKER_COUNTERS = (
    ("msgs", "feedsup_messages_total", "Messages received from the exchange"),
    ("drops", "feedsup_drops_total", "Messages a worker dropped because the parent was not reading"),
    ("malformed", "feedsup_malformed_total", "Messages that could not be parsed"),
    ("gaps", "feedsup_gaps_total", "Sequence gaps detected in exchange data"),
    ("backfilled", "feedsup_backfilled_total", "Events recovered by REST backfill"),
)

# [sink.nats] status keys -> gauges (0 without a sink). Counts since the
# parent started, as in ``feedsup status --json``'s "sink".
_SINK_GAUGES = (
    ("connected", "1 while the JetStream sink is connected to a NATS server"),
    ("acked", "Frames JetStream acknowledged (stored or already stored)"),
    ("duplicates", "Frames JetStream already had (another instance published them first)"),
    ("pending", "Frames waiting for a JetStream ack"),
    ("dropped", "Frames dropped because the sink buffer was full (announced as gap notices)"),
)


def classify_reason(reason: str) -> str:
    """Map a free-text restart reason to one of ``REASONS``.

    Reasons carry pids, close codes and durations; as label values they would
    make a new time series per restart. An already classified label maps to
    itself, so classifying twice is harmless.
    """
    text = (reason or "").strip().lower()
    if text in REASONS:
        return text
    for label, fragments in _REASON_RULES:
        if any(fragment in text for fragment in fragments):
            return label
    return "other"


class MonotonicTotals:
    """Turns per-worker counters that restart from 0 into monotonic totals.

    Pure bookkeeping: ``advance`` returns how much to add to the total.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[Any, float]] = {}  # (stream, key) -> (instance, value)

    def advance(self, stream: str, key: str, instance: Any, value: float) -> float:
        previous = self._last.get((stream, key))
        self._last[(stream, key)] = (instance, value)
        if previous is None or previous[0] != instance or value < previous[1]:
            return value  # a new worker (or a reset one) counts from 0
        return value - previous[1]


class Metrics:
    """Serve feedsup's status as Prometheus metrics on ``host:port``."""

    def __init__(self, port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> None:
        self.port = port
        self.host = host
        self.registry = registry if registry is not None else CollectorRegistry()
        # Held while a scrape renders and while update() writes, so a scrape
        # never sees half an update (e.g. two states at 1 for one stream).
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._totals = MonotonicTotals()
        self._known_streams: set[str] = set()
        self._shown: set[str] = set()      # streams of the last status snapshot
        self._published_seen = 0.0
        self._suppressed_seen = 0.0
        self._refused_seen = 0.0
        self._tcp_closures_seen = 0.0
        self._tcp_refused_seen = 0.0
        self._relay_restarts_seen = 0.0
        self._define_metrics()

    def _define_metrics(self) -> None:
        r = self.registry
        self.state = Gauge("feedsup_stream_state", "1 for the stream's current state, 0 for the others",
                           ["stream", "state"], registry=r)
        self.restarts = Counter("feedsup_restarts_total", "Stream restarts by classified reason",
                                ["stream", "reason"], registry=r)
        self.worker_counters = {
            key: Counter(name, doc, ["stream"], registry=r) for key, name, doc in _WORKER_COUNTERS
        }
        self.last_message_age = Gauge("feedsup_last_message_age_seconds",
                                      "Seconds since the stream's worker last received data "
                                      "(NaN: no worker or no data yet)", ["stream"], registry=r)
        self.lag = Histogram("feedsup_exchange_lag_ms", "Exchange event time to receipt, in milliseconds",
                             ["stream"], buckets=LAG_BUCKETS_MS, registry=r)
        self.budget = Gauge("feedsup_connect_budget_remaining",
                            "Connection attempts left in the current budget window", registry=r)
        self.published = Counter("feedsup_published_total", "Frames published to consumers", registry=r)
        self.suppressed = Counter("feedsup_duplicates_suppressed_total",
                                  "Duplicate frames suppressed (overlapping workers)", registry=r)
        self.uptime = Gauge("feedsup_uptime_seconds", "Seconds since the parent started", registry=r)
        self.curve_refused = Counter("feedsup_curve_refused_total",
                                     "Connections refused by CURVE authentication (unknown client key)",
                                     registry=r)
        self.tcp_refusing = Gauge("feedsup_tcp_refusing", "1 while the tcp pub/control endpoints are closed "
                                  "because file descriptors run short", registry=r)
        self.tcp_closures = Counter("feedsup_tcp_closures_total", "Times the tcp pub/control endpoints were "
                                    "closed because file descriptors ran short", registry=r)
        self.tcp_refused = Counter("feedsup_tcp_refused_total", "Connection attempts refused while the tcp "
                                   "endpoints were closed", registry=r)
        self.relay_up = Gauge("feedsup_relay_up", "1 while the relay serving the tcp:// endpoints runs, 0 while "
                              "it is restarted; 0 also without tcp:// endpoints (no relay)", registry=r)
        self.relay_restarts = Counter("feedsup_relay_restarts_total", "Times the relay was restarted", registry=r)
        self.relay_open_fds = Gauge("feedsup_relay_open_fds", "File descriptors open in the relay", registry=r)
        self.open_fds = Gauge("feedsup_open_fds", "File descriptors open in the parent", registry=r)
        self.fd_limit = Gauge("feedsup_fd_limit", "The parent's soft file-descriptor limit", registry=r)
        self.backfill_rows = Gauge("feedsup_backfill_rows", "Rows fetched so far by the stream's running "
                                   "REST backfill (0: none running)", ["stream"], registry=r)
        self.backfill_eta = Gauge("feedsup_backfill_eta_seconds", "Estimated seconds left in the stream's "
                                  "running REST backfill (NaN: none running, or no estimate yet)",
                                  ["stream"], registry=r)
        self.sink = {key: Gauge(f"feedsup_sink_{key}", doc, registry=r) for key, doc in _SINK_GAUGES}

    # -- serving -------------------------------------------------------------

    def start(self) -> None:
        """Serve /metrics in a daemon thread; port 0 picks a free port (see ``self.port``)."""
        if self._server is not None:
            raise RuntimeError("metrics endpoint already started")
        server_class = _Server6 if ":" in self.host else _Server
        server = make_server(self.host, self.port, self._locked(make_wsgi_app(self.registry)),
                             server_class=server_class, handler_class=_QuietHandler)
        self.port = server.server_port
        self._stopping = threading.Event()
        self._server = server
        self._thread = threading.Thread(target=_serve, args=(server, self._stopping),
                                        name="feedsup-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice or unstarted."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        self._stopping.set()
        _wake(self.host, self.port)
        if thread is not None:
            thread.join(timeout=5)
        server.server_close()

    def _locked(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def locked_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            with self._lock:
                # list(): render inside the lock; sending happens outside it.
                return list(app(environ, start_response))
        return locked_app

    # -- feeding ---------------------------------------------------------------

    def update(self, status: Mapping[str, Any]) -> None:
        """Take one ``Parent.status()`` snapshot."""
        with self._lock:
            rows = status.get("streams") or []
            for row in rows:
                self._update_stream(row)
            # A stream removed while running (a connection of a symbols = "*"
            # stream whose symbols were all delisted) ended EXITED.
            shown = {str(row.get("name")) for row in rows}
            for gone in self._shown - shown:
                self._update_stream({"name": gone, "state": "EXITED", "instance": None})
            self._shown = shown
            if rows:
                _set_if_number(self.budget, rows[0].get("budget_remaining"))
            _set_if_number(self.uptime, status.get("uptime"))
            self._published_seen = _add_delta(self.published, self._published_seen, status.get("published"))
            self._suppressed_seen = _add_delta(self.suppressed, self._suppressed_seen, status.get("suppressed"))
            self._refused_seen = _add_delta(self.curve_refused, self._refused_seen, status.get("curve_refused"))
            self._tcp_closures_seen = _add_delta(self.tcp_closures, self._tcp_closures_seen,
                                                 status.get("tcp_closures"))
            self._tcp_refused_seen = _add_delta(self.tcp_refused, self._tcp_refused_seen, status.get("tcp_refused"))
            self.tcp_refusing.set(1 if status.get("tcp_refusing") else 0)
            relay = status.get("relay")
            if isinstance(relay, Mapping):
                self.relay_up.set(1 if relay.get("state") == "RUNNING" else 0)
                self._relay_restarts_seen = _add_delta(self.relay_restarts, self._relay_restarts_seen,
                                                       relay.get("restarts"))
                if isinstance(relay.get("fds"), Mapping):
                    _set_if_number(self.relay_open_fds, relay["fds"].get("open"))
            fds = status.get("fds")
            if isinstance(fds, Mapping):
                _set_if_number(self.open_fds, fds.get("open"))
                _set_if_number(self.fd_limit, fds.get("limit"))
            sink = status.get("sink")
            for key, gauge in self.sink.items() if sink else ():
                _set_if_number(gauge, float(sink.get(key) is not None) if key == "connected" else sink.get(key))

    def observe_lag(self, stream: str, lag_ms: float) -> None:
        """One exchange lag sample; non-numbers are ignored.

        Negative lag (local clock behind the exchange's) is recorded as 0, so
        the histogram's ``_sum`` stays monotonic as Prometheus expects.
        """
        if _number(lag_ms) is None:
            return
        self.lag.labels(stream=stream).observe(max(0.0, float(lag_ms)))

    def count_restart(self, stream: str, reason: str) -> None:
        with self._lock:
            self._ensure_stream(stream)
            self.restarts.labels(stream=stream, reason=classify_reason(reason)).inc()

    def _ensure_stream(self, stream: str) -> None:
        """Create a stream's series at 0, so rate() and increase() see the first event."""
        if stream in self._known_streams:
            return
        self._known_streams.add(stream)
        for reason in REASONS:
            self.restarts.labels(stream=stream, reason=reason)
        for counter in self.worker_counters.values():
            counter.labels(stream=stream)

    def _update_stream(self, row: Mapping[str, Any]) -> None:
        stream = str(row.get("name"))
        self._ensure_stream(stream)
        current = row.get("state")
        for state in STATES:
            self.state.labels(stream=stream, state=state).set(1 if state == current else 0)
        instance = row.get("instance")
        stats = row.get("stats") or {}
        # Without an active worker the stats are the dead worker's last ones:
        # counting them again adds nothing, and their idle is frozen, not an age.
        progress = stats.get("backfill") if instance is not None else None
        progress = progress if isinstance(progress, dict) else {}
        self.backfill_rows.labels(stream=stream).set(_number(progress.get("rows")) or 0)
        eta = _number(progress.get("eta_s"))
        self.backfill_eta.labels(stream=stream).set(math.nan if eta is None else eta)
        if instance is None:
            self.last_message_age.labels(stream=stream).set(math.nan)
            return
        idle = _number(stats.get("idle"))
        self.last_message_age.labels(stream=stream).set(math.nan if idle is None else idle)
        for key, counter in self.worker_counters.items():
            value = _number(stats.get(key))
            if value is not None:
                counter.labels(stream=stream).inc(self._totals.advance(stream, key, instance, value))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _set_if_number(gauge: Gauge, value: Any) -> None:
    number = _number(value)
    if number is not None:
        gauge.set(number)


def _add_delta(counter: Counter, seen: float, value: Any) -> float:
    """Advance a parent-level counter to ``value``; a decrease is a reset."""
    number = _number(value)
    if number is None:
        return seen
    counter.inc(number - seen if number >= seen else number)
    return number


def _serve(server: WSGIServer, stopping: threading.Event) -> None:
    # Not serve_forever(): its shutdown() waits up to a poll interval, and a
    # shorter interval means wake-ups all day. Here the loop blocks until a
    # connection comes, and stop() makes one (``_wake``).
    while not stopping.is_set():
        server.handle_request()


def _wake(host: str, port: int) -> None:
    """Connect once so the serving loop's blocking accept returns."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        socket.create_connection((target, port), timeout=1).close()
    except OSError:
        pass  # the loop thread is a daemon; it cannot keep the process alive


# A scrape is one short request; a few at a time is plenty. Connections past
# the cap are closed at once, and a connection gets IO_TIMEOUT_S per read or
# write, so idle or unfinished requests cannot pile up threads and fds.
MAX_CONNECTIONS = 8
IO_TIMEOUT_S = 5.0
# After a failed accept (EMFILE: out of fds) wait before the next one, or the
# still-readable listening socket spins this thread.
ACCEPT_BACKOFF_S = 0.2


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper must not keep the parent alive
    block_on_close = False
    request_queue_size = 64   # listen backlog: socketserver's 5 overflows in a burst (1 s SYN retries)

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError:
            # socketserver drops the failed request and keeps serving; slow
            # down so a full fd table does not spin this thread.
            time.sleep(ACCEPT_BACKOFF_S)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)   # starts the handler thread
        except Exception:          # no thread to start: socketserver closes the request
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out or hung up is not news (and no traceback on stderr)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = IO_TIMEOUT_S    # per read/write: an unfinished request is dropped

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one access line per scrape would drown feedsup's structured log
