"""Consumer client: subscribe to topics, get decoded frames, see every gap.

    from feedsup.ipc.client import Subscriber
    with Subscriber("tcp://127.0.0.1:7780", ["kline.BTCUSDT"]) as sub:
        for frame in sub:
            print(frame["topic"], frame["seq"], frame["data"])

PUB drops frames for a subscriber that falls behind its high-water mark and
says nothing; ``seq`` counts per topic without holes at the source, so the
client turns every drop into a ``Gap`` it counts and reports. A ``seq`` that
goes backwards means the parent restarted (seq starts again at 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import msgpack
import zmq

DEFAULT_RCVHWM = 1_000_000


@dataclass(frozen=True)
class Gap:
    topic: str
    expected: int   # the seq that should have come
    got: int        # the seq that came instead
    missed: int     # frames lost between them (0 on a parent restart)
    restart: bool = False


class SeqTracker:
    """Per-topic seq continuity (pure)."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.missed = 0
        self.gaps: list[Gap] = []

    def observe(self, topic: str, seq: int) -> Gap | None:
        prev = self.last.get(topic)
        self.last[topic] = seq
        if prev is None or seq == prev + 1:
            return None
        if seq <= prev:
            gap = Gap(topic, prev + 1, seq, 0, restart=True)
        else:
            gap = Gap(topic, prev + 1, seq, seq - prev - 1)
            self.missed += gap.missed
        self.gaps.append(gap)
        return gap


class Subscriber:
    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), *, ctx: zmq.Context | None = None,
                 rcvhwm: int = DEFAULT_RCVHWM, on_gap: Callable[[Gap], None] | None = None) -> None:
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sock.connect(endpoint)
        self.tracker = SeqTracker()
        self.on_gap = on_gap

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, or None after ``timeout`` seconds."""
        if timeout is not None and not self.sock.poll(int(timeout * 1000)):
            return None
        self.sock.recv()                      # topic frame; the payload repeats it
        frame = msgpack.unpackb(self.sock.recv())
        gap = self.tracker.observe(frame["topic"], frame["seq"])
        if gap is not None and self.on_gap is not None:
            self.on_gap(gap)
        return frame

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            frame = self.recv()
            if frame is not None:
                yield frame

    @property
    def gaps(self) -> list[Gap]:
        return self.tracker.gaps

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlError(Exception):
    pass


def request(endpoint: str, cmd: str, timeout: float = 3.0, **args: Any) -> dict[str, Any]:
    """One request to the parent's control socket; raises ControlError on
    timeout or on an ``{"ok": false}`` answer."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"cmd": cmd, **args}))
        if not sock.poll(int(timeout * 1000)):
            raise ControlError(f"no answer from {endpoint} within {timeout:g} s (is feedsup running?)")
        reply = msgpack.unpackb(sock.recv())
    finally:
        sock.close(linger=0)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply
