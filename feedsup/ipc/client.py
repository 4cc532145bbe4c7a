"""Consumer client: subscribe to topics, get decoded frames, see every gap.

    from feedsup.ipc.client import Subscriber
    with Subscriber("tcp://127.0.0.1:7780", ["kline.BTCUSDT"]) as sub:
        for frame in sub:
            print(frame["topic"], frame["seq"], frame["data"])

A consumer that starts late calls ``catch_up(control, prefixes)`` first: it
returns the latest frame of every matching topic (the parent's last-value
cache), and the live frames that follow continue from there with no hole and
no duplicate.

PUB drops frames for a subscriber that falls behind its high-water mark and
says nothing; ``seq`` counts per topic without holes at the source, so the
client turns every drop into a ``Gap`` it counts and reports. A ``seq`` that
goes backwards means the parent restarted (seq starts again at 1).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import msgpack
import zmq

from feedsup.curve import CurveKeyError, CurveKeys
from feedsup.ipc.topics import HELLO_PREFIX

unpackb = msgpack.unpackb
# recv polls first after a miss; after this many receives it tries without.
QUEUED_RETRY = 8

DEFAULT_RCVHWM = 1_000_000
# Larger frames are refused by ZeroMQ (it drops the connection): one frame
# is one exchange message (at most fastrecv's cap) in its envelope.
DEFAULT_MAXMSGSIZE = 64 << 20


@dataclass(frozen=True)
class Gap:
    topic: str
    expected: int   # the seq that should have come
    got: int        # the seq that came instead
    missed: int     # frames lost between them; on a parent restart, the new parent's before ``got``
    restart: bool = False


class SeqTracker:
    """Per-topic seq continuity and the catch-up skip rule (pure): the one
    implementation of the gap rules behind ``Subscriber`` and
    ``feedsup.ipc.aio.AsyncSubscriber``."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.epochs: dict[str, int] = {}      # topic -> the epoch of its last frame
        self.missed = 0
        self.gaps: list[Gap] = []
        # topic -> (seq, epoch) catch_up() already delivered; live frames of
        # that parent up to that seq are skipped
        self.skip_upto: dict[str, tuple[int, int]] = {}

    def seed(self, snapshot: list[dict[str, Any]]) -> None:
        """catch_up()'s snapshot was delivered: continue each topic from it."""
        for frame in snapshot:
            epoch = frame.get("epoch", 0)
            self.skip_upto[frame["topic"]] = (frame["seq"], epoch)
            self.last[frame["topic"]] = frame["seq"]
            self.epochs[frame["topic"]] = epoch

    def admit(self, frame: dict[str, Any]) -> tuple[bool, Gap | None]:
        """(deliver?, the gap it reveals): a frame catch_up() already
        delivered, or an earlier one of the same parent still in flight, is
        not delivered again; any other is checked for a gap. A restarted
        parent numbers topics from 1 again: its frames (another epoch) are
        new whatever their seq."""
        topic = frame["topic"]
        seq = frame["seq"]
        epoch = frame.get("epoch", 0)
        if self.skip_upto:
            upto = self.skip_upto.get(topic)
            if upto is not None:
                if seq <= upto[0] and epoch == upto[1]:
                    return False, None
                del self.skip_upto[topic]
        return True, self.observe(topic, seq, epoch)

    def observe(self, topic: str, seq: int, epoch: int = 0) -> Gap | None:
        prev = self.last.get(topic)
        self.last[topic] = seq
        if prev is None:
            self.epochs[topic] = epoch
            return None
        if seq == prev + 1 and epoch == self.epochs[topic]:
            return None
        if seq <= prev or epoch != self.epochs[topic]:
            # A restarted parent numbers from 1: its frames before this one
            # were published before this socket was back (PUB drops them).
            self.epochs[topic] = epoch
            gap = Gap(topic, 1, seq, seq - 1, restart=True)
        else:
            gap = Gap(topic, prev + 1, seq, seq - prev - 1)
        self.missed += gap.missed
        self.gaps.append(gap)
        return gap


def setup_sub(sock: zmq.Socket, endpoint: str, topics: Iterable[str], rcvhwm: int, maxmsgsize: int,
              curve: CurveKeys | None) -> None:
    """Options, keys and subscriptions of a consumer's SUB socket (blocking or asyncio)."""
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)


def hello_topic() -> tuple[str, bytes]:
    """catch_up's one-off token and the topic it subscribes to (nothing is published there)."""
    token = secrets.token_hex(8)
    return token, (HELLO_PREFIX + token).encode()


class SubscriberBase:
    """What the blocking and the asyncio client share: a SUB socket set up by
    ``setup_sub``, its context (closed with it when the client made it), the
    seq tracker, and the frames ``catch_up`` buffered for later delivery."""

    def __init__(self, ctx: zmq.Context, own_ctx: bool, endpoint: str, topics: Iterable[str], rcvhwm: int,
                 on_gap: Callable[[Gap], None] | None, curve: CurveKeys | None, maxmsgsize: int) -> None:
        self.curve = curve or CurveKeys.from_env()
        self._own_ctx = own_ctx
        self.ctx = ctx
        self.sock = ctx.socket(zmq.SUB)
        setup_sub(self.sock, endpoint, topics, rcvhwm, maxmsgsize, self.curve)
        self.tracker = SeqTracker()
        self.on_gap = on_gap
        self._pending: deque[dict[str, Any]] = deque()

    @property
    def gaps(self) -> list[Gap]:
        return self.tracker.gaps

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def _admitted(self, frame: dict[str, Any]) -> bool:
        """Whether to deliver a frame taken off the slow path (catch_up's
        rules, ``SeqTracker.admit``); a gap it reveals goes to ``on_gap``."""
        deliver, gap = self.tracker.admit(frame)
        if gap is not None and self.on_gap is not None:
            self.on_gap(gap)
        return deliver


class Subscriber(SubscriberBase):
    """``curve``: client keys for a parent with CURVE on (``feedsup.curve``);
    by default from ``FEEDSUP_CURVE_SERVER_KEY`` and ``FEEDSUP_CURVE_CLIENT_KEY_FILE``.
    A refused key connects and receives nothing."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), *, ctx: zmq.Context | None = None,
                 rcvhwm: int = DEFAULT_RCVHWM, on_gap: Callable[[Gap], None] | None = None,
                 curve: CurveKeys | None = None, maxmsgsize: int = DEFAULT_MAXMSGSIZE) -> None:
        super().__init__(ctx or zmq.Context(), ctx is None, endpoint, topics, rcvhwm, on_gap, curve, maxmsgsize)
        self._skip_upto = self.tracker.skip_upto      # the same dict: recv tests it inline
        self._queued = False      # recv: were frames already waiting last time?
        self._polled = 0

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, or None after ``timeout`` seconds."""
        if self._pending or self._skip_upto:
            return self._recv_slow(timeout)
        # The common case, kept flat (a consumer's per-frame cost): a frame
        # already queued is taken without a clock read or a poll, and a
        # topic's next seq is checked inline; anything else is the tracker's.
        sock = self.sock
        if self._queued:
            # Frames were waiting last time: try without a poll. A miss
            # (zmq.Again, about as dear as a poll) sends us back to polling.
            try:
                sock.recv(zmq.NOBLOCK)        # topic frame; the payload repeats it
            except zmq.Again:
                self._queued = False
                self._polled = 0
        if not self._queued:
            if timeout is not None and not sock.poll(max(0, int(timeout * 1000))):
                return None
            sock.recv()
            self._polled += 1
            # At a steady low rate every recv waits, and polling first is
            # cheapest; after a run of receives, try the no-poll path again.
            if self._polled >= QUEUED_RETRY:
                self._queued = True
        frame = unpackb(sock.recv())
        gap = self.tracker.observe(frame["topic"], frame["seq"], frame.get("epoch", 0))
        if gap is not None and self.on_gap is not None:
            self.on_gap(gap)
        return frame

    def _recv_slow(self, timeout: float | None) -> dict[str, Any] | None:
        """``recv`` with frames buffered by ``catch_up`` or still to skip."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._next(deadline)
            if frame is None:
                return None
            if self._admitted(frame):
                return frame

    def _read(self, deadline: float | None) -> dict[str, Any] | None:
        """One frame off the socket; None at the deadline."""
        if deadline is not None:
            wait = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(wait):
                return None
        self.sock.recv()                      # topic frame; the payload repeats it
        return unpackb(self.sock.recv())

    def _next(self, deadline: float | None) -> dict[str, Any] | None:
        if self._pending:
            return self._pending.popleft()
        return self._read(deadline)

    def catch_up(self, control: str, prefixes: Iterable[str] = ("",), timeout: float = 5.0) -> list[dict[str, Any]]:
        """Latest frame of every topic under ``prefixes``, then live without a hole.

        First make sure this socket's subscriptions have reached the PUB
        side: subscribe to a one-off hello topic and ask the parent until it
        has seen that subscription (subscriptions travel in order, so once
        the hello's is live, the earlier ones are too). Nothing is published
        on the hello topic, so no consumer ever sees it. Only then take the
        snapshot: every frame published after it has a higher seq and is
        already on its way here.
        """
        deadline = time.monotonic() + timeout
        token, hello = hello_topic()
        self.sock.setsockopt(zmq.SUBSCRIBE, hello)
        try:
            pause = 0.001
            while not request(control, "hello", timeout=max(0.1, deadline - time.monotonic()),
                              curve=self.curve, token=token)["live"]:
                if time.monotonic() >= deadline:
                    raise ControlError(f"subscription not live within {timeout:g} s")
                self._buffer(min(deadline, time.monotonic() + pause))
                pause = min(0.05, pause * 2)
        finally:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, hello)
        snapshot = []
        for prefix in prefixes:
            reply = request(control, "last", timeout=max(0.1, deadline - time.monotonic()), curve=self.curve,
                            prefix=prefix)
            snapshot += [unpackb(p) for p in reply["frames"]]
        self.tracker.seed(snapshot)
        return snapshot

    def _buffer(self, until: float) -> None:
        """Keep what arrives until ``until`` for later delivery."""
        while (frame := self._read(until)) is not None:
            self._pending.append(frame)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            frame = self.recv()
            if frame is not None:
                yield frame

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlError(Exception):
    pass


def request(endpoint: str, cmd: str, timeout: float = 3.0, *, curve: CurveKeys | None = None,
            **args: Any) -> dict[str, Any]:
    """One request to the parent's control socket; raises ControlError on
    timeout or on an ``{"ok": false}`` answer. ``curve`` as for ``Subscriber``."""
    try:
        keys = curve or CurveKeys.from_env()
    except CurveKeyError as exc:
        raise ControlError(str(exc)) from None
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"cmd": cmd, **args}))
        if not sock.poll(int(timeout * 1000)):
            raise ControlError(f"no answer from {endpoint} within {timeout:g} s (is feedsup running?)")
        reply = msgpack.unpackb(sock.recv())
    finally:
        sock.close(linger=0)
    return checked_reply(reply)


def checked_reply(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply


def __getattr__(name: str) -> Any:
    # feedsup.ipc.client.AsyncSubscriber, without importing asyncio for blocking consumers.
    if name == "AsyncSubscriber":
        from feedsup.ipc.aio import AsyncSubscriber
        return AsyncSubscriber
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
