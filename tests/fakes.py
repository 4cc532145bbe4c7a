"""Stand-ins for the parent's sockets and worker processes, for tests that
drive ``Parent`` without ZeroMQ or subprocesses (one set for all of them)."""

from __future__ import annotations

import msgpack
import zmq


class FakePull:
    """The uplink PULL: hands out ``messages``, then ``zmq.Again``."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)

    def recv(self, flags: int = 0) -> bytes:
        if not self.messages:
            raise zmq.Again()
        return self.messages.pop(0)

    def getsockopt(self, option: int) -> int:
        return zmq.POLLIN if self.messages else 0


class FakePub:
    """The XPUB: keeps what is sent (and its flags); ``recv`` hands out
    queued subscription messages, then ``zmq.Again``."""

    def __init__(self, subscriptions: list[bytes] | None = None) -> None:
        self.sent: list[bytes] = []
        self.flags: list[int] = []
        self.subscriptions = list(subscriptions or [])

    def send(self, data: bytes, flags: int = 0) -> None:
        self.sent.append(data)
        self.flags.append(flags)

    def recv(self, flags: int = 0) -> bytes:
        if not self.subscriptions:
            raise zmq.Again()
        return self.subscriptions.pop(0)

    def frames(self) -> list[tuple[str, dict]]:
        """(topic, payload) of every frame published."""
        return [(t.decode(), msgpack.unpackb(p)) for t, p in zip(self.sent[::2], self.sent[1::2])]

    def payloads(self) -> list[dict]:
        return [msgpack.unpackb(p) for p in self.sent[1::2]]


class FakeProcess:
    """A worker process: records the signals it is sent; ``code`` is its exit."""

    def __init__(self, stream: str, instance: int) -> None:
        self.stream, self.instance, self.pid = stream, instance, 100_000 + instance
        self.exit_report, self.exited_at, self.code = None, None, None
        self.signals: list[str] = []

    def poll(self):
        return self.code

    def kill(self) -> None:
        self.signals.append("KILL")

    def terminate(self) -> None:
        self.signals.append("TERM")
