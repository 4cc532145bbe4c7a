"""Account stream worker: user data for one Binance account, resynced on
every connect.

One run = one connection, as for every worker:

1. load the credentials (``load_credentials``; a ``ConfigError`` is FATAL);
2. open the user-data subscription (spot: WebSocket API
   ``userDataStream.subscribe.signature``, ``account_spot``; USD-M: a
   listenKey and the ``/private`` route, ``account_usdm``), then READY;
3. fetch balances, open orders and then the exchange's time over REST, on a
   thread of its own (``SnapshotFetch``), while this thread goes on reading:
   pongs and the exchange's pings are answered however slow REST is, and
   events are kept. Publish the snapshot as one ``account.snapshot.<stream>``
   frame, keyed by the exchange's time, then the kept events as replays
   (``backfill: true``), so none falls between snapshot and stream;
4. publish events until the connection ends, then report why. An event
   whose change happened at or before the snapshot's ``as_of`` (see
   ``account_normalise.snapshot_times``) may already be in it, however late
   its push reached us: it is flagged ``backfill: true`` too.

So every event the snapshot may contain is flagged ``backfill: true``, and
every event it cannot contain is live. Backfill frames may repeat what the
snapshot (or, in a rotation, the predecessor) already delivered; the
consumer rule in ``account_normalise`` says how to apply them.

Credentials rejected by the exchange are FATAL (a retry cannot fix them);
everything else, including timestamp/recvWindow errors (-1021), is
retryable and the parent decides when. Secrets stay in this process: no
log line, reason or frame carries the key or the secret, and exchange
replies are quoted by code and message only.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Any, Protocol

import orjson
import websocket

from feedsup.config_model import ConfigError
from feedsup.credentials import Credentials, load_credentials
from feedsup.ipc import frames
from feedsup.binance.account_normalise import (NORMALISERS, PUBLISHED, SNAPSHOT_TOPIC, STREAM_ENDED, EventOrder,
                                               change_time, is_replay)
from feedsup.binance.normalise import MalformedEvent
from feedsup.workers import runtime
from feedsup.workers.runtime import ConnectionEnded, Runtime, wait_readable
from feedsup.workers.threads import Threads

log = logging.getLogger("feedsup.worker.account")

class Session(Protocol):
    """What a market's account flavour provides to the shared shell."""

    def open(self) -> websocket.WebSocket: ...         # connected and subscribed
    def snapshot(self) -> dict[str, Any]: ...          # normalised snapshot data
    def event_of(self, msg: Any) -> dict[str, Any] | None: ...  # unwrap; None = not an event
    def close(self) -> None: ...


def run(rt: Runtime) -> None:
    creds = credentials(rt)
    session = make_session(rt, creds)
    rt.extra_stats["ignored"] = 0   # keys exist before the ticker reads the dict
    try:
        ws = session.open()
        rt.ready(market=rt.spec.stream.market)
        order = EventOrder()
        as_of = resync(rt, ws, session, order)
        rt.streaming()  # the snapshot is out: a rotation may hand over now
        while True:
            out = receive(rt, ws, session)
            if out is not None:
                topic, data, event_time, recv_ns = out
                major, minor = order.key(topic, event_time)
                # An event the exchange made before the snapshot's as_of may
                # already be in it, however late its push reached us.
                replay = is_replay(minor) or change_time(topic, data, event_time) <= as_of
                publish(rt, topic, data, major, minor, False, recv_ns, replay=replay)
    finally:
        session.close()


def resync(rt: Runtime, ws: websocket.WebSocket, session: Session, order: EventOrder) -> int:
    """Snapshot over REST, then what arrived meanwhile, as replays; return
    the snapshot's ``as_of`` (exchange ms).

    The REST calls run on a thread of their own while this (the reading)
    thread goes on reading: pongs keep the connection's liveness, and the
    exchange's pings get their pong, however slow REST is."""
    fetch = SnapshotFetch(session, rt.threads)
    fetch.start()
    try:
        replays = read_until_done(rt, ws, session, fetch)
    finally:
        fetch.join()
    snapshot = fetch.result()
    as_of = max([snapshot["as_of"]] + [change_time(t, d, e) for t, d, e, _ in replays])
    snapshot["as_of"] = as_of
    # Snapshot and replays leave as one uplink batch (flushed by the next
    # control message), which the parent handles in one go: no frame of a
    # rotation's old worker can fall between them.
    rt.uplink.flush()
    publish_snapshot(rt, snapshot)
    keys = order.replay([(topic, event_time) for topic, _, event_time, _ in replays])
    for (topic, data, _, recv_ns), (major, minor) in zip(replays, keys):
        publish(rt, topic, data, major, minor, False, recv_ns, replay=True)
    return as_of


# How long a worker whose connection ended waits for a snapshot still in
# flight. The thread is a daemon: past this, it dies with the process.
SNAPSHOT_JOIN_S = 1.0


class SnapshotFetch:
    """``session.snapshot()`` on a thread of the worker's (``threads``). Only
    the reading thread sends on the uplink, so this one returns its result;
    it writes one byte to a pipe when done, which wakes the reader's select."""

    def __init__(self, session: Session, threads: Threads) -> None:
        self.session = session
        self.threads = threads
        self.wake_r, self._wake_w = os.pipe()
        self._value: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._done = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Nothing to stop it with: its REST calls are bounded by their timeouts.
        self._thread = self.threads.start("snapshot", self._run)

    def _run(self) -> None:
        try:
            self._value = self.session.snapshot()
        except BaseException as exc:     # handed to the reading thread, raised there
            self._error = exc
        finally:
            self._done = True
            os.write(self._wake_w, b"x")

    def done(self) -> bool:
        return self._done

    def join(self) -> None:
        assert self._thread is not None
        late = self.threads.join(None if self._done else SNAPSHOT_JOIN_S, only=self._thread)
        if not late:
            os.close(self.wake_r)
            os.close(self._wake_w)

    def result(self) -> dict[str, Any]:
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def read_until_done(rt: Runtime, ws: websocket.WebSocket, session: Session,
                    fetch: SnapshotFetch) -> list[Received]:
    """Read (and keep) events until the snapshot is in, then everything
    already received, without waiting for more."""
    events = []
    while not fetch.done():
        if not wait_readable(ws, 0, if_closed=False):
            try:
                select.select([ws.sock, fetch.wake_r], [], [])
                continue
            except (OSError, ValueError, TypeError):
                pass   # the socket is gone: receive says why
        out = receive(rt, ws, session)
        if out is not None:
            events.append(out)
    return events + drain(rt, ws, session)


def credentials(rt: Runtime) -> Credentials:
    try:
        return load_credentials(rt.spec.stream)
    except ConfigError as exc:  # its message names variables and files, never values
        raise ConnectionEnded(f"credentials: {exc}", fatal=True) from None


def make_session(rt: Runtime, creds: Credentials) -> Session:
    if rt.spec.stream.market == "spot":
        from feedsup.workers.account_spot import SpotSession
        return SpotSession(rt, creds)
    from feedsup.workers.account_usdm import UsdmSession
    return UsdmSession(rt, creds)


# -- exchange replies --------------------------------------------------------------

# -- publishing ------------------------------------------------------------------------

def publish(rt: Runtime, topic: str, data: dict[str, Any], major: int, minor: int, final: bool,
            recv_ns: int, replay: bool = False) -> None:
    body = frames.encode_body(topic, rt.name, recv_ns, data, backfill=replay)
    rt.uplink.send(frames.encode_data(topic.encode(), major, minor, final, body))


def publish_snapshot(rt: Runtime, data: dict[str, Any]) -> None:
    """Keyed by the exchange's server time taken after the snapshot
    (``time``): every (re)connect's snapshot is newer than the last one
    delivered, whatever the account did, and a step of our wall clock
    cannot make the parent take a new snapshot for an old one."""
    recv_ns = time.time_ns()
    publish(rt, stream_topic(SNAPSHOT_TOPIC, rt.name), data, data["time"], 0, False, recv_ns)
    log.info("snapshot published: %d balances, %d open orders",
             len(data.get("balances", ())), len(data.get("open_orders", ())))


Received = tuple[str, dict[str, Any], int, int]   # topic, data, event time, recv_ns


def receive(rt: Runtime, ws: websocket.WebSocket, session: Session) -> Received | None:
    """Read one frame: an event to publish, or None (pong, reply, ignored or
    malformed message). Raises ConnectionEnded when the connection ends."""
    got = runtime.receive(rt, ws)
    if got is None:
        return None
    payload, recv_ns = got
    counters = rt.counters
    try:
        event = session.event_of(orjson.loads(payload))
        out = handle(rt, event) if event is not None else None
    except (ValueError, MalformedEvent):
        counters.malformed += 1
        return None
    if out is None:  # a request reply or an event type we do not publish
        rt.extra_stats["ignored"] = rt.extra_stats.get("ignored", 0) + 1
        return None
    topic, data, event_time = out
    counters.last_event_ms = event_time
    counters.last_recv_ms = recv_ns // 1_000_000
    return stream_topic(topic, rt.name), data, event_time, recv_ns


def handle(rt: Runtime, event: dict[str, Any]) -> tuple[str, dict[str, Any], int] | None:
    """A user-data event: normalised if published, ConnectionEnded if it ends
    the stream, None otherwise (a ``serverShutdown`` is passed on as a notice)."""
    market = rt.spec.stream.market
    kind = event.get("e")
    if kind in PUBLISHED[market]:
        return NORMALISERS[market](event)
    if kind in STREAM_ENDED[market]:
        raise ConnectionEnded(STREAM_ENDED[market][kind])
    if kind == "serverShutdown":
        rt.notice("serverShutdown", event_time=event.get("E"))
    return None


def stream_topic(topic: str, stream: str) -> str:
    """``account.<event>.<stream>``: each account stream numbers and
    de-duplicates its own frames. Two streams on one topic (spot and USD-M
    snapshots, or two accounts' executionReports) would have the parent
    drop one stream's frames as "older" than the other's. A subscription to
    ``account.<event>`` still matches every stream's by prefix."""
    return f"{topic}.{stream}"


def drain(rt: Runtime, ws: websocket.WebSocket, session: Session) -> list[Received]:
    """Every event already received (buffered or in the kernel), without
    waiting for more."""
    events = []
    while wait_readable(ws, 0, if_closed=False):
        out = receive(rt, ws, session)
        if out is not None:
            events.append(out)
    return events
