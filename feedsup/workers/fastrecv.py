"""Over-reading frame buffer for websocket-client, with a cap on frame size.

websocket-client reads every frame in exact-size pieces (header, length,
payload), which costs 2-3 ``recv()`` syscalls per message. ``recv_strict``
below reads up to ``chunk`` bytes at a time and serves frames from that
buffer, copying each byte once. It replaces ``frame_buffer.recv_strict`` on
one connection after the handshake (the handshake reads line by line, so
nothing is buffered yet).

The exchange is not trusted with our memory: websocket-client asks for a
frame's payload with the length its header claims (up to 2^63 bytes) and
joins continuation frames without limit. ``install`` refuses a frame, or a
fragmented message, above ``max_frame`` bytes *before* reading it, with
``FrameTooLarge``: the worker's connection ends with that reason and the
parent restarts it.
"""

from __future__ import annotations

from typing import Any, Callable

import websocket

# Binance's largest messages (all-market arrays, deep books) are a few
# hundred KB; 4 MiB leaves room without letting one frame cost much.
DEFAULT_MAX_FRAME = 4 << 20


class FrameTooLarge(websocket.WebSocketPayloadException):
    """A frame or message claims more bytes than the cap allows."""


class OverReader:
    def __init__(self, recv: Callable[[int], bytes], chunk: int = 65536,
                 before_block: Callable[[], None] | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._recv = recv
        self._chunk = chunk
        self.max_frame = max_frame
        # Called before every socket read: the worker flushes its batch of
        # records there, so nothing already received waits on the network.
        self.before_block = before_block or (lambda: None)
        self._buf = b""
        self._pos = 0

    def recv_strict(self, size: int) -> bytes:
        pos = self._pos
        end = pos + size
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        if size > self.max_frame:
            # Checked only off the buffered path: anything served from the
            # buffer is at most one chunk, far below the cap.
            raise FrameTooLarge(f"frame of {size} bytes exceeds the {self.max_frame}-byte cap")
        parts = [self._buf[pos:]]
        have = len(parts[0])
        while have < size:
            self.before_block()
            piece = self._recv(max(self._chunk, size - have))
            if not piece:
                raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
            parts.append(piece)
            have += len(piece)
        self._buf = b"".join(parts)
        self._pos = size
        return self._buf[:size]

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_message(self) -> bytes | None:
        """The payload of the next frame, if it is a whole unfragmented text
        or binary frame, unmasked, below 64 KiB and the cap, already in the
        buffer: nearly every Binance message. None otherwise, without
        consuming anything: the caller then takes websocket-client's
        ``recv_data``, which handles (and checks) everything else, and
        flushes the uplink before it blocks on the socket.

        The frames taken here are those websocket-client would accept
        unchanged (FIN set, RSV bits clear, opcode text or binary, no mask,
        ``skip_utf8_validation``); it would merely parse them more slowly
        (about 1.5 us a frame): call only between two messages, as the
        reading loop does."""
        buf = self._buf
        pos = self._pos
        have = len(buf)
        if have - pos < 2:
            return None
        b0 = buf[pos]
        if b0 != 0x81 and b0 != 0x82:
            return None
        size = buf[pos + 1]
        if size < 126:
            start = pos + 2
        elif size == 126 and have - pos >= 4:
            size = buf[pos + 2] << 8 | buf[pos + 3]
            start = pos + 4
        else:
            return None             # masked, 64-bit length, or a header cut short
        end = start + size
        if end > have or size > self.max_frame:
            return None
        self._pos = end
        return buf[start:end]


def reader_of(ws: websocket.WebSocket) -> OverReader | None:
    """The OverReader ``install`` put on ``ws``, if any."""
    reader = getattr(ws.frame_buffer.recv_strict, "__self__", None)
    return reader if isinstance(reader, OverReader) else None


def install(ws: websocket.WebSocket, chunk: int = 65536,
            before_block: Callable[[], None] | None = None,
            max_frame: int = DEFAULT_MAX_FRAME) -> OverReader:
    """Serve ``ws``'s frames from an over-reading buffer; refuse any frame
    or fragmented message above ``max_frame`` bytes (``FrameTooLarge``)."""
    reader = OverReader(ws._recv, chunk, before_block, max_frame)
    ws.frame_buffer.recv_strict = reader.recv_strict
    ws.cont_frame.add = _capped_add(ws.cont_frame, max_frame)
    return reader


def _capped_add(cont: Any, max_frame: int) -> Callable[[Any], None]:
    """``continuous_frame.add`` (websocket-client 1.x) with a cap on the
    joined message: the same steps, so no extra call per message."""
    text, binary = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY

    def add(frame: Any) -> None:
        data = cont.cont_data
        if data:
            if len(data[1]) + len(frame.data) > max_frame:
                cont.cont_data = None
                raise FrameTooLarge(f"fragmented message of more than {max_frame} bytes exceeds the cap")
            data[1] += frame.data
        else:
            if frame.opcode == text or frame.opcode == binary:
                cont.recving_frames = frame.opcode
            cont.cont_data = [frame.opcode, frame.data]
        if frame.fin:
            cont.recving_frames = None
    return add
