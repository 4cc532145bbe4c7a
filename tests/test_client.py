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


def test_topics_are_independent():
    t = SeqTracker()
    t.observe("a", 1)
    t.observe("b", 7)
    assert t.observe("a", 2) is None
    assert t.observe("b", 8) is None
