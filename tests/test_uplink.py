"""Worker -> parent uplink: batching without holding anything back."""

import msgpack
import pytest
import zmq

from feedsup.ipc import frames
from feedsup.workers.uplink import MAX_BATCH, OWED_RETRY_S, Losses, Uplink, flush_before_block


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
    return frames.encode_data(b"aggTrade.BTCUSDT", i, 0, True, frames.encode_body("aggTrade.BTCUSDT", "s", i,
                                                                     {"i": i, "agg_id": i, "time": 1000 + i}))


def _batch_sizes(pull) -> list[int]:
    sizes = []
    while pull.poll(50):
        sizes.append(len(list(frames.iter_records(pull.recv()))))
    return sizes


def test_a_burst_first_record_goes_at_once_then_batches_double(pair):
    # The first record of a burst does not wait for the ones behind it (the
    # parent and the consumer start on it while the worker parses on);
    # batches then double, so a long burst still travels MAX_BATCH at a time.
    up, pull = pair
    up.send(record(0))
    assert _batch_sizes(pull) == [1]
    ramp = [2 ** k for k in range(1, MAX_BATCH.bit_length()) if 2 ** k < MAX_BATCH]
    for i in range(sum(ramp) + 2 * MAX_BATCH):
        up.send(record(i))
    assert _batch_sizes(pull) == ramp + [MAX_BATCH, MAX_BATCH]


def test_records_wait_for_flush_then_travel_as_one_message(pair):
    up, pull = pair
    for i in range(3):                  # the ramp: 1, then 2; the next batch holds 4
        up.send(record(i))
    assert _batch_sizes(pull) == [1, 2]
    for i in range(3, 6):
        up.send(record(i))
    assert not pull.poll(50)
    up.flush()
    got = list(frames.iter_records(pull.recv()))
    assert [r[2] for r in got] == [3, 4, 5]
    assert [msgpack.unpackb(r[5])["data"]["i"] for r in got] == [3, 4, 5]


def test_the_reader_catching_up_rearms_the_ramp_a_backlog_does_not(pair):
    up, pull = pair
    for i in range(7):                  # 1, 2, 4: the next batch would hold 8
        up.send(record(i))
    assert _batch_sizes(pull) == [1, 2, 4]
    flush_before_block(up, lambda timeout: True)     # more is waiting on the socket: keep batching
    up.send(record(7))
    assert _batch_sizes(pull) == []
    flush_before_block(up, lambda timeout: False)    # caught up: flush, and the next burst starts at 1
    assert _batch_sizes(pull) == [1]
    up.send(record(8))
    assert _batch_sizes(pull) == [1]


def test_control_message_flushes_pending_records_first(pair):
    up, pull = pair
    up.send(record(1))
    up.control(frames.Control.READY, stream="s", instance=1)
    first, second = pull.recv(), pull.recv()
    assert first[0] == frames.BATCH
    assert frames.decode_control(second)["type"] == "ready"


def test_a_full_batch_is_sent_without_waiting(pair):
    up, pull = pair
    for i in range(2 * MAX_BATCH):      # the ramp, then full batches
        up.send(record(i))
    assert MAX_BATCH in _batch_sizes(pull)


def test_gap_records_mix_with_data_records(pair):
    up, pull = pair
    up.send(record(0))                  # a burst's first record goes alone
    pull.recv()
    up.send(record(1))
    up.send(frames.encode_gap(b"aggTrade.BTCUSDT", frames.encode_gap_body("aggTrade.BTCUSDT", "s", 1, 5, 9, "lost")))
    up.flush()
    kinds = [r[0] for r in frames.iter_records(pull.recv())]
    assert kinds == [frames.DATA, frames.GAP]


# -- sender identity, bounded queue, and every drop reported as a gap ----------

def test_every_batch_names_the_sending_instance():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://named")
    up = Uplink(ctx, "inproc://named", instance=7)
    try:
        up.send(record(1))
        up.flush()
        instance, records = frames.split_batch(pull.recv())
        assert instance == 7 and [r[2] for r in frames.iter_records(records)] == [1]
    finally:
        up.sock.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_control_messages_carry_the_protocol_version(pair):
    up, pull = pair
    up.control(frames.Control.READY, stream="s", instance=1)
    msg = frames.decode_control(pull.recv())
    assert msg["v"] == frames.PROTOCOL_VERSION and frames.check_control(msg) is None


def _ids_and_gaps(messages: list[bytes]) -> tuple[list[int], list[dict]]:
    ids, gaps = [], []
    for message in messages:
        for kind, _topic, major, _mi, _fi, body in frames.iter_records(message):
            if kind == frames.DATA:
                ids.append(major)
            else:
                gaps.append({**msgpack.unpackb(body)["gap"], "_after": len(ids)})
    return ids, gaps


def test_drops_while_the_parent_is_slow_become_a_gap_record_covering_exactly_the_dropped_ids():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.bind("inproc://slow")
    up = Uplink(ctx, "inproc://slow", instance=1, hwm=1)
    got: list[bytes] = []
    try:
        next_id = 1
        for _ in range(20):                 # nobody reads: the queue fills, batches drop
            up.send(record(next_id))
            up.flush()
            next_id += 1
        assert up.drops > 0
        dropped = up.drops

        def drain_then_send():
            nonlocal next_id
            while pull.poll(0):
                got.append(pull.recv())
            up.send(record(next_id))
            up.flush()
            next_id += 1
            while pull.poll(10):
                got.append(pull.recv())
            return _ids_and_gaps(got)[1]

        from feedsup.procs import wait_for
        wait_for(drain_then_send, 5, "a gap record once the queue drains")
        for _ in range(5):
            drain_then_send()
        ids, gaps = _ids_and_gaps(got)
        assert up.drops >= dropped
        covered = [i for g in gaps for i in range(g["from_id"], g["to_id"] + 1)]
        assert sorted(ids + covered) == list(range(1, next_id)), "every id delivered or announced, once"
        assert sum(g["lost"] for g in gaps) == len(covered) == up.drops
        for g in gaps:
            assert g["reason"].startswith("uplink full")
            assert all(i < g["from_id"] for i in ids[:g["_after"]])
            assert all(i > g["to_id"] for i in ids[g["_after"]:]), "the notice comes before later frames"
            assert g["from_ms"] is not None and g["to_ms"] >= g["from_ms"]
    finally:
        up.sock.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_a_dropped_gap_record_is_sent_again():
    losses = Losses()
    gap = frames.encode_gap(b"bookTicker.BTCUSDT",
                            frames.encode_gap_body("bookTicker.BTCUSDT", "s", 1, 5, None, "lost"))
    losses.add(gap)
    assert losses.owed and losses.records(0) == [gap]
    losses.clear()
    assert not losses.owed and losses.records(0) == []


def test_losses_keep_one_span_per_topic():
    losses = Losses()
    for i in (5, 6, 7):
        losses.add(record(i))
    losses.add(frames.encode_data(b"kline.BTCUSDT.1m", 60_000, 61_000, False,
                                  frames.encode_body("kline.BTCUSDT.1m", "k", 2_000_000,
                                                     {"open_time": 60_000, "closed": False})))
    spans = {t: msgpack.unpackb(b)["gap"] for _k, t, _a, _b, _c, b in
             frames.iter_records(b"".join(losses.records(123)))}
    assert spans[b"aggTrade.BTCUSDT"]["from_id"] == 5 and spans[b"aggTrade.BTCUSDT"]["to_id"] == 7
    assert spans[b"aggTrade.BTCUSDT"]["lost"] == 3
    kline = spans[b"kline.BTCUSDT.1m"]
    assert (kline["from_ms"], kline["to_ms"], kline["lost"]) == (60_000, 60_000, 1) and "from_id" not in kline


def test_a_batch_over_the_message_cap_goes_record_by_record(pair, monkeypatch):
    up, pull = pair
    monkeypatch.setattr(frames, "MAX_MESSAGE", 600)
    for i in range(4):
        up.send(frames.encode_data(b"aggTrade.BTCUSDT", i, 0, True,
                                   frames.encode_body("aggTrade.BTCUSDT", "s", i, {"agg_id": i, "pad": "x" * 200})))
    up.flush()
    sizes = []
    while pull.poll(100):
        message = pull.recv()
        sizes.append(len(message))
    assert len(sizes) == 4 and max(sizes) <= 600


# -- owed gap notices on a quiet stream ------------------------------------------------

class _OwingUplink:
    """Owes gap notices until its flush has been called ``room_after`` times."""

    def __init__(self, room_after: int) -> None:
        self.flushes, self.room_after = 0, room_after

    @property
    def owes(self) -> bool:
        return self.flushes < self.room_after

    def flush(self) -> None:
        self.flushes += 1

    def rearm(self) -> None:
        pass


def test_owed_gap_notices_are_retried_while_the_network_is_quiet():
    # After a burst the parent fell behind on, the last drops are announced
    # only by a later flush; on a stream that then goes quiet the reader
    # would block on the socket with the notice still owed.
    up = _OwingUplink(room_after=4)
    waits = []
    flush_before_block(up, lambda timeout: waits.append(timeout) or False)
    assert up.flushes == 4 and not up.owes
    assert waits == [0] + [OWED_RETRY_S] * 3      # one look for a backlog, then the retries


def test_data_arriving_ends_the_wait_the_next_flush_retries():
    up = _OwingUplink(room_after=100)
    flush_before_block(up, lambda timeout: True)
    assert up.flushes == 1 and up.owes
