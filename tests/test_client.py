from feedsup.ipc.client import SeqTracker


def test_consecutive_seqs_are_no_gap_and_first_frame_is_baseline():
    t = SeqTracker()
    assert t.observe("a", 500) is None
    assert t.observe("a", 501) is None
    assert t.gaps == []


def test_hole_is_reported_with_missed_count():
    t = SeqTracker()
    t.observe("a", 1)
    gap = t.observe("a", 5)
    assert (gap.expected, gap.got, gap.missed, gap.restart) == (2, 5, 3, False)
    assert t.missed == 3


def test_seq_going_back_is_a_parent_restart_not_a_loss():
    t = SeqTracker()
    t.observe("a", 10)
    gap = t.observe("a", 1)
    assert gap.restart and gap.missed == 0
    assert t.missed == 0


def test_a_restarted_parent_s_frames_before_the_first_one_seen_are_counted_lost():
    """A new epoch first seen at seq 4: the new parent published 1..3 before
    this subscriber was back, and PUB dropped them."""
    t = SeqTracker()
    t.observe("a", 10, epoch=7)
    gap = t.observe("a", 4, epoch=8)
    assert (gap.expected, gap.got, gap.missed, gap.restart) == (1, 4, 3, True)
    assert t.missed == 3
    assert t.observe("a", 5, epoch=8) is None


def test_topics_are_independent():
    t = SeqTracker()
    t.observe("a", 1)
    t.observe("b", 7)
    assert t.observe("a", 2) is None
    assert t.observe("b", 8) is None


def test_subscriber_recv_reports_holes_and_restarts_from_real_frames():
    """Subscriber.recv's inline seq check hands every frame over and leaves
    holes and restarts to the tracker (on_gap), whatever the topic mix."""
    import msgpack
    import zmq

    from feedsup.ipc.client import Subscriber
    from feedsup.procs import wait_for

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://client-gaps")
    gaps = []
    sub = Subscriber("inproc://client-gaps", ["a", "b", "warm"], ctx=ctx, on_gap=gaps.append)

    def send(topic: str, seq: int) -> None:
        pub.send(topic.encode(), zmq.SNDMORE)
        pub.send(msgpack.packb({"topic": topic, "seq": seq, "data": None}))

    warm = iter(range(1, 10_000))

    def subscribed() -> bool:
        send("warm", next(warm))
        return sub.recv(timeout=0.01) is not None
    try:
        assert wait_for(subscribed, 5)
        while sub.recv(timeout=0.05) is not None:    # warm-ups still queued
            pass
        for topic, seq in (("a", 1), ("a", 2), ("b", 7), ("a", 5), ("b", 8), ("a", 1)):
            send(topic, seq)
        got = [sub.recv(timeout=5) for _ in range(6)]
        assert [(f["topic"], f["seq"]) for f in got] == [("a", 1), ("a", 2), ("b", 7), ("a", 5), ("b", 8), ("a", 1)]
        assert [(g.topic, g.missed, g.restart) for g in gaps] == [("a", 2, False), ("a", 0, True)]
        assert sub.recv(timeout=0.01) is None
    finally:
        sub.close()
        pub.close(0)
        ctx.term()
