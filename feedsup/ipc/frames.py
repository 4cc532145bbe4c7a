"""The frame envelope: what travels worker -> parent -> consumer.

Worker -> parent, over ZeroMQ PUSH. A message is either

* one or more **records**, back to back (a worker batches the records it
  already holds, which halves the per-message cost on both sides). Each record
  is ``kind + <header> + topic + body``, ``kind`` being ``b"D"`` (data) or
  ``b"G"`` (gap). The header carries the exchange ordering key (major, minor,
  final) the parent uses to suppress duplicates, and the topic and body
  lengths. ``body`` is the consumer payload minus ``seq``: a msgpack map
  ``{topic, stream, recv_ns, data[, backfill]}``. A gap record says the worker
  lost data on this topic that it cannot recover; its body has a ``gap`` key
  (``encode_gap_body``) and ``data`` None, and the parent numbers it without
  the watermark check;
* or one **control** message: ``b"C" + msgpack(map)`` with ``type`` in READY,
  LIVE, STREAMING, NOTICE, EXIT (see ``Control``). Never batched.

Parent -> consumer (PUB, two frames): ``[topic, payload]`` where payload is
the body with ``seq`` spliced in front. Splicing bytes instead of
re-encoding keeps the parent's hot path to a few byte copies.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import msgpack

DATA = 0x44     # b"D"
GAP = 0x47      # b"G"
CONTROL = 0x43  # b"C"

# major, minor: int64; final: bool; topic length: uint16; body length: uint32
HEADER = struct.Struct("<qq?HI")
HEADER_END = 1 + HEADER.size
SEQ_KEY = msgpack.packb("seq")


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


def iter_records(message: bytes) -> Iterator[tuple[int, bytes, int, int, bool, bytes]]:
    """Yield (kind, topic, major, minor, final, body) for each record.

    The parent's hot loop inlines this; it is here for tests and tools.
    """
    pos, end = 0, len(message)
    while pos < end:
        kind = message[pos]
        major, minor, final, tlen, blen = HEADER.unpack_from(message, pos + 1)
        start = pos + HEADER_END
        yield kind, message[start:start + tlen], major, minor, final, message[start + tlen:start + tlen + blen]
        pos = start + tlen + blen


def encode_control(kind: str, **fields: Any) -> bytes:
    fields["type"] = kind
    return b"C" + msgpack.packb(fields)


def decode_control(frame: bytes) -> dict[str, Any]:
    return msgpack.unpackb(frame[1:])


def with_seq(body: bytes, seq: int) -> bytes:
    """Splice ``seq`` in front of a msgpack fixmap body (at most 14 keys)."""
    head = body[0]
    if not 0x80 <= head < 0x8F:
        raise ValueError("body must be a msgpack fixmap with fewer than 15 keys")
    return bytes((head + 1,)) + SEQ_KEY + msgpack.packb(seq) + body[1:]


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode a consumer payload: ``{topic, seq, stream, recv_ns, data, ...}``."""
    return msgpack.unpackb(payload)
