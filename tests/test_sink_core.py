"""The JetStream sink's pure core: ids, per-topic order, bounded buffer,
gap notices and watermark caps. No sockets, fake time."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings, strategies as st

from feedsup.ipc import frames
from feedsup.sinks.core import SinkCore, msg_id, with_source


def payload(topic: str, i: int, seq: int = 1) -> bytes:
    return frames.with_seq(frames.encode_body(topic, "s", 1_000_000 * (1000 + i), {"agg_id": i}), seq, 1)


def trade(topic: str, i: int) -> tuple:
    return (topic.encode(), i, 0, True, payload(topic, i))


def core(capacity: int = 100, inflight: int = 10) -> SinkCore:
    return SinkCore(capacity=capacity, max_inflight=inflight, source="a", boot="b0")


def test_msg_id_is_topic_and_exchange_identity():
    assert msg_id("aggTrade.BTCUSDT", 42, 0, True) == "aggTrade.BTCUSDT:42"
    # an open kline is one update of its kline: named by event time too
    assert msg_id("kline.BTCUSDT.1m", 60_000, 61_234, False) == "kline.BTCUSDT.1m:60000:61234"
    assert msg_id("kline.BTCUSDT.1m", 60_000, 119_999, True) == "kline.BTCUSDT.1m:60000"


def test_source_is_added_to_the_payload():
    out = msgpack.unpackb(with_source(payload("t", 1, seq=7), msgpack.packb("host-a")))
    assert out["source"] == "host-a" and out["seq"] == 7 and out["data"] == {"agg_id": 1}


def test_one_publish_in_flight_per_topic_in_order():
    c = core()
    c.offer([trade("x", 1), trade("x", 2), trade("y", 1)])
    first = c.take(0.0)
    assert [(e.topic, e.msg_id) for e in first] == [(b"x", "x:1"), (b"y", "y:1")]
    assert c.take(0.0) == []            # x:2 waits for x:1's ack
    c.acked_ok(first[0], duplicate=False)
    assert [e.msg_id for e in c.take(0.0)] == ["x:2"]
    assert c.acked == 1 and c.pending == 2 and c.inflight == 2


def test_failed_publish_is_resent_first_after_a_pause():
    c = core()
    c.offer([trade("x", 1), trade("x", 2)])
    (e,) = c.take(0.0)
    c.failed(e, "disconnected", now=1.0)
    assert c.take(1.2) == []            # paused: the connection is in trouble
    (again,) = c.take(1.6)
    assert again.msg_id == "x:1" and again.attempt == 2
    assert c.last_error == "disconnected"


def test_unacked_publish_expires_and_a_late_ack_is_harmless():
    c = core()
    c.offer([trade("x", 1), trade("x", 2)])
    (e,) = c.take(0.0)
    assert c.expire(4.9) == []
    assert c.expire(5.0) == [e]
    (again,) = c.take(6.0)
    c.acked_ok(again, duplicate=True)   # the first attempt had been stored
    c.acked_ok(again, duplicate=True)   # and its late ack arrives too: ignored
    assert c.acked == 1 and c.duplicates == 1
    assert [x.msg_id for x in c.take(6.0)] == ["x:2"]


def test_overflow_drops_counts_and_announces_a_gap_before_the_next_frame():
    c = core(capacity=2)
    c.offer([trade("x", i) for i in range(1, 6)])       # 3, 4, 5 dropped
    assert c.dropped == 3 and c.pending == 2
    for _ in range(2):
        (e,) = c.take(0.0)
        c.acked_ok(e, False)
    c.offer([trade("x", 6)])
    sent = []
    while c.pending:
        for e in c.take(0.0):
            sent.append(msgpack.unpackb(e.payload))
            c.acked_ok(e, False)
    notice, after = sent
    assert notice["data"] is None
    assert notice["gap"]["from_id"] == 3 and notice["gap"]["to_id"] == 5
    assert notice["gap"]["reason"].startswith("sink buffer full")
    assert (notice["gap"]["from_ms"], notice["gap"]["to_ms"]) == (1003, 1005)
    assert after["data"] == {"agg_id": 6}
    assert c.gaps == 1


def test_gap_announced_without_further_frames_once_there_is_room():
    c = core(capacity=1)
    c.offer([trade("x", 1), trade("x", 2)])
    (e,) = c.take(0.0)
    c.acked_ok(e, False)
    (notice,) = c.take(0.0)
    assert msgpack.unpackb(notice.payload)["gap"]["from_id"] == 2


def test_watermarks_never_pass_what_jetstream_acknowledged():
    c = core(capacity=3)
    marks = {"x": (5, 0, True), "y": (9, 0, True), "k": (60_000, 61_000, False)}
    c.offer([trade("y", 9)])
    (ey,) = c.take(0.0)
    c.acked_ok(ey, False)
    c.offer([trade("x", 3), trade("x", 4), trade("x", 5)])
    assert c.cap_marks(marks)["x"] == (2, 0, True)      # nothing of x acked: before 3
    (e,) = c.take(0.0)
    c.acked_ok(e, False)
    assert c.cap_marks(marks)["x"] == (3, 0, True)
    assert c.cap_marks(marks)["y"] == (9, 0, True)      # all acked: the parent's own mark
    assert c.cap_marks(marks)["k"] == (60_000, 61_000, False)
    c.offer([trade("x", 6), trade("x", 7)])             # 7 dropped (4, 5, 6 pending)
    for _ in range(3):
        (e,) = c.take(0.0)
        c.acked_ok(e, False)
    # 7 was lost and not yet announced: the mark stays before it
    assert c.cap_marks({"x": (7, 0, True)})["x"] == (6, 0, True)


def test_parent_notices_without_exchange_identity_get_unique_ids():
    c = core()
    gap = frames.with_seq(frames.encode_gap_body("b", "s", 1, 1, None, "closed"), 3, 1)
    c.offer([(b"b", None, 0, False, gap), (b"b", None, 0, False, gap)])
    ids = []
    while c.pending:
        for e in c.take(0.0):
            ids.append(e.msg_id)
            c.acked_ok(e, False)
    assert len(set(ids)) == 2 and all(":a:b0:" in i for i in ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("offer ack fail expire".split()), st.integers(0, 3)), max_size=120),
       st.integers(1, 6))
def test_every_topic_acked_in_offer_order_exactly_once(script, capacity):
    c = core(capacity=capacity, inflight=2)
    next_id = {t: 1 for t in "abcd"}
    inflight: list = []
    stored: dict[bytes, list] = {}
    now = 0.0
    for op, n in script:
        now += 1.0
        if op == "offer":
            t = "abcd"[n]
            c.offer([trade(t, next_id[t])])
            next_id[t] += 1
        elif op in ("ack", "fail") and inflight:
            e = inflight.pop(n % len(inflight))
            if op == "ack":
                stored.setdefault(e.topic, []).append(msgpack.unpackb(e.payload))
                c.acked_ok(e, False)
            else:
                c.failed(e, "x", now)
        elif op == "expire":
            for e in c.expire(now + 10):
                inflight.remove(e)
        inflight += c.take(now)
    for topic, got in stored.items():
        ids = [f["data"]["agg_id"] if f["data"] else f["gap"]["to_id"] for f in got]
        assert ids == sorted(ids) and len(ids) == len(set(ids))
        # every id offered is either stored or inside an announced gap, in order
        covered = []
        for f in got:
            covered += [f["data"]["agg_id"]] if f["data"] else list(range(f["gap"]["from_id"], f["gap"]["to_id"] + 1))
        assert covered == list(range(1, len(covered) + 1))


def test_cap_never_raises_a_mark():
    c = core()
    c.offer([trade("x", 50)])
    # the saved marks are one save behind: older than the sink's hold
    assert c.cap_marks({"x": (40, 0, True)}) == {"x": (40, 0, True)}
    assert c.cap_marks({"x": (50, 0, True)}) == {"x": (49, 0, True)}


def test_transient_failure_retries_only_that_topic_soon():
    c = core()
    c.offer([trade("x", 1), trade("y", 1), trade("y", 2)])
    ex, ey = c.take(0.0)
    c.failed(ex, "in process", now=1.0, transient=True)
    c.acked_ok(ey, False)
    assert [e.msg_id for e in c.take(1.0)] == ["y:2"]     # no global pause
    assert [e.msg_id for e in c.take(1.05)] == ["x:1"]
    assert c.failures == 0


def test_key_of_inverts_msg_id():
    from feedsup.sinks.core import key_of
    for key in [(42, 0, True), (60_000, 61_234, False)]:
        assert key_of("kline.X.1m", msg_id("kline.X.1m", *key)) == key
    assert key_of("aggTrade.X", "aggTrade.X:gap:a:b0:3") is None
    assert key_of("aggTrade.X", "aggTrade.XY:5") is None


def test_frames_lost_before_the_buffer_are_announced_like_overflow():
    from feedsup.sinks.nats import summarise

    c = core()
    c.offer([trade("x", 1)])
    c.offer_lost(summarise([trade("x", i) for i in range(2, 7)] + [trade("y", 1)]))
    assert c.dropped == 6
    c.offer([trade("x", 7)])
    sent = []
    while c.pending:
        for e in c.take(0.0):
            sent.append((e.topic, msgpack.unpackb(e.payload)))
            c.acked_ok(e, False)
    x = [(f["data"] or {}).get("agg_id") or (f["gap"]["from_id"], f["gap"]["to_id"]) for t, f in sent if t == b"x"]
    assert x == [1, (2, 6), 7]
    assert [f["gap"]["from_id"] for t, f in sent if t == b"y"] == [1]


def test_cold_start_first_publish_expects_an_empty_subject_then_is_normal():
    c = core()
    c.set_fresh([b"x"])
    c.offer([trade("x", 5), trade("x", 6)])
    (e,) = c.take(0.0)
    assert e.expect_empty
    c.acked_ok(e, False)                       # we were first: from now on as usual
    (e,) = c.take(0.0)
    assert not e.expect_empty and e.msg_id == "x:6"


def test_losing_the_cold_start_race_follows_the_partner():
    c = core()
    c.set_fresh([b"x"])
    c.offer([trade("x", i) for i in range(10, 14)])
    (e,) = c.take(0.0)
    c.lost_race(e, now=1.0)                    # the partner stored x first
    c.offer([trade("x", 14)])
    assert c.take(1.0) == []                   # held, even for new frames
    c.partner_at(b"x", (11, 0, True), now=1.2)  # partner stored up to 11: our 10, 11 are duplicates
    assert c.pending == 3 and c.duplicates == 2 and c.take(1.2) == []
    c.partner_at(b"x", (12, 0, True), now=1.5)
    c.partner_at(b"x", (12, 0, True), now=3.4)  # partner not moving for 1.9 s: still following
    assert c.take(3.4) == []
    c.partner_at(b"x", (12, 0, True), now=3.6)  # 2.1 s: it is gone; we carry on from 13
    assert [x.msg_id for x in c.take(3.6)] == ["x:13"]
    assert c.cap_marks({"x": (14, 0, True)}) == {"x": (12, 0, True)}


def test_partner_ahead_of_everything_we_hold_keeps_us_standing_by():
    c = core()
    c.set_fresh([b"x"])
    c.offer([trade("x", 1)])
    (e,) = c.take(0.0)
    c.lost_race(e, now=0.0)
    for t in range(1, 30):                      # the partner stays ahead; we never store
        c.offer([trade("x", t + 1)])
        c.partner_at(b"x", (t + 5, 0, True), now=t * 0.5)
        assert c.take(t * 0.5) == []
    assert c.pending == 0 and c.duplicates == 30
