"""The worker's one path to the parent: ZeroMQ PUSH, never blocking, with
every loss reported.

ZeroMQ sockets are not thread-safe, so the reading thread and the ticker
thread each own a socket. Data, READY, STREAMING and EXIT go through the
reader's socket, so the parent sees them in order; LIVE goes through the
ticker's. The socket-reading thread never waits on IPC: a send that would
block (the queue to a slow parent is full, ``uplink_hwm`` messages) drops the
batch and counts it in ``drops`` (reported in the next liveness ping).

Nothing is dropped silently: the uplink remembers, per topic, what it
dropped (exchange ids and times), and as soon as the socket accepts again it
sends one gap record per affected topic *before* any later record, so
consumers see a gap notice in the place of the lost frames. Gap records that
were themselves dropped are sent again then. With no later data the notice
goes out at the next flush (the next message, or the worker's exit).

Records are batched until the reading thread is about to block on the
network (``flush`` is the over-reader's ``before_block`` hook), and within a
burst in batches of 1, 2, 4, ... up to ``MAX_BATCH`` records: the first
records of a burst do not wait for the worker to parse the rest (the parent
and the consumer, on the other core, start on them at once), and a long
burst or a backlog still costs one ZeroMQ message per ``MAX_BATCH`` records.
Every batch starts with the worker's instance (``frames.batch_prefix``), so
the parent knows who sent it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import msgpack
import zmq

from feedsup.config_model import Connection
from feedsup.ipc import frames

# Messages queued towards the parent: the config's ``uplink_hwm`` (in the
# launch spec), whose default rides out a parent busy for about 2 s at full
# rate, a message holding a full batch (MAX_BATCH records).
SNDHWM = Connection.uplink_hwm
# On exit, give queued frames this long to reach the parent.
LINGER_MS = 2000
# A burst is sent in pieces of this many records: bigger batches bought a
# few % of throughput but held a burst's first records back for milliseconds.
MAX_BATCH = 32
# While gap notices are owed, a reader with nothing to read retries this often.
OWED_RETRY_S = 0.05
# Dropped gap records kept for sending again; beyond this they are only counted.
MAX_RESEND = 1000
LOSS_REASON = "uplink full: the parent fell behind"


class Uplink:
    def __init__(self, ctx: zmq.Context, endpoint: str, instance: int = 0, hwm: int = SNDHWM) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, LINGER_MS)
        self.sock.connect(endpoint)
        self.instance = instance
        self.drops = 0
        self._prefix = frames.batch_prefix(instance)
        # The batch always starts with the prefix: joined as is, no copy.
        self._batch: list[bytes] = [self._prefix]
        self._loss = Losses()
        # Records that send a batch before the reader blocks: 1 at the start
        # of a burst, doubling while the burst lasts, up to MAX_BATCH.
        self._limit = 1

    def send(self, record: bytes) -> None:
        """Queue one data or gap record; a batch goes out when it holds the
        ramp's size, or at ``flush``."""
        batch = self._batch
        batch.append(record)
        if len(batch) > self._limit:
            self._limit = min(self._limit * 2, MAX_BATCH)
            self.flush()

    def rearm(self) -> None:
        """The reader caught up: the next burst's first record goes alone."""
        self._limit = 1

    def flush(self) -> None:
        batch = self._batch
        if len(batch) == 1:
            if self._loss.owed:
                self._settle()
            return
        if self._loss.owed and not self._settle():
            self._lose(batch)           # still full: these go in the same notice
            return
        message = b"".join(batch)
        if len(message) > frames.MAX_MESSAGE:
            self._send_each(batch)
            return
        try:
            self.sock.send(message, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self._lose(batch)
            return
        del batch[1:]

    def _lose(self, batch: list[bytes]) -> None:
        records = batch[1:]
        del batch[1:]
        self.drops += len(records)
        for record in records:
            self._loss.add(record)

    def _send_each(self, batch: list[bytes]) -> None:
        """A batch over the parent's message cap goes record by record."""
        records = batch[1:]
        del batch[1:]
        for record in records:
            if len(record) + len(self._prefix) > frames.MAX_MESSAGE:
                self.drops += 1
                self._loss.add(record, reason="record over the message size cap")
                continue
            batch.append(record)
            self.flush()

    def _settle(self) -> bool:
        """Send the gap records owed for earlier drops; False if still full."""
        message = self._prefix + b"".join(self._loss.records(time.time_ns()))
        try:
            self.sock.send(message, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return False
        self._loss.clear()
        return True

    @property
    def owes(self) -> bool:
        """Gap notices for earlier drops are still to be sent."""
        return self._loss.owed

    def control(self, kind: str, **fields: Any) -> bool:
        self.flush()    # records queued before a control message go first
        try:
            self.sock.send(frames.encode_control(kind, **fields), zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.drops += 1
            return False

    def close(self, linger_ms: int | None = None) -> None:
        self.flush()
        self.sock.close(linger=linger_ms)


def flush_before_block(uplink: Any, readable: Callable[[float], bool]) -> None:
    """The reader is about to read the network: flush. If nothing is waiting
    there (it caught up), the next burst's batches start from one record
    again; a backlog keeps full batches. While gap notices for drops are
    still owed (the parent is behind), wait for the network at most
    ``OWED_RETRY_S`` at a time and flush again. Otherwise a stream that goes
    quiet after the burst the parent fell behind on would keep its last
    losses unannounced until its next message."""
    uplink.flush()
    if readable(0):
        return
    uplink.rearm()
    while uplink.owes and not readable(OWED_RETRY_S):
        uplink.flush()


class Losses:
    """What the uplink dropped, per topic, until a gap notice says so (pure).

    Data records in a topic arrive in exchange order, and while anything is
    owed nothing later of that topic is sent, so one span per topic covers
    exactly the dropped records: ids ``from_id..to_id`` (trades and
    aggTrades) and exchange times ``from_ms..to_ms``.
    """

    def __init__(self) -> None:
        self.spans: dict[bytes, dict[str, Any]] = {}
        self.resend: list[bytes] = []
        self.owed = False

    def add(self, record: bytes, reason: str = LOSS_REASON) -> None:
        # Runs for every dropped record while the parent is behind: only the
        # header is read here; a span's first and last bodies are decoded once.
        kind, topic, major, _minor, _final, body = next(frames.iter_records(record))
        self.owed = True
        if kind == frames.GAP:
            if len(self.resend) < MAX_RESEND:
                self.resend.append(record)
            return
        span = self.spans.get(topic)
        if span is None:
            stream, when, data = _describe(body)
            self.spans[topic] = {"stream": stream, "from_ms": when, "last": None, "lost": 1, "reason": reason,
                                 "ids": "agg_id" in data or "trade_id" in data, "from_id": major,
                                 "to_id": major}
            return
        span["lost"] += 1
        span["to_id"] = major
        span["last"] = body

    def records(self, now_ns: int) -> list[bytes]:
        """Gap records for every span, then the dropped gap records."""
        out = []
        for topic, span in self.spans.items():
            to_ms = span["from_ms"] if span["last"] is None else _describe(span["last"])[1]
            from_ms = span["from_ms"] if span["from_ms"] is not None else to_ms
            detail: dict[str, Any] = {"lost": span["lost"]}
            if span["ids"]:
                detail.update(from_id=span["from_id"], to_id=span["to_id"])
            body = frames.encode_gap_body(topic.decode(errors="replace"), span["stream"], now_ns,
                                          from_ms, to_ms if to_ms is not None else from_ms, span["reason"],
                                          **detail)
            out.append(frames.encode_gap(topic, body))
        return out + self.resend

    def clear(self) -> None:
        self.spans.clear()
        self.resend.clear()
        self.owed = False


def _describe(body: bytes) -> tuple[str, int | None, dict[str, Any]]:
    """(stream, exchange time in ms, data) of a record body, as far as it tells."""
    try:
        fields = msgpack.unpackb(body)
        data = fields.get("data")
        data = data if isinstance(data, dict) else {}
        when = data.get("time") or data.get("open_time") or data.get("event_time") \
            or fields["recv_ns"] // 1_000_000
        return str(fields.get("stream", "")), when, data
    except Exception:
        return "", None, {}
