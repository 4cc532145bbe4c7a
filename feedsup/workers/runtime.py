"""What every worker kind shares: dying with the parent, the ticker thread
(liveness pings to the parent, native pings to the exchange), connecting,
and reporting how the connection ended.

A worker runs one connection and exits when it ends, for any reason. It
never reconnects by itself: the parent owns every restart decision.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import websocket
import zmq

from feedsup import procs, restlimit
from feedsup.binance.normalise import MalformedEvent, Normalised
from feedsup.ipc.frames import Control
from feedsup.workers import fastrecv, rest
from feedsup.workers.keepalive import Pinger, Ticker
from feedsup.workers.threads import Clock, Threads
from feedsup.ipc.exits import EX_CONFIG, EX_STOPPED, EX_TEMPFAIL, UPGRADE_REFUSED, UPGRADE_REJECTED
from feedsup.ipc.spec import WorkerSpec
from feedsup.workers.uplink import Uplink, flush_before_block

log = logging.getLogger("feedsup.worker")


# The watchdog checks that the parent lives this often: an orphan exits
# within about this long, whatever its other threads are blocked in.
ORPHAN_POLL_S = 0.25
# After TERM the worker closes its connection and reports; if it is still
# running this long after (stuck in a TLS handshake, a DNS lookup, a
# listenKey DELETE), it exits anyway. Above the parent's default
# stop_timeout (3 s): with a live parent, its KILL comes first.
STOP_GRACE_S = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# On the way out, the helper threads (stopped by then) get this long in all
# to end; one still in a REST call dies with the process. Kept short: it
# adds to a stopped worker's exit only when a thread is stuck.
THREAD_JOIN_S = 0.5


OP_TEXT = websocket.ABNF.OPCODE_TEXT
OP_BINARY = websocket.ABNF.OPCODE_BINARY
OP_CLOSE = websocket.ABNF.OPCODE_CLOSE
OP_PONG = websocket.ABNF.OPCODE_PONG


class ConnectionEnded(Exception):
    """The connection is over; ``fatal`` says whether a retry can help."""

    def __init__(self, reason: str, fatal: bool = False, close_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.close_code = close_code


@dataclass
class Counters:
    """Written by the reading thread, read by the ticker (the GIL keeps each
    int read whole; the figures are statistics, not invariants)."""

    msgs: int = 0
    bytes: int = 0
    malformed: int = 0
    last_event_ms: int = 0   # exchange event time of the newest message
    last_recv_ms: int = 0    # our wall clock when it arrived


class Runtime:
    def __init__(self, spec: WorkerSpec, clock: Clock = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        # Every helper thread of this worker is started, stopped and joined here.
        self.threads = Threads(clock)
        self.name = spec.stream.name
        self.conn = spec.stream.connection
        self.ctx = zmq.Context(io_threads=1)
        self.uplink = Uplink(self.ctx, spec.uplink, spec.instance, self.conn.uplink_hwm)   # reading thread only
        self.counters = Counters()
        self.ws: websocket.WebSocket | None = None
        self.connected_at: float | None = None
        self.pinger = Pinger(self.conn.ping_interval, self.conn.ping_timeout)
        self._end_reason: str | None = None
        self._signalled: int | None = None   # set by the signal handler, nothing else
        self._stop = threading.Event()
        self._watching = True               # cleared only by tests that run a Runtime in-process
        self._wake_r, self._wake_w = os.pipe()
        self.extra_stats: dict[str, Any] = {}
        # () -> int, what ``idle`` counts: data messages, unless the worker
        # knows better (depth counts published books: diffs are no data to
        # consumers until a book is synced).
        self.progress = lambda: self.counters.msgs

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Install the signal handlers, then start the ticker and watchdog.

        The handler only records the signal. Python's C-level handler also
        writes the signal number to the wakeup fd, at delivery, whatever
        the main thread is doing; the watchdog thread reads it and ends the
        connection. The handler itself must not: it runs on the main thread
        between any two bytecodes, possibly while that thread holds a lock
        it would then wait for (``Event.set`` in a second TERM of a burst)."""
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._ticker = self.threads.start("ticker", self._tick_loop, self._stop)
        # Neither stopped nor joined: it bounds how long everything else may take.
        self._watchdog = self.threads.start("watchdog", self._watch, joined=False)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = signum

    def end(self, reason: str) -> None:
        """End the connection from any thread but the signal handler; the
        reading thread then returns with ``reason``."""
        if self._end_reason is None:
            self._end_reason = reason
        self._stop.set()
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        ws = self.ws
        sock = ws.sock if ws is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the watchdog thread ---------------------------------------------------

    def _watch(self) -> None:
        """Turn a stop signal into ``end``, and bound how long the process
        outlives its parent or a stop request, whatever the other threads
        are blocked in. It runs until the process exits."""
        stop_by: float | None = None
        while self._watching:
            try:
                readable, _, _ = select.select([self._wake_r], [], [], ORPHAN_POLL_S)
                woken = os.read(self._wake_r, 4096) if readable else b""
            except BlockingIOError:
                woken = b""
            except (OSError, ValueError):   # never expected; the watch must go on anyway
                woken = b""
                time.sleep(ORPHAN_POLL_S)
            if os.getppid() != self.spec.parent_pid:
                os._exit(procs.EXIT_ORPHAN)
            now = self.clock()
            if stop_by is None and any(b in STOP_SIGNALS for b in woken):
                stop_by = now + STOP_GRACE_S
                self.end("terminated")
            elif stop_by is not None:
                # Again: a socket created after the first try (connect was
                # between creating it and handing it over) is shut too.
                self._shutdown_socket()
                if now >= stop_by:
                    os._exit(EX_STOPPED)

    @property
    def ending(self) -> str | None:
        return self._end_reason

    def finish(self, ended: ConnectionEnded) -> int:
        """Report how the connection ended and return the exit code."""
        if self._signalled is not None and self._end_reason is None:
            self._end_reason = "terminated"   # the watchdog has not got to it yet
        reason = self._end_reason or ended.reason
        fatal = ended.fatal and self._end_reason is None
        stopped = reason == "terminated"
        self.uplink.control(
            Control.EXIT,
            stream=self.name,
            instance=self.spec.instance,
            reason=reason,
            fatal=fatal,
            close_code=ended.close_code,
            stats=self.stats(self.clock()),
        )
        self._stop.set()
        if self.ws is not None:
            self.ws.shutdown()
        orphaned = os.getppid() != self.spec.parent_pid
        self.threads.stop_all()
        late = self.threads.join(0.0 if orphaned else THREAD_JOIN_S)
        if late:
            log.debug("threads still running at exit (they end with the process): %s", ", ".join(late))
        # With the parent alive, linger so our last frames and EXIT reach it;
        # with it gone, nobody will read them and lingering only delays exit.
        self.uplink.close(linger_ms=0 if orphaned else None)
        self.ctx.term()
        # Reported: a TERM from here on (the second of supervisord's group
        # TERM and the parent's) would only land in interpreter shutdown,
        # where handlers are default again, and turn our code into "killed".
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if stopped:
            return EX_STOPPED
        return EX_CONFIG if fatal else EX_TEMPFAIL

    # -- connecting ----------------------------------------------------------

    def connect(self, url: str, **options: Any) -> websocket.WebSocket:
        """Open the WebSocket, or raise ConnectionEnded with a classified reason.

        ``create_connection``'s steps, with the socket object published
        first: a stop request during the upgrade shuts its socket down
        rather than waiting for ``connect_timeout``."""
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True, **options)
        ws.settimeout(self.conn.connect_timeout)
        self.ws = ws
        try:
            if self._end_reason is not None:
                raise ConnectionEnded(self._end_reason)
            ws.connect(url, **options)
        except websocket.WebSocketBadStatusException as exc:
            raise ConnectionEnded(*classify_status(exc.status_code, str(exc))) from None
        except (OSError, websocket.WebSocketException) as exc:
            raise ConnectionEnded(self._end_reason or f"connect failed: {exc.__class__.__name__}: {exc}") from None
        ws.settimeout(None)  # liveness is the pinger's job, not a socket timeout
        fastrecv.install(ws, before_block=self._before_block, max_frame=self.conn.max_frame)
        self.connected_at = self.clock()
        self.pinger.start(self.connected_at)
        if self._end_reason is not None:  # told to stop while connecting
            self.end(self._end_reason)
        return ws

    def _before_block(self) -> None:
        ws = self.ws
        flush_before_block(self.uplink, lambda timeout: ws is None or wait_readable(ws, timeout))

    def ready(self, **fields: Any) -> None:
        self.uplink.control(Control.READY, stream=self.name, instance=self.spec.instance, **fields)

    def streaming(self) -> None:
        self.uplink.control(Control.STREAMING, stream=self.name, instance=self.spec.instance)

    def notice(self, event: str, **fields: Any) -> None:
        self.uplink.control(Control.NOTICE, stream=self.name, instance=self.spec.instance, event=event, **fields)

    # -- the ticker thread ---------------------------------------------------

    def stats(self, now: float) -> dict[str, Any]:
        c = self.counters
        lag = c.last_recv_ms - c.last_event_ms if c.last_event_ms else None
        return {
            "msgs": c.msgs,
            "bytes": c.bytes,
            "malformed": c.malformed,
            "drops": self.uplink.drops,
            "idle": self._idle(now),
            "lag_ms": lag,
            "age": (now - self.connected_at) if self.connected_at is not None else None,
            "pings": self.pinger.counter,   # native pings sent on this connection
            **self.extra_stats,
        }

    def _idle(self, now: float) -> float | None:
        # Sampled by the ticker rather than stamped per message: the hot path
        # stays free of clock calls, and 1 s resolution suits a 10 s verdict.
        count = self.progress()
        if count != self._seen_msgs:
            self._seen_msgs = count
            self._last_change = now
        if self._seen_msgs == 0:
            return None
        return now - self._last_change

    _seen_msgs = 0
    _last_change = 0.0

    def _tick_loop(self) -> None:
        live = Uplink(self.ctx, self.spec.uplink, self.spec.instance, self.conn.uplink_hwm)
        live.sock.setsockopt(zmq.LINGER, 0)

        def send_live(now: float) -> None:
            live.control(Control.LIVE, stream=self.name, instance=self.spec.instance, stats=self.stats(now))
        try:
            Ticker(self.conn.liveness_interval, self.pinger, live=send_live, ping=self._ping,
                   timed_out=lambda: self.end("ping/pong timed out"),
                   connected=lambda: self.ws is not None and self.connected_at is not None,
                   stop=self._stop, clock=self.clock).run()
        finally:
            live.close()

    def _ping(self, payload: bytes) -> None:
        try:
            self.ws.ping(payload)
        except (OSError, websocket.WebSocketException):
            pass  # the reading thread sees the broken socket and reports it


def receive(rt: Runtime, ws: websocket.WebSocket, lost: str = "connection lost") -> tuple[bytes, int] | None:
    """One frame: a data message with its receive time (ns), or None after a
    control frame. Pongs feed the pinger; a close or a broken socket raises
    ConnectionEnded (``lost`` says what the connection was doing). A socket
    timeout, set only by a caller waiting for a reply, is the caller's to
    explain. (The market worker's hot loop inlines the same steps.)"""
    try:
        opcode, payload = ws.recv_data(True)
    except websocket.WebSocketTimeoutException:
        raise
    except (OSError, websocket.WebSocketException) as exc:
        raise ConnectionEnded(rt.ending or f"{lost}: {exc.__class__.__name__}: {exc}") from None
    if opcode == OP_TEXT or opcode == OP_BINARY:
        rt.counters.msgs += 1
        rt.counters.bytes += len(payload)
        return payload, time.time_ns()
    if opcode == OP_PONG:
        rt.pinger.on_pong(payload)
    elif opcode == OP_CLOSE:
        reason, code = close_reason(payload)
        raise ConnectionEnded(rt.ending or reason, close_code=code)
    return None


# -- shared by the market-data workers (market, depth) ---------------------------

def check_symbols(rt: Runtime) -> None:
    stream = rt.spec.stream
    budget = restlimit.SharedBudget.for_spec(rt.spec)
    bad = rest.invalid_symbols(stream.market, rt.spec.endpoint.rest_url, stream.symbols,
                               rt.conn.connect_timeout, budget)
    if bad:
        raise ConnectionEnded(f"invalid symbol: {', '.join(bad)} (not listed by the exchange)", fatal=True)


def handle_other(rt: Runtime, payload: bytes) -> None:
    """Not a market event: a server notice, or malformed (counted, skipped)."""
    try:
        msg = orjson.loads(payload)
    except ValueError:
        rt.counters.malformed += 1
        return
    event = msg.get("data", msg) if isinstance(msg, dict) else None
    if isinstance(event, dict) and event.get("e") == "serverShutdown":
        rt.notice("serverShutdown", event_time=event.get("E"))
        return
    rt.counters.malformed += 1


def read_event(rt: Runtime, ws: websocket.WebSocket, normalise: Callable[[dict[str, Any]], Normalised],
               wait: float | None = None) -> tuple[int, dict[str, Any], Normalised] | None:
    """One market-data frame, decoded and normalised: ``(recv_ns, event,
    normalised)``, or None after a control frame, a server notice or a
    malformed message (``handle_other`` counts it). ``wait``: None too if
    nothing arrives within that many seconds (the caller has other work),
    rather than block until a frame does."""
    if wait is not None and not wait_readable(ws, wait):
        return None
    got = receive(rt, ws)
    if got is None:
        return None
    payload, recv_ns = got
    try:
        event = orjson.loads(payload)["data"]
        return recv_ns, event, normalise(event)
    except (ValueError, KeyError, TypeError, MalformedEvent):
        handle_other(rt, payload)
        return None


def wait_readable(ws: websocket.WebSocket, timeout: float, *, if_closed: bool = True) -> bool:
    """Would ``recv_data`` find data (buffered, or on the socket) within ``timeout``?

    The reader must notice a finished backfill on a quiet stream, yet a
    socket timeout could cut a frame in half; so it waits in ``select``.
    ``if_closed``: the answer for a socket that is gone. A reader says True,
    so that ``recv_data`` reports the closed connection; a drain of what is
    already buffered says False, so it returns the events it has first.
    """
    over = getattr(ws.frame_buffer.recv_strict, "__self__", None)   # fastrecv's over-reader
    if over is not None and hasattr(over, "buffered") and over.buffered() > 0:
        return True
    sock = ws.sock
    if sock is None:
        return if_closed
    pending = getattr(sock, "pending", None)
    if pending is not None and pending() > 0:
        return True               # TLS already decrypted bytes select cannot see
    try:
        ready, _, _ = select.select([sock], [], [], timeout)
    except (OSError, ValueError):
        return if_closed
    return bool(ready)


def classify_status(status: int, text: str) -> tuple[str, bool]:
    """Upgrade refused with an HTTP status: is it worth retrying?"""
    # 403 is Binance's WAF limit, 418/429 its rate limits, 5xx an outage:
    # all pass with time.
    if status in (403, 418, 429) or status >= 500:
        return f"{UPGRADE_REFUSED}: HTTP {status}", False
    # 400/401/404: the URL, stream names or credentials are wrong (unless
    # the same URL worked before: the policy decides that).
    return f"{UPGRADE_REJECTED}: HTTP {status} ({text.splitlines()[0][:200]})", True


def close_reason(payload: bytes) -> tuple[str, int | None]:
    if len(payload) >= 2:
        code = int.from_bytes(payload[:2], "big")
        text = payload[2:].decode("utf-8", "replace")
        return f"closed by server: {code}{' ' + text if text else ''}", code
    return "closed by server", None
