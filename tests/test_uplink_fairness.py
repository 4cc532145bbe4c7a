"""A quiet stream's frame is not held behind another stream's backlog.

The parent reads all workers from one PULL socket, which takes turns among
the workers' pipes. But a pipe that ran empty leaves the turn, and ZeroMQ
brings it back (the I/O thread's "activate" command) only when the socket
processes commands: while messages are waiting, ``recv`` does that once per
100 messages. A blasting worker's batches hold up to 32 records, so a quiet
worker's next frame waited behind up to 3,200 records (1-6 ms measured, the
tail of ``bench/latency.py --case 5k+blast``). Real sockets here (inproc, so
every send is in the pipe when ``send`` returns); the parent's own ``_drain``.
"""

from __future__ import annotations

import zmq

from feedsup.config import Stream
from feedsup.ipc import frames
from test_mutation_kills_parent import CONN, make_parent, record, worker  # noqa: F401 (fixture)

BULK = Stream(name="bulk", market="spot", channel="aggTrade", symbols=("ETHUSDT",), connection=CONN)
LONE = Stream(name="lone", market="spot", channel="aggTrade", symbols=("BTCUSDT",), connection=CONN)
BULK_BATCHES = 300          # three times ZeroMQ's 100 messages between command checks
RECORDS_PER_BATCH = 32      # a blasting worker's full batch (frames.py's ramp ends there)


class TriggerPub:
    """The parent's PUB: keeps topics in order; after the ``at``-th record,
    the lone worker sends its frame (mid-drain, as a real worker would)."""

    def __init__(self, at: int, trigger) -> None:
        self.topics: list[bytes] = []
        self.at, self.trigger = at, trigger
        self._expect_topic = True

    def send(self, data: bytes, flags: int = 0) -> None:
        if self._expect_topic:
            self.topics.append(data)
            if len(self.topics) == self.at:
                self.trigger()
        self._expect_topic = not flags & zmq.SNDMORE

    def recv(self, flags: int = 0) -> bytes:
        raise zmq.Again()


def bulk_batches() -> list[bytes]:
    out, agg_id = [], 0
    for _ in range(BULK_BATCHES):
        records = []
        for _ in range(RECORDS_PER_BATCH):
            agg_id += 1
            records.append(record("aggTrade.ETHUSDT", agg_id, agg_id, "bulk"))
        out.append(frames.encode_batch(1, records))
    return out


def test_a_quiet_worker_s_frame_is_not_held_behind_a_blasting_worker_s_backlog(make_parent):
    parent = make_parent(BULK, LONE)
    worker(parent, 1, "bulk")
    worker(parent, 2, "lone")
    ctx = zmq.Context()
    pull, bulk, lone = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    try:
        for sock in (pull, bulk, lone):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM if sock is not pull else zmq.RCVHWM, 0)
        pull.bind("inproc://uplink")
        bulk.connect("inproc://uplink")
        lone.connect("inproc://uplink")
        # The lone worker's first frame, read alone: its pipe then runs empty
        # and leaves the socket's turn, as between any two of its frames.
        lone.send(frames.encode_batch(2, [record("aggTrade.BTCUSDT", 1, 1, "lone")]))
        parent._drain(pull, parent.pub)
        assert [t for t, _ in parent.pub.frames()] == ["aggTrade.BTCUSDT"]

        for message in bulk_batches():
            bulk.send(message)
        sent_after = RECORDS_PER_BATCH + 1          # mid-drain, after the first bulk batch
        pub = TriggerPub(sent_after, lambda: lone.send(
            frames.encode_batch(2, [record("aggTrade.BTCUSDT", 2, 2, "lone")])))
        while len(pub.topics) < BULK_BATCHES * RECORDS_PER_BATCH + 1:
            before = len(pub.topics)
            parent._drain(pull, pub)
            assert len(pub.topics) > before, "the drain stalled"
        published_at = pub.topics.index(b"aggTrade.BTCUSDT")
        behind = published_at - sent_after
        # It waits for the batch being read and, at most, the records the
        # parent handles between two looks at its socket's commands.
        bound = 2 * RECORDS_PER_BATCH + 64       # about 0.1 ms of the parent's work
        assert behind <= bound, f"the quiet worker's frame waited behind {behind} bulk records"
    finally:
        for sock in (pull, bulk, lone):
            sock.close(linger=0)
        ctx.term()

