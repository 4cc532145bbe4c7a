"""Over-reading frame buffer for websocket-client.

websocket-client reads every frame in exact-size pieces (header, length,
payload), which costs 2-3 ``recv()`` syscalls per message. ``recv_strict``
below reads up to ``chunk`` bytes at a time and serves frames from that
buffer, copying each byte once. It replaces ``frame_buffer.recv_strict`` on
one connection after the handshake (the handshake reads line by line, so
nothing is buffered yet).
"""

from __future__ import annotations

from typing import Callable

import websocket


class OverReader:
    def __init__(self, recv: Callable[[int], bytes], chunk: int = 65536,
                 before_block: Callable[[], None] | None = None) -> None:
        self._recv = recv
        self._chunk = chunk
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


def install(ws: websocket.WebSocket, chunk: int = 65536,
            before_block: Callable[[], None] | None = None) -> OverReader:
    reader = OverReader(ws._recv, chunk, before_block)
    ws.frame_buffer.recv_strict = reader.recv_strict
    return reader
