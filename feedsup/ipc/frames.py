"""The frame envelope: what travels worker -> parent -> consumer.

Worker -> parent, over ZeroMQ PUSH. A message is either

* a **batch**: ``b"B" + <instance: uint32> + records``, the records back to
  back (a worker batches the records it already holds, which halves the
  per-message cost on both sides). ``instance`` names the sending worker, so
  the parent knows whom to restart when a record is malformed. Each record is
  ``kind + <header> + topic + body``, ``kind`` being ``b"D"`` (data) or
  ``b"G"`` (gap). The header carries the exchange ordering key (major, minor,
  final) the parent uses to suppress duplicates, and the topic and body
  lengths. ``body`` is the consumer payload minus ``seq``: a msgpack fixmap
  (at most ``MAX_BODY_KEYS`` keys, so ``seq`` and ``epoch`` can be spliced in)
  ``{topic, stream, recv_ns, data[, backfill]}``. A gap record says the worker
  lost data on this topic that it cannot recover; its body has a ``gap`` key
  (``encode_gap_body``) and ``data`` None, and the parent numbers it without
  the watermark check;
* or one **control** message: ``b"C" + msgpack(map)`` with ``type`` in READY,
  LIVE, STREAMING, NOTICE, EXIT (see ``Control``), the sender's ``instance``
  and ``stream``, and ``v``, the protocol version. Never batched.

The parent checks everything it reads (``check_control``; the record checks
are inlined in its hot loop): a worker of another ``PROTOCOL_VERSION``, or one
that sends anything malformed, is refused and restarted.

Parent -> consumer (PUB, two frames): ``[topic, payload]`` where payload is
the body with ``seq`` and ``epoch`` spliced in front. ``epoch`` is a random
number each parent picks at start: a consumer tells a restarted parent's
frames (seqs from 1 again) from the old one's still in flight by it. Splicing bytes instead of
re-encoding keeps the parent's hot path to a few byte copies.
"""

from __future__ import annotations

import secrets
import struct
from typing import Any, Iterator

import msgpack

# Bump on any change to what workers and the parent exchange: a worker of
# another version is refused (the parent logs both versions).
PROTOCOL_VERSION = 2

DATA = 0x44     # b"D"
GAP = 0x47      # b"G"
CONTROL = 0x43  # b"C"
BATCH = 0x42    # b"B"

# major, minor: int64; final: bool; topic length: uint16; body length: uint32
HEADER = struct.Struct("<qq?HI")
HEADER_END = 1 + HEADER.size
# batch prefix after b"B": the sending worker's instance, uint32
BATCH_HEAD = struct.Struct("<I")
BATCH_START = 1 + BATCH_HEAD.size
SEQ_KEY = msgpack.packb("seq")
EPOCH_KEY = msgpack.packb("epoch")
# A body is a msgpack fixmap (at most 15 keys); with seq and epoch spliced in,
# and ``source`` added by the JetStream sink, it must still be one.
MAX_BODY_KEYS = 12
# Largest worker -> parent message (ZMQ_MAXMSGSIZE of the parent's PULL): a
# batch of records, each at most one exchange frame (fastrecv's cap) plus
# its envelope. Workers send an over-sized batch record by record.
MAX_MESSAGE = 64 << 20


class Control:
    """Control message types, worker -> parent."""

    READY = "ready"          # connected and subscribed
    STREAMING = "streaming"  # first data message received (rotation handover)
    LIVE = "live"            # liveness ping with counters
    NOTICE = "notice"        # exchange announced something (serverShutdown)
    EXIT = "exit"            # the connection ended; reason and fatality follow


def encode_body(topic: str, stream: str, recv_ns: int, data: Any, backfill: bool = False) -> bytes:
    body = {"topic": topic, "stream": stream, "recv_ns": recv_ns, "data": data}
    if backfill:
        body["backfill"] = True
    return msgpack.packb(body)


def encode_data(topic: bytes, major: int, minor: int, final: bool, body: bytes) -> bytes:
    return b"D" + HEADER.pack(major, minor, final, len(topic), len(body)) + topic + body


# The worker's hot path builds a data record in one join (``DataEncoder``):
# kind and header from one struct, the topic and the constant start of the
# body cached per topic, recv_ns as msgpack uint64 with the "data" key, then
# the packed data. Byte for byte what ``encode_data(encode_body(...))`` gives.
RECORD_HEAD = struct.Struct("<Bqq?HI")
_NS_DATA = struct.Struct(">BQ5s")
_DATA_KEY = msgpack.packb("data")


class DataEncoder:
    """``encode(topic, major, minor, final, recv_ns, data)`` -> one data record
    of ``stream``; per topic, the header's constant parts are built once."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._topics: dict[str, tuple[bytes, int, int]] = {}
        self._pack = msgpack.Packer().pack

    def encode(self, topic: str, major: int, minor: int, final: bool, recv_ns: int, data: Any) -> bytes:
        cached = self._topics.get(topic)
        if cached is None:
            cached = self._topics[topic] = self._constant(topic)
        lead, tlen, fixed = cached
        packed = self._pack(data)
        if not 1 << 32 <= recv_ns < 1 << 64:     # else not a msgpack uint64: the slow path
            return encode_data(lead[:tlen], major, minor, final, encode_body(topic, self.stream, recv_ns, data))
        return b"".join((RECORD_HEAD.pack(DATA, major, minor, final, tlen, fixed + len(packed)), lead,
                         _NS_DATA.pack(0xCF, recv_ns, _DATA_KEY), packed))

    def _constant(self, topic: str) -> tuple[bytes, int, int]:
        tb = topic.encode()
        start = b"\x84" + b"".join(msgpack.packb(x) for x in ("topic", topic, "stream", self.stream, "recv_ns"))
        return tb + start, len(tb), len(start) + _NS_DATA.size


def encode_gap(topic: bytes, body: bytes) -> bytes:
    return b"G" + HEADER.pack(0, 0, False, len(topic), len(body)) + topic + body


def encode_gap_body(topic: str, stream: str, recv_ns: int, from_ms: int | None, to_ms: int | None,
                    reason: str, **detail: Any) -> bytes:
    """A gap notice: exchange data on ``topic`` between ``from_ms`` and
    ``to_ms`` (exchange or receive time, ms; None = not known yet) is lost
    and cannot be recovered. Consumers should distrust the topic until its
    next regular frame."""
    gap = {"from_ms": from_ms, "to_ms": to_ms, "reason": reason, **detail}
    return msgpack.packb({"topic": topic, "stream": stream, "recv_ns": recv_ns, "data": None, "gap": gap})


def batch_prefix(instance: int) -> bytes:
    return b"B" + BATCH_HEAD.pack(instance)


def encode_batch(instance: int, records: "list[bytes] | tuple[bytes, ...]") -> bytes:
    return batch_prefix(instance) + b"".join(records)


def split_batch(message: bytes) -> tuple[int, bytes]:
    """(instance, records) of a batch message."""
    if not message or message[0] != BATCH or len(message) < BATCH_START:
        raise ValueError("not a batch message")
    return BATCH_HEAD.unpack_from(message, 1)[0], message[BATCH_START:]


def iter_records(message: bytes) -> Iterator[tuple[int, bytes, int, int, bool, bytes]]:
    """Yield (kind, topic, major, minor, final, body) for each record of a
    batch message (or of bare records back to back).

    The parent's hot loop inlines this; it is here for tests and tools.
    """
    if message and message[0] == BATCH:
        message = split_batch(message)[1]
    pos, end = 0, len(message)
    while pos < end:
        kind = message[pos]
        major, minor, final, tlen, blen = HEADER.unpack_from(message, pos + 1)
        start = pos + HEADER_END
        yield kind, message[start:start + tlen], major, minor, final, message[start + tlen:start + tlen + blen]
        pos = start + tlen + blen


def encode_control(kind: str, **fields: Any) -> bytes:
    fields["type"] = kind
    fields.setdefault("v", PROTOCOL_VERSION)
    return b"C" + msgpack.packb(fields)


def decode_control(frame: bytes) -> dict[str, Any]:
    return msgpack.unpackb(frame[1:])


_CONTROL_TYPES = frozenset({Control.READY, Control.STREAMING, Control.LIVE, Control.NOTICE, Control.EXIT})
# LIVE stats the parent, the policy and the metrics read: counters are
# non-negative ints, durations numbers or None.
_COUNTERS = ("msgs", "bytes", "malformed", "drops")
_DURATIONS = ("idle", "lag_ms", "age")
MAX_STATS_KEYS = 64


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def check_control(msg: Any) -> str | None:
    """Why a decoded control message cannot be acted on, or None if it can.

    ``instance`` is checked first, so the caller can tell whom to restart;
    a version mismatch is reported as such, before any other field.
    """
    if type(msg) is not dict:
        return "control message is not a map"
    if not _is_int(msg.get("instance")):
        return "control message without an integer instance"
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        return f"protocol version mismatch: worker speaks {version!r}, parent {PROTOCOL_VERSION}"
    kind = msg.get("type")
    if kind not in _CONTROL_TYPES:
        return f"unknown control type {kind!r}"[:200]
    if type(msg.get("stream")) is not str:
        return "control message without a stream name"
    if kind == Control.LIVE:
        return _check_stats(msg.get("stats"))
    if kind == Control.NOTICE and type(msg.get("event")) is not str:
        return "notice without an event name"
    if kind == Control.EXIT:
        if type(msg.get("reason")) is not str or type(msg.get("fatal")) is not bool:
            return "exit without a reason string and a fatal flag"
        if msg.get("close_code") is not None and not _is_int(msg["close_code"]):
            return "exit close_code is not an integer"
        if msg.get("stats") is not None:
            return _check_stats(msg["stats"])
    return None


def _check_stats(stats: Any) -> str | None:
    if type(stats) is not dict or len(stats) > MAX_STATS_KEYS:
        return "liveness stats are not a map (of at most 64 keys)"
    for key in _COUNTERS:
        value = stats.get(key, 0)
        if not _is_int(value) or value < 0:
            return f"liveness stat {key!r} is not a non-negative integer"
    for key in _DURATIONS:
        value = stats.get(key)
        if value is not None and not _is_number(value):
            return f"liveness stat {key!r} is not a number"
    return None


def with_seq(body: bytes, seq: int, epoch: int) -> bytes:
    """Splice ``seq`` and the parent's ``epoch`` in front of a msgpack fixmap
    body (at most ``MAX_BODY_KEYS`` keys)."""
    head = body[0]
    if not 0x80 <= head <= 0x80 + MAX_BODY_KEYS:
        raise ValueError(f"body must be a msgpack fixmap of at most {MAX_BODY_KEYS} keys")
    return bytes((head + 2,)) + SEQ_KEY + msgpack.packb(seq) + epoch_field(epoch) + body[1:]


def epoch_field(epoch: int) -> bytes:
    """``"epoch": <uint32>`` as msgpack map entry bytes, always the same
    length (the parent's hot path packs it in a fixed-size struct field)."""
    return EPOCH_KEY + b"\xce" + epoch.to_bytes(4, "big")


def new_epoch() -> int:
    """A parent's epoch: random, nonzero, a msgpack uint32."""
    return secrets.randbelow(0xFFFFFFFF) + 1
