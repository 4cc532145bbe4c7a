"""The JetStream sink's decisions, without sockets or clocks.

The parent hands over every frame it published on PUB, as
``(topic, major, minor, final, payload)`` (``major`` None for frames without
an exchange identity: the parent's own gap notices). This core decides

* the ``Nats-Msg-Id`` of each frame, from the topic and the exchange
  identity, so two feedsup instances publishing the same exchange event give
  the same id and JetStream stores it once (``msg_id``);
* what to publish next: frames wait in a bounded buffer, and each topic has
  at most one publish awaiting its ack. That keeps every topic in order in
  JetStream even when a publish fails and is resent, and across instances: a
  frame is stored only after its predecessor from the same publisher was
  stored (or found a duplicate), so per topic the stream never goes back;
* what is lost: past ``capacity`` frames new ones are dropped, counted, and
  the topic gets a gap notice (``reason`` "sink buffer full") before its next
  frame reaches JetStream;
* how far the parent's saved watermarks may go (``cap_marks``): never past a
  frame JetStream has not acknowledged, so a parent restarted after a crash
  backfills what the sink still held, instead of losing it.

The I/O shell (``feedsup/sinks/nats.py``) feeds it acks, failures and the
time, and carries out the publishes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import msgpack

from feedsup.ipc import frames
from feedsup.supervisor.sequencer import is_newer

Key = tuple[int, int, bool]
Offer = tuple[bytes, "int | None", int, bool, bytes]

SOURCE_KEY = msgpack.packb("source")
GAP_REASON = "sink buffer full"
FOLLOW_STALL_S = 2.0    # a partner whose newest event has not moved for this long is gone
TRANSIENT_RETRY_S = 0.02


def msg_id(topic: str, major: int, minor: int, final: bool) -> str:
    """``Nats-Msg-Id`` of a data frame: the topic and its exchange identity.

    A final key (agg/trade id, book update id, a closed kline's open time)
    names the event; a non-final one (an open kline) is one update of it,
    named by its event time too (``minor``)."""
    return f"{topic}:{major}" if final else f"{topic}:{major}:{minor}"


def key_of(topic: str, mid: str) -> Key | None:
    """The exchange key a ``Nats-Msg-Id`` names (inverse of ``msg_id``);
    None for ids of notices or of another topic."""
    if not mid.startswith(topic + ":"):
        return None
    parts = mid[len(topic) + 1:].split(":")
    try:
        if len(parts) == 1:
            return (int(parts[0]), 0, True)
        if len(parts) == 2:
            return (int(parts[0]), int(parts[1]), False)
    except ValueError:
        pass
    return None


def with_source(payload: bytes, source: bytes) -> bytes:
    """Add ``source`` (packed) to a payload map, in front, as ``with_seq`` does."""
    head = payload[0]
    if not 0x80 <= head < 0x8F:
        raise ValueError("payload must be a msgpack fixmap with fewer than 15 keys")
    return bytes((head + 1,)) + SOURCE_KEY + source + payload[1:]


def before(key: Key) -> Key:
    """A watermark just before ``key``: resuming from it re-delivers ``key``'s event."""
    return (key[0] - 1, 0, True)


@dataclass(slots=True)
class Pending:
    """One frame on its way to JetStream."""

    topic: bytes
    msg_id: str
    payload: bytes
    prev: Key | None        # the topic's watermark if this frame never arrives
    key: Key | None = None  # its exchange key (None: notices)
    sent_at: float | None = None
    attempt: int = 0
    expect_empty: bool = False   # publish only if JetStream has nothing on the subject yet


@dataclass(slots=True)
class LostRun:
    """Consecutive frames of one topic dropped for want of buffer."""

    prev: Key | None
    first: bytes
    first_key: Key | None
    last: bytes = b""
    last_key: Key | None = None
    count: int = 0


@dataclass
class SinkCore:
    capacity: int
    max_inflight: int
    source: str
    boot: str                       # distinguishes this parent's own notices from a previous one's
    ack_timeout: float = 5.0
    retry_delay: float = 0.5
    acked: int = 0
    duplicates: int = 0             # acked as already stored (the other instance was first)
    dropped: int = 0
    gaps: int = 0
    failures: int = 0
    last_error: str = ""
    _queues: dict[bytes, deque[Pending]] = field(default_factory=dict)
    _ready: deque[bytes] = field(default_factory=deque)
    _inflight: dict[bytes, Pending] = field(default_factory=dict)
    _last_key: dict[bytes, Key] = field(default_factory=dict)
    _lost: dict[bytes, LostRun] = field(default_factory=dict)
    _delayed: deque[tuple[float, bytes]] = field(default_factory=deque)   # (due, topic), due ascending
    _fresh: set[bytes] = field(default_factory=set)
    _following: dict[bytes, tuple[Key | None, float]] = field(default_factory=dict)
    _size: int = 0
    _paused_until: float = 0.0
    _serial: int = 0

    def __post_init__(self) -> None:
        self._source = msgpack.packb(self.source)

    # -- facts in ------------------------------------------------------------

    def offer(self, batch: Iterable[Offer]) -> None:
        """Frames the parent published on PUB, in its publishing order."""
        for topic, major, minor, final, payload in batch:
            key = None if major is None else (major, minor, final)
            prev = self._last_key.get(topic)
            if self._size >= self.capacity:
                self._drop(topic, key, prev, payload)
                continue
            if topic in self._lost:
                self._announce(topic)
            if key is None:
                self._serial += 1
                mid = f"{topic.decode()}:x:{self.source}:{self.boot}:{self._serial}"
            else:
                mid = msg_id(topic.decode(), major, minor, final)
                self._last_key[topic] = key
            self._enqueue(Pending(topic, mid, payload, prev if prev is not None or key is None else before(key), key))

    def offer_lost(self, summary: dict[bytes, tuple[Offer, Offer, int]]) -> None:
        """Frames that never reached the buffer (the hand-off to the sink's
        thread was full): per topic the first, the last and how many."""
        for topic, (first, last, count) in summary.items():
            key = None if first[1] is None else first[1:4]
            self._drop(topic, key, self._last_key.get(topic), first[4])
            if count > 1:
                self._drop(topic, None if last[1] is None else last[1:4], None, last[4])
                self._lost[topic].count += count - 2
                self.dropped += count - 2

    def acked_ok(self, entry: Pending, duplicate: bool) -> None:
        """JetStream stored ``entry`` (or already had it: ``duplicate``)."""
        if self._inflight.get(entry.topic) is not entry:
            return                  # a late ack of an attempt already given up
        del self._inflight[entry.topic]
        queue = self._queues[entry.topic]
        queue.popleft()
        self._size -= 1
        self.acked += 1
        self.duplicates += duplicate
        self._fresh.discard(entry.topic)
        if queue:
            self._ready.append(entry.topic)
        else:
            del self._queues[entry.topic]

    def failed(self, entry: Pending, error: str, now: float, transient: bool = False) -> None:
        """The publish of ``entry`` failed: it stays first of its topic and is
        resent (same Nats-Msg-Id). After ``retry_delay`` with everything
        paused (the connection or the stream is in trouble); or, if
        ``transient`` (the other instance's copy of this very event is being
        stored), after ``TRANSIENT_RETRY_S`` for this topic alone."""
        if self._inflight.get(entry.topic) is not entry:
            return
        del self._inflight[entry.topic]
        entry.sent_at = None
        if transient:
            self._delayed.append((now + TRANSIENT_RETRY_S, entry.topic))
            return
        self.failures += 1
        self.last_error = error
        self._paused_until = max(self._paused_until, now + self.retry_delay)
        self._ready.appendleft(entry.topic)

    # -- two instances starting on a topic JetStream has never seen ---------------

    def set_fresh(self, topics: Iterable[bytes]) -> None:
        """Topics JetStream held nothing for when this sink started (so the
        parent could not resume them from there): the first publish of each
        must find its subject still empty (``expect_empty``), or this
        instance lost the race to a partner and follows it."""
        self._fresh.update(topics)

    def lost_race(self, entry: Pending, now: float) -> None:
        """The subject was no longer empty: a partner stores this topic. Hold
        it and follow the partner (``partner_at``) instead of storing our
        later events before its earlier ones."""
        if self._inflight.get(entry.topic) is not entry:
            return
        del self._inflight[entry.topic]
        entry.sent_at = None
        self._fresh.discard(entry.topic)
        self._following[entry.topic] = (None, now)

    def following(self) -> list[bytes]:
        return list(self._following)

    def partner_at(self, topic: bytes, key: Key | None, now: float) -> None:
        """The newest exchange key JetStream holds for a followed ``topic``.

        Our frames at or before it are already stored: drop them (acked as
        duplicates). Once the partner stops moving for ``FOLLOW_STALL_S``
        (gone, or this topic is quiet), publish ours again, from the first
        newer than what it stored."""
        last, since = self._following.get(topic, (None, now))
        if key != last:
            since = now
        queue = self._queues.get(topic)
        while queue and key is not None and queue[0].key is not None and not is_newer(key, *queue[0].key):
            queue.popleft()
            self._size -= 1
            self.acked += 1
            self.duplicates += 1
        if queue is not None and not queue:
            del self._queues[topic]
            queue = None
        if now - since >= FOLLOW_STALL_S:
            del self._following[topic]
            if queue:
                self._ready.append(topic)
        else:
            self._following[topic] = (key, since)

    def expire(self, now: float) -> list[Pending]:
        """Publishes past ``ack_timeout``: counted as failed; the shell drops
        their futures. A late ack of one is ignored (the resend's ack counts)."""
        late = [e for e in self._inflight.values() if e.sent_at is not None and now - e.sent_at >= self.ack_timeout]
        for entry in late:
            self.failed(entry, "no ack within ack_timeout", now)
        return late

    # -- decisions out ---------------------------------------------------------

    def take(self, now: float) -> list[Pending]:
        """Frames to publish now (each marked in flight at ``now``)."""
        if now < self._paused_until:
            return []
        if self._delayed and self._delayed[0][0] <= now:
            while self._delayed and self._delayed[0][0] <= now:
                self._ready.appendleft(self._delayed.popleft()[1])
        if self._lost and self._size < self.capacity:
            for topic in list(self._lost):
                self._announce(topic)
        out = []
        ready, inflight = self._ready, self._inflight
        while ready and len(inflight) < self.max_inflight:
            topic = ready.popleft()
            if topic in self._following:
                continue            # held: partner_at() hands it back
            entry = self._queues[topic][0]
            entry.expect_empty = topic in self._fresh
            entry.sent_at = now
            entry.attempt += 1
            inflight[topic] = entry
            out.append(entry)
        return out

    def wire_payload(self, entry: Pending) -> bytes:
        """What JetStream stores: the PUB payload plus ``source``."""
        return with_source(entry.payload, self._source)

    def cap_marks(self, marks: dict[str, Key]) -> dict[str, Key]:
        """The parent's watermarks, held back to what JetStream acknowledged."""
        out = dict(marks)
        for topic, key in self.holds().items():
            mark = out.get(topic)
            if mark is not None and is_newer(key, *mark):
                out[topic] = key
        return out

    def holds(self) -> dict[str, Key]:
        """Per topic with unacknowledged or lost-unannounced frames: the last
        key before them (topics whose first frame has no key are left out)."""
        held: dict[str, Key] = {}
        for topic, queue in self._queues.items():
            prev = queue[0].prev
            if prev is not None:
                held[topic.decode()] = prev
        for topic, run in self._lost.items():
            if topic not in self._queues and run.prev is not None:
                held[topic.decode()] = run.prev
        return held

    def in_flight(self) -> list[Pending]:
        return list(self._inflight.values())

    @property
    def pending(self) -> int:
        return self._size

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- internals ---------------------------------------------------------------

    def _enqueue(self, entry: Pending) -> None:
        queue = self._queues.get(entry.topic)
        if queue is None:
            queue = self._queues[entry.topic] = deque()
        if not queue and entry.topic not in self._inflight and entry.topic not in self._following:
            self._ready.append(entry.topic)
        queue.append(entry)
        self._size += 1

    def _drop(self, topic: bytes, key: Key | None, prev: Key | None, payload: bytes) -> None:
        run = self._lost.get(topic)
        if run is None:
            run = self._lost[topic] = LostRun(prev if prev is not None or key is None else before(key),
                                              payload, key)
        run.last, run.last_key = payload, key
        run.count += 1
        self.dropped += 1
        if key is not None:
            self._last_key[topic] = key

    def _announce(self, topic: bytes) -> None:
        """Queue the gap notice of ``topic``'s lost run (may pass capacity by
        one per topic: the loss must be said before the next frame)."""
        run = self._lost.pop(topic)
        self.gaps += 1
        self._serial += 1
        mid = f"{topic.decode()}:gap:{self.source}:{self.boot}:{self._serial}"
        self._enqueue(Pending(topic, mid, gap_notice(topic, run), run.prev))


def gap_notice(topic: bytes, run: LostRun) -> bytes:
    """The consumer payload announcing ``run`` (a gap notice of the wire contract)."""
    first, last = msgpack.unpackb(run.first), msgpack.unpackb(run.last)
    detail = {}
    if run.first_key is not None and run.last_key is not None:
        detail = {"from_id": run.first_key[0], "to_id": run.last_key[0]}
    return frames.encode_gap_body(
        topic.decode(), first.get("stream", ""), last.get("recv_ns", 0),
        first.get("recv_ns", 0) // 1_000_000, last.get("recv_ns", 0) // 1_000_000,
        f"{GAP_REASON}: {run.count} frames not stored", **detail)
