"""The worker's one path to the parent: ZeroMQ PUSH, never blocking.

ZeroMQ sockets are not thread-safe, so the reading thread and the ticker
thread each own a socket. Data, READY, STREAMING and EXIT go through the
reader's socket, so the parent sees them in order; LIVE goes through the
ticker's. A send that would block is counted as a drop and reported in the
next liveness ping, so the socket-reading thread never waits on IPC.
"""

from __future__ import annotations

from typing import Any

import zmq

from feedsup.ipc import frames

# Deep enough to ride out a parent busy for a second at full rate.
SNDHWM = 200_000
# On exit, give queued frames this long to reach the parent.
LINGER_MS = 2000


class Uplink:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.setsockopt(zmq.LINGER, LINGER_MS)
        self.sock.connect(endpoint)
        self.drops = 0

    def send(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame, zmq.NOBLOCK, copy=True)
            return True
        except zmq.Again:
            self.drops += 1
            return False

    def control(self, kind: str, **fields: Any) -> bool:
        return self.send(frames.encode_control(kind, **fields))

    def close(self) -> None:
        self.sock.close()
