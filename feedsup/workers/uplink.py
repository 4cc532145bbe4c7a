"""The worker's one path to the parent: ZeroMQ PUSH, never blocking.

ZeroMQ sockets are not thread-safe, so the reading thread and the ticker
thread each own a socket. Data, READY, STREAMING and EXIT go through the
reader's socket, so the parent sees them in order; LIVE goes through the
ticker's. A send that would block is counted as a drop and reported in the
next liveness ping, so the socket-reading thread never waits on IPC.

Records are batched until the reading thread is about to block on the
network (``flush`` is the over-reader's ``before_block`` hook): batching only
what has already arrived adds no latency, and a burst costs one ZeroMQ
message instead of hundreds.
"""

from __future__ import annotations

from typing import Any

import zmq

from feedsup.ipc import frames

# Deep enough to ride out a parent busy for a second at full rate.
SNDHWM = 200_000
# On exit, give queued frames this long to reach the parent.
LINGER_MS = 2000
# A burst is sent in pieces of this many records: bigger batches bought a
# few % of throughput but held a burst's first records back for milliseconds.
MAX_BATCH = 32


class Uplink:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.setsockopt(zmq.LINGER, LINGER_MS)
        self.sock.connect(endpoint)
        self.drops = 0
        self._batch: list[bytes] = []

    def send(self, record: bytes) -> None:
        """Queue one data or gap record; ``flush`` sends the batch."""
        batch = self._batch
        batch.append(record)
        if len(batch) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        message = batch[0] if len(batch) == 1 else b"".join(batch)
        try:
            self.sock.send(message, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.drops += len(batch)
        batch.clear()

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
