"""The consumer client for asyncio programs: ``Subscriber``'s frames, gaps,
catch-up and CURVE keys on pyzmq's asyncio sockets.

    from feedsup.ipc.aio import AsyncSubscriber
    async with AsyncSubscriber("tcp://127.0.0.1:7780", ["kline."]) as sub:
        await sub.catch_up("tcp://127.0.0.1:7781", ["kline."])   # optional
        async for frame in sub:
            ...

Every wait is an await: the event loop never blocks here. A handler slower
than the feed does not stall anything either: frames queue in the SUB socket
up to its ``rcvhwm``, then the parent's PUB drops them, and the next frame
that does arrive shows the hole as a counted ``Gap`` (``sub.tracker.missed``).
Decoding and the gap and catch-up rules are ``feedsup.ipc.client``'s
(``SeqTracker``), shared with the blocking client.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

import msgpack
import zmq
import zmq.asyncio

from feedsup.curve import CurveKeyError, CurveKeys
from feedsup.ipc.client import (DEFAULT_MAXMSGSIZE, DEFAULT_RCVHWM, ControlError, Gap, SubscriberBase,
                                checked_reply, hello_topic, unpackb)

__all__ = ["AsyncSubscriber", "arequest", "Gap", "ControlError"]

# recv hands the loop a turn after this many frames taken without waiting.
YIELD_EVERY = 64


class AsyncSubscriber(SubscriberBase):
    """``curve``: client keys for a parent with CURVE on, as for ``Subscriber``."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), *, ctx: zmq.asyncio.Context | None = None,
                 rcvhwm: int = DEFAULT_RCVHWM, on_gap: Callable[[Gap], None] | None = None,
                 curve: CurveKeys | None = None, maxmsgsize: int = DEFAULT_MAXMSGSIZE) -> None:
        super().__init__(ctx or zmq.asyncio.Context(), ctx is None, endpoint, topics, rcvhwm, on_gap, curve,
                         maxmsgsize)
        # The same socket without asyncio's per-call Future: a frame already
        # queued is taken with a plain non-blocking recv (never a wait).
        self._raw = zmq.Socket.shadow(self.sock.underlying)
        self._run = 0             # frames taken without yielding to the loop

    async def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, or None after ``timeout`` seconds."""
        if not self._pending and not self.tracker.skip_upto:
            # The common case, kept flat as in Subscriber.recv. A backlog
            # is served without suspending, so every YIELD_EVERY frames the
            # loop gets a turn: other tasks run even while frames flood in.
            self._run += 1
            if self._run >= YIELD_EVERY:
                self._run = 0
                await asyncio.sleep(0)
            raw = self._raw
            try:
                raw.recv(zmq.NOBLOCK)          # topic frame; the payload repeats it
            except zmq.Again:
                pass
            else:
                frame = unpackb(raw.recv())    # the rest of a multipart message is already here
                gap = self.tracker.observe(frame["topic"], frame["seq"], frame.get("epoch", 0))
                if gap is not None and self.on_gap is not None:
                    self.on_gap(gap)
                return frame
        return await self._recv_wait(timeout)

    async def _recv_wait(self, timeout: float | None) -> dict[str, Any] | None:
        """``recv`` when nothing is queued, or with catch_up's frames buffered or to skip."""
        self._run = 0
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            frame = await self._next(deadline)
            if frame is None:
                return None
            if self._admitted(frame):
                return frame

    async def _read(self, deadline: float | None) -> dict[str, Any] | None:
        """One frame off the socket; None at the deadline."""
        if deadline is not None:
            wait = max(0, int((deadline - asyncio.get_running_loop().time()) * 1000))
            if not await self.sock.poll(wait):
                return None
        # [topic, payload]: the payload repeats the topic.
        return unpackb((await self.sock.recv_multipart())[1])

    async def _next(self, deadline: float | None) -> dict[str, Any] | None:
        if self._pending:
            return self._pending.popleft()
        return await self._read(deadline)

    async def catch_up(self, control: str, prefixes: Iterable[str] = ("",),
                       timeout: float = 5.0) -> list[dict[str, Any]]:
        """Latest frame of every topic under ``prefixes``, then live without a
        hole: ``Subscriber.catch_up``'s protocol (hello until this socket's
        subscriptions are live at the PUB side, then ``last``), awaited."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        token, hello = hello_topic()
        self.sock.setsockopt(zmq.SUBSCRIBE, hello)
        try:
            pause = 0.001
            while not (await arequest(control, "hello", timeout=max(0.1, deadline - loop.time()),
                                      curve=self.curve, token=token))["live"]:
                if loop.time() >= deadline:
                    raise ControlError(f"subscription not live within {timeout:g} s")
                await self._buffer(min(deadline, loop.time() + pause))
                pause = min(0.05, pause * 2)
        finally:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, hello)
        snapshot = []
        for prefix in prefixes:
            reply = await arequest(control, "last", timeout=max(0.1, deadline - loop.time()),
                                   curve=self.curve, prefix=prefix)
            snapshot += [unpackb(p) for p in reply["frames"]]
        self.tracker.seed(snapshot)
        return snapshot

    async def _buffer(self, until: float) -> None:
        """Keep what arrives until ``until`` (loop time) for later delivery."""
        while (frame := await self._read(until)) is not None:
            self._pending.append(frame)

    def __aiter__(self) -> "AsyncSubscriber":
        return self

    async def __anext__(self) -> dict[str, Any]:
        frame = await self.recv()
        assert frame is not None          # no timeout: recv waits for a frame
        return frame

    async def __aenter__(self) -> "AsyncSubscriber":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def arequest(endpoint: str, cmd: str, timeout: float = 3.0, *, curve: CurveKeys | None = None,
                   **args: Any) -> dict[str, Any]:
    """``feedsup.ipc.client.request``, awaited: one request to the parent's
    control socket; raises ControlError on timeout or an ``{"ok": false}`` answer."""
    try:
        keys = curve or CurveKeys.from_env()
    except CurveKeyError as exc:
        raise ControlError(str(exc)) from None
    sock = zmq.asyncio.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    try:
        sock.connect(endpoint)
        await sock.send(msgpack.packb({"cmd": cmd, **args}))
        if not await sock.poll(int(timeout * 1000)):
            raise ControlError(f"no answer from {endpoint} within {timeout:g} s (is feedsup running?)")
        reply = msgpack.unpackb(await sock.recv())
    finally:
        sock.close(linger=0)
    return checked_reply(reply)
