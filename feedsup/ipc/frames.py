"""The frame envelope: what travels worker -> parent -> consumer.

Worker -> parent (one ZeroMQ PUSH frame per message; the first byte says which):

* data:    ``b"D" + <header> + topic + body``. The header carries the
  exchange ordering key (major, minor, final) the parent uses to suppress
  duplicates, and the topic length. ``body`` is the consumer payload minus
  ``seq``: a msgpack map ``{topic, stream, recv_ns, data[, backfill]}``.
* gap:     ``b"G" + <header> + topic + body``: the worker lost data on this
  topic that it cannot recover. The parent numbers it without the watermark
  check. ``body`` is a consumer payload whose ``gap`` key says what was lost
  (``encode_gap_body``) and whose ``data`` is None.
* control: ``b"C" + msgpack(map)`` with ``type`` in READY, LIVE, STREAMING,
  NOTICE, EXIT (see ``Control``).

Parent -> consumer (PUB, two frames): ``[topic, payload]`` where payload is
the body with ``seq`` spliced in front. Splicing bytes instead of
re-encoding keeps the parent's hot path to a few byte copies.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

DATA = 0x44     # b"D"
GAP = 0x47      # b"G"
CONTROL = 0x43  # b"C"

# major, minor: int64; final: bool; topic length: uint16
_HEADER = struct.Struct("<qq?H")
_HEADER_END = 1 + _HEADER.size
_SEQ_KEY = msgpack.packb("seq")


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
    return b"D" + _HEADER.pack(major, minor, final, len(topic)) + topic + body


def encode_gap(topic: bytes, body: bytes) -> bytes:
    return b"G" + _HEADER.pack(0, 0, False, len(topic)) + topic + body


def encode_gap_body(topic: str, stream: str, recv_ns: int, from_ms: int | None, to_ms: int | None,
                    reason: str, **detail: Any) -> bytes:
    """A gap notice: exchange data on ``topic`` between ``from_ms`` and
    ``to_ms`` (exchange or receive time, ms; None = not known yet) is lost
    and cannot be recovered. Consumers should distrust the topic until its
    next regular frame."""
    gap = {"from_ms": from_ms, "to_ms": to_ms, "reason": reason, **detail}
    return msgpack.packb({"topic": topic, "stream": stream, "recv_ns": recv_ns, "data": None, "gap": gap})


def decode_data(frame: bytes) -> tuple[bytes, int, int, bool, bytes]:
    """Return (topic, major, minor, final, body) of a data or gap frame."""
    major, minor, final, tlen = _HEADER.unpack_from(frame, 1)
    end = _HEADER_END + tlen
    return frame[_HEADER_END:end], major, minor, final, frame[end:]


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
    return bytes((head + 1,)) + _SEQ_KEY + msgpack.packb(seq) + body[1:]


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode a consumer payload: ``{topic, seq, stream, recv_ns, data, ...}``."""
    return msgpack.unpackb(payload)
