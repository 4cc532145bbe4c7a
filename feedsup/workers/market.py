"""Market-data worker: one combined-stream connection, normalised frames out.

The reading loop is the hot path. It parses, normalises, encodes and pushes
without touching a clock or a lock beyond one wall-clock stamp per message.

A worker that resumes kline, aggTrade or trade topics first catches up
(``catch_up``): it buffers live frames while a backfill thread fetches the
missed events over REST, then sends the backfill, any gap notices and the
buffer, in exchange order, and only then enters the hot loop. Only this
reading thread sends on the uplink (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, NamedTuple

import msgpack
import orjson
import websocket

from feedsup.ipc import frames
from feedsup.ipc.topics import symbol_topic
from feedsup import restlimit
from feedsup.binance import backfill
from feedsup.binance.normalise import MalformedEvent, make_normaliser
from feedsup.workers import fastrecv, rest
from feedsup.workers.threads import Clock, Threads
from feedsup.workers.runtime import (OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT, ConnectionEnded, Runtime,
                                     check_symbols, close_reason, handle_other, read_event)
from feedsup.binance.streams import stream_url



def run(rt: Runtime) -> None:
    """Connect, stream until the connection ends, then raise ConnectionEnded.

    Streams with REST history alternate between catching up (backfill after
    the reconnect, or after a hole inside the stream) and the hot loop.
    """
    stream = rt.spec.stream
    check_symbols(rt)
    ws = rt.connect(stream_url(stream, rt.spec.endpoint))
    rt.ready(url=stream_url(stream, rt.spec.endpoint))
    normalise = make_normaliser(stream)
    if stream.channel not in backfill.CHANNELS:
        read_loop(rt, ws, normalise)
        return
    rt.extra_stats.update(backfilled=0, gaps=0, holes=0)
    continuity = backfill.Continuity(stream.channel)
    plans = backfill_plans(rt)
    pending: deque[Entry] = deque()
    streaming = False
    while True:
        if plans:
            job = BackfillJob(rt, plans, clock=rt.clock)
            job.start(rt.threads)
            try:
                catch_up(rt, ws, normalise, job, continuity, pending)
            finally:
                job.stop.set()
        sent = len(pending)
        hole = send_pending(rt, pending)
        if not streaming and len(pending) < sent:
            # STREAMING hands a rotation over to this worker: only now, with
            # the backfill sent and live frames going out, does it serve.
            streaming = True
            rt.streaming()
        if hole is None:
            found = read_loop(rt, ws, normalise, streaming, continuity.check)
            assert found is not None
            hole, announced = found
            streaming = streaming or announced
            pending.append(hole)
        rt.extra_stats["holes"] += 1
        plans = [hole_plan(rt, hole)]
        pending[0] = hole._replace(resume=None)


class Entry(NamedTuple):
    """A live frame held back while catching up."""

    topic: str
    major: int
    resume: int | None     # not None: events before this one are missing (a hole)
    frame: bytes


def read_loop(rt: Runtime, ws: websocket.WebSocket, normalise, streaming: bool = False,
              check: Callable[[str, int, bool, dict], int | None] | None = None) -> tuple[Entry, bool] | None:
    """The hot loop. Returns only when ``check`` finds a hole, with the
    frame that revealed it (not sent) and whether STREAMING has been
    announced by now; otherwise raises ConnectionEnded."""
    counters = rt.counters
    uplink_send = rt.uplink.send
    recv = ws.recv_data
    reader = fastrecv.reader_of(ws)
    # Whole data frames already buffered skip websocket-client's frame
    # parser; anything else (control frames, fragments, an empty buffer,
    # where the uplink is flushed before blocking) takes recv_data.
    buffered = reader.next_message if reader is not None else _nothing
    loads = orjson.loads
    encode = frames.DataEncoder(rt.name).encode
    time_ns = time.time_ns
    first = not streaming
    # runtime.receive and handle-the-message inlined, with locals: every
    # message passes here, and a Python call per message is a measurable share
    # of the loop (bench/throughput.py). Every other reader calls receive().
    while True:
        payload = buffered()
        if payload is None:
            try:
                opcode, payload = recv(True)
            except (OSError, websocket.WebSocketException) as exc:
                raise ConnectionEnded(rt.ending or f"connection lost: {exc.__class__.__name__}: {exc}") from None
            if opcode != OP_TEXT and opcode != OP_BINARY:
                if opcode == OP_PONG:
                    rt.pinger.on_pong(payload)
                elif opcode == OP_CLOSE:
                    reason, code = close_reason(payload)
                    raise ConnectionEnded(rt.ending or reason, close_code=code)
                continue
        recv_ns = time_ns()
        counters.msgs += 1
        counters.bytes += len(payload)
        try:
            event = loads(payload)["data"]
            topic, data, major, minor, final = normalise(event)
        except (ValueError, KeyError, TypeError, MalformedEvent):
            handle_other(rt, payload)
            continue
        record = encode(topic, major, minor, final, recv_ns, data)
        if check is not None and (resume := check(topic, major, final, data)) is not None:
            if resume == backfill.MALFORMED:      # an impossible jump: hostile or corrupt
                counters.malformed += 1
                continue
            return Entry(topic, major, resume, record), not first
        uplink_send(record)
        counters.last_event_ms = event.get("E") or event.get("T") or 0
        counters.last_recv_ms = recv_ns // 1_000_000
        if first:
            first = False
            rt.streaming()


def _nothing() -> None:
    return None


# -- catching up after a (re)connect -------------------------------------------------

# REST may keep failing this long (retries and waits for weight included)
# before the rest of a topic is announced as a gap ...
PAGE_DEADLINE_S = 20.0
# ... and a long outage may take this long to page through in all. Live
# frames wait meanwhile: late but complete beats on time with a hole.
BACKFILL_DEADLINE_S = 120.0
LIVE_WAIT_S = 1.0            # first live events tell backfill exactly where to stop
LAG_RETRY_S = 0.25           # REST behind the live stream: ask again after this
REST_TIMEOUT_S = 5.0         # one request
MAX_BUFFERED = 200_000       # live frames held while backfilling; past it, give up
POLL_S = 0.05                # how soon the reader notices the backfill is done


def backfill_plans(rt: Runtime) -> list[backfill.Plan]:
    """One plan per topic the parent has delivered before (no mark, no backfill)."""
    stream = rt.spec.stream
    if stream.channel not in backfill.CHANNELS:
        return []
    plans = []
    for symbol in (s.upper() for s in stream.symbols):
        intervals = stream.intervals if stream.channel == "kline" else ("",)
        pairs = [(symbol_topic(stream.channel, symbol, i, stream.topic_prefix), i) for i in intervals]
        for topic, interval in pairs:
            if topic in rt.spec.resume:
                plans.append(backfill.Plan(stream.market, stream.channel, symbol, topic,
                                           rt.spec.resume[topic], interval))
    return plans


class BackfillJob:
    """The backfill thread: REST only, never the uplink. The reader notes the
    first live event of each topic (``note_live``) and collects the result
    once ``done`` is set."""

    def __init__(self, rt: Runtime, plans: list[backfill.Plan],
                 deadline_s: float = BACKFILL_DEADLINE_S, clock: Clock = time.monotonic) -> None:
        spec = rt.spec
        self.clock = clock
        self.plans = {p.topic: p for p in plans}
        self.first_live: dict[str, int] = {}
        self.failures: dict[str, str] = {}
        self.finished: set[str] = set()
        self.done = threading.Event()
        self.stop = threading.Event()
        self._all_live = threading.Event()
        self._deadline_s = deadline_s
        self._stats = rt.extra_stats
        budget = restlimit.SharedBudget.for_spec(spec)
        self.client = rest.RestClient(spec.endpoint.rest_url, spec.stream.market, budget,
                                      REST_TIMEOUT_S, self.stop, clock=clock)

    def start(self, threads: Threads) -> None:
        threads.start("backfill", self._run, self.stop)

    def note_live(self, topic: str, major: int, time_ms: int | None = None) -> None:
        """Reader thread: the first live event of ``topic`` has ordering key
        ``major`` (and, for trades, exchange time ``time_ms``)."""
        self.first_live[topic] = major
        plan = self.plans.get(topic)
        if plan is not None:
            plan.first_live_time = time_ms
            plan.first_live = major
        if all(t in self.first_live for t in self.plans):
            self._all_live.set()

    def _run(self) -> None:
        deadline = self.clock() + self._deadline_s
        try:
            self._all_live.wait(LIVE_WAIT_S)
            plans = list(self.plans.values())
            for i, plan in enumerate(plans):
                try:
                    self._fetch(plan, deadline, topics_left=len(plans) - 1 - i)
                    self.finished.add(plan.topic)
                except rest.RestFailed as exc:
                    self.failures[plan.topic] = f"backfill failed: {exc}"
        finally:
            self._stats.pop("backfill", None)
            self.done.set()

    def _report(self, plan: backfill.Plan, started: float, topics_left: int) -> None:
        """Progress in the liveness stats (``feedsup status``, metrics): one
        dict assigned at once, so the ticker thread never sees half of it."""
        progress = plan.progress()
        eta = backfill.eta_s(progress["done"], progress["remaining"], self.clock() - started)
        self._stats["backfill"] = {**progress, "eta_s": None if eta is None else round(eta, 1),
                                   "topics_left": topics_left}

    def _fetch(self, plan: backfill.Plan, deadline: float, topics_left: int = 0) -> None:
        lagging_until: float | None = None
        started = self.clock()
        self._report(plan, started, topics_left)
        while (params := plan.request()) is not None:
            rows = self.client.fetch(plan.path, params, min(deadline, self.clock() + PAGE_DEADLINE_S))
            try:
                step = plan.on_page(rows)
            except (KeyError, TypeError, IndexError, AttributeError) as exc:
                raise rest.RestFailed(f"malformed REST rows: {exc!r}") from None
            self._report(plan, started, topics_left)
            if step is not backfill.Step.LAGGING:
                lagging_until = None
                continue
            if lagging_until is None:
                lagging_until = min(deadline, self.clock() + PAGE_DEADLINE_S)
            if self.clock() + LAG_RETRY_S > lagging_until:
                raise rest.RestFailed("REST still behind the live stream at the deadline")
            if self.stop.wait(LAG_RETRY_S):
                raise rest.RestFailed("stopped")


def catch_up(rt: Runtime, ws: websocket.WebSocket, normalise, job: BackfillJob,
             continuity: backfill.Continuity, pending: deque[Entry]) -> None:
    """Hold live frames in ``pending`` until the backfill is done, then send
    the backfill and gap notices. ``pending`` is sent by the caller (it may
    hold further holes), and STREAMING only once it goes out: a rotation
    must not hand over to a worker that is still catching up."""
    counters = rt.counters
    check = continuity.check
    topics: dict[str, bytes] = {}
    name = rt.name
    abandoned = ""
    for entry in pending:
        if entry.topic not in job.first_live:
            job.note_live(entry.topic, entry.major)
    while not job.done.is_set():
        if len(pending) >= MAX_BUFFERED:
            abandoned = f"backfill abandoned: {len(pending)} live frames waiting"
            job.stop.set()
            break
        got = read_event(rt, ws, normalise, wait=POLL_S)
        if got is None:
            continue
        recv_ns, event, (topic, data, major, minor, final) = got
        tb = topics.get(topic)
        if tb is None:
            tb = topics[topic] = topic.encode()
        resume = check(topic, major, final, data)
        if resume == backfill.MALFORMED:
            counters.malformed += 1
            continue
        if topic not in job.first_live:
            job.note_live(topic, major, data.get("time"))
        body = msgpack.packb({"topic": topic, "stream": name, "recv_ns": recv_ns, "data": data})
        pending.append(Entry(topic, major, resume, frames.encode_data(tb, major, minor, final, body)))
        counters.last_event_ms = event.get("E") or event.get("T") or 0
        counters.last_recv_ms = recv_ns // 1_000_000
    send_backfill(rt, job, continuity, pending, abandoned)


def send_pending(rt: Runtime, pending: deque[Entry]) -> Entry | None:
    """Send held frames up to the next hole; return that hole (left first
    in ``pending``), or None when all were sent."""
    send = rt.uplink.send
    while pending:
        entry = pending.popleft()
        if entry.resume is not None:
            pending.appendleft(entry)
            return entry
        send(entry.frame)
    return None


def hole_plan(rt: Runtime, hole: Entry) -> backfill.Plan:
    """Backfill of the events a live stream skipped, up to the frame that showed it."""
    stream = rt.spec.stream
    symbol, _, interval = hole.topic.split(".", 1)[1].partition(".")
    assert hole.resume is not None
    return backfill.Plan(stream.market, stream.channel, symbol, hole.topic, hole.resume, interval)


def send_backfill(rt: Runtime, job: BackfillJob, continuity: backfill.Continuity,
                  pending: deque[Entry], abandoned: str = "") -> None:
    """Every topic's recovered events and gap notices, in exchange order.

    Where the backfill ends short of the first held live frame (REST was
    asked before that frame came, and the server lost what lies between),
    that frame is marked as a hole, so another round fetches the span.
    """
    stats = rt.extra_stats
    stats["rest_errors"] = stats.get("rest_errors", 0) + job.client.failures
    bogus = [p.topic for p in job.plans.values() if p.implausible_live]
    if bogus:
        # The first live frame of a topic is beyond anything the exchange can
        # have produced (REST's present is the reference): hostile or corrupt.
        # Publishing it would set the topic's watermark out of reach, so
        # nothing of this connection goes out; the next one starts clean.
        rt.counters.malformed += 1
        raise ConnectionEnded(f"implausible first live event on {', '.join(bogus)}: reconnecting")
    for topic, plan in job.plans.items():
        failure = job.failures.get(topic)
        if failure is None and topic not in job.finished:
            failure = abandoned or "backfill did not finish"
        tb = topic.encode()
        merged = backfill.merge(plan, job.first_live.get(topic), failure)
        for entry in merged:
            if isinstance(entry, backfill.Gap):
                rt.uplink.send(gap_frame(rt, topic, tb, entry))
                stats["gaps"] = stats.get("gaps", 0) + 1
                continue
            body = frames.encode_body(topic, rt.name, time.time_ns(), entry.data, backfill=True)
            rt.uplink.send(frames.encode_data(tb, entry.major, entry.minor, True, body))
            stats["backfilled"] = stats.get("backfilled", 0) + 1
        mark = backfill.covered_through(plan, merged)
        if mark is not None:
            _join_live(continuity, pending, topic, mark)


def _join_live(continuity: backfill.Continuity, pending: deque[Entry], topic: str, mark: int) -> None:
    for i, entry in enumerate(pending):
        if entry.topic == topic:
            if entry.resume is None and not continuity.follows(mark, entry.major):
                pending[i] = entry._replace(resume=mark)
            return
    continuity.seed(topic, mark)


def gap_frame(rt: Runtime, topic: str, tb: bytes, gap: backfill.Gap) -> bytes:
    detail = {k: v for k, v in (("from_id", gap.from_id), ("to_id", gap.to_id)) if v is not None}
    return frames.encode_gap(tb, frames.encode_gap_body(topic, rt.name, time.time_ns(), gap.from_ms,
                                                        gap.to_ms, gap.reason, **detail))
