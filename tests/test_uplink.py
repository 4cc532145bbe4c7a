"""Worker -> parent uplink: batching without holding anything back."""

import msgpack
import pytest
import zmq

from feedsup.ipc import frames
from feedsup.workers.uplink import MAX_BATCH, Uplink


@pytest.fixture
def pair():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://uplink")
    up = Uplink(ctx, "inproc://uplink")
    try:
        yield up, pull
    finally:
        up.sock.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def record(i: int) -> bytes:
    return frames.encode_data(b"aggTrade.BTCUSDT", i, 0, True, frames.encode_body("aggTrade.BTCUSDT", "s", i, {"i": i}))


def test_records_wait_for_flush_then_travel_as_one_message(pair):
    up, pull = pair
    for i in range(3):
        up.send(record(i))
    assert not pull.poll(50)
    up.flush()
    message = pull.recv()
    got = list(frames.iter_records(message))
    assert [r[2] for r in got] == [0, 1, 2]
    assert [msgpack.unpackb(r[5])["data"]["i"] for r in got] == [0, 1, 2]


def test_control_message_flushes_pending_records_first(pair):
    up, pull = pair
    up.send(record(1))
    up.control(frames.Control.READY, stream="s", instance=1)
    first, second = pull.recv(), pull.recv()
    assert first[0] == frames.DATA
    assert frames.decode_control(second)["type"] == "ready"


def test_a_full_batch_is_sent_without_waiting(pair):
    up, pull = pair
    for i in range(MAX_BATCH):
        up.send(record(i))
    assert pull.poll(1000)
    assert len(list(frames.iter_records(pull.recv()))) == MAX_BATCH


def test_gap_records_mix_with_data_records(pair):
    up, pull = pair
    up.send(record(1))
    up.send(frames.encode_gap(b"aggTrade.BTCUSDT", frames.encode_gap_body("aggTrade.BTCUSDT", "s", 1, 5, 9, "lost")))
    up.flush()
    kinds = [r[0] for r in frames.iter_records(pull.recv())]
    assert kinds == [frames.DATA, frames.GAP]
