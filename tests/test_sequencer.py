from hypothesis import given, strategies as st

from feedsup.supervisor.sequencer import Sequencer, is_newer

T = b"aggTrade.BTCUSDT"


def test_seq_counts_from_one_per_topic():
    s = Sequencer()
    assert [s.admit(T, i, 0, True) for i in (1, 2, 3)] == [1, 2, 3]
    assert s.admit(b"trade.BTCUSDT", 7, 0, True) == 1


def test_duplicate_and_older_ids_are_suppressed():
    s = Sequencer()
    assert s.admit(T, 10, 0, True) == 1
    assert s.admit(T, 10, 0, True) == 0
    assert s.admit(T, 9, 0, True) == 0
    assert s.admit(T, 11, 0, True) == 2
    assert s.suppressed == 2


def test_kline_updates_pass_until_the_close_then_nothing_for_that_open_time():
    s = Sequencer()
    k = b"kline.BTCUSDT.1m"
    assert s.admit(k, 60_000, 1, False) == 1
    assert s.admit(k, 60_000, 1, False) == 0          # same update twice
    assert s.admit(k, 60_000, 2, False) == 2
    assert s.admit(k, 60_000, 3, True) == 3           # the close
    assert s.admit(k, 60_000, 3, True) == 0           # the close again (other connection)
    assert s.admit(k, 60_000, 9, False) == 0          # late update after the close
    assert s.admit(k, 120_000, 4, False) == 4


def test_watermarks_report_last_final_id():
    s = Sequencer()
    s.admit(T, 42, 0, True)
    s.admit(b"kline.BTCUSDT.1m", 60_000, 5, False)
    marks = s.watermarks()
    assert marks["aggTrade.BTCUSDT"] == 42
    assert marks["kline.BTCUSDT.1m"] == 59_999


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=200))
def test_any_replay_order_delivers_each_id_at_most_once_and_increasing(ids):
    s = Sequencer()
    delivered = [i for i in ids if s.admit(T, i, 0, True)]
    assert delivered == sorted(set(delivered))
    assert len(delivered) == len(set(delivered))


def test_is_newer_final_blocks_same_major():
    assert not is_newer((5, 0, True), 5, 1, True)
    assert is_newer((5, 0, False), 5, 0, True)


# -- worker gap notices against what was delivered ---------------------------------

def test_a_gap_wholly_at_or_below_the_watermark_is_not_a_loss():
    # A rotation successor whose REST failed announces ids the old worker
    # had already delivered: consumers must not be told they lost them.
    seq = Sequencer()
    seq.admit(b"aggTrade.X", 100, 0, True)
    assert seq.trim_gap(b"aggTrade.X", {"from_id": 90, "to_id": 100, "reason": "r"}, kline=False) is None


def test_a_gap_reaching_past_the_watermark_starts_after_it():
    seq = Sequencer()
    seq.admit(b"aggTrade.X", 100, 0, True)
    gap = {"from_id": 90, "to_id": 120, "from_ms": 5, "to_ms": 9, "reason": "r"}
    assert seq.trim_gap(b"aggTrade.X", gap, kline=False) == {**gap, "from_id": 101}
    open_ended = {"from_id": 90, "to_id": None, "reason": "r"}
    assert seq.trim_gap(b"aggTrade.X", open_ended, kline=False) == {**open_ended, "from_id": 101}


def test_kline_gaps_are_judged_by_the_last_closed_kline_delivered():
    seq = Sequencer()
    seq.admit(b"kline.X.1m", 120_000, 179_999, True)          # closed: 120000 delivered in full
    assert seq.trim_gap(b"kline.X.1m", {"from_ms": 60_000, "to_ms": 120_000}, kline=True) is None
    assert seq.trim_gap(b"kline.X.1m", {"from_ms": 60_000, "to_ms": 240_000}, kline=True) == {
        "from_ms": 120_001, "to_ms": 240_000}
    seq.admit(b"kline.X.1m", 180_000, 1, False)                # open: 180000 not delivered in full
    assert seq.trim_gap(b"kline.X.1m", {"from_ms": 180_000, "to_ms": 180_000}, kline=True) == {
        "from_ms": 180_000, "to_ms": 180_000}


def test_without_a_watermark_or_bounds_a_gap_stands_as_sent():
    seq = Sequencer()
    gap = {"from_id": 1, "to_id": 2}
    assert seq.trim_gap(b"aggTrade.X", gap, kline=False) == gap
    seq.admit(b"aggTrade.X", 100, 0, True)
    assert seq.trim_gap(b"aggTrade.X", {"from_ms": 1, "to_ms": 2}, kline=False) == {"from_ms": 1, "to_ms": 2}


# -- edges pinned by mutation testing (docs/mutation.md) ----------------------------

def test_a_kline_close_is_delivered_even_with_the_event_time_of_its_last_open_update():
    # Two messages of one millisecond: the open update and the close share an
    # event time. The close is the final form of that kline and must go out.
    s = Sequencer()
    k = b"kline.BTCUSDT.1m"
    assert s.admit(k, 60_000, 5, False) == 1
    assert s.admit(k, 60_000, 5, True) == 2
    assert s.admit(k, 60_000, 5, True) == 0


def test_a_kline_gap_reaching_back_before_an_open_kline_starts_at_that_kline():
    # Only an open kline of 180000 was delivered: that kline is not delivered
    # in full, the one before it is.
    seq = Sequencer()
    seq.admit(b"kline.X.1m", 180_000, 180_500, False)
    assert seq.trim_gap(b"kline.X.1m", {"from_ms": 60_000, "to_ms": 240_000}, kline=True) == {
        "from_ms": 180_000, "to_ms": 240_000}


def test_a_gap_is_trimmed_from_the_watermark_on_and_never_widened():
    seq = Sequencer()
    seq.admit(b"aggTrade.X", 100, 0, True)
    assert seq.trim_gap(b"aggTrade.X", {"from_id": 100, "to_id": 120}, kline=False) == {"from_id": 101, "to_id": 120}
    beyond = {"from_id": 150, "to_id": 200}
    assert seq.trim_gap(b"aggTrade.X", beyond, kline=False) == beyond
