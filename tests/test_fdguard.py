"""The pure decision of when TCP endpoints stop and resume accepting
(feedsup/supervisor/fdguard.py), with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedsup.supervisor.fdguard import (
    CALM_S, MAX_HOLD_S, MIN_HOLD_S, Change, FdGuard, Marks, marks, needed, quiet_rate, reason,
)

R, A = Change.REFUSE, Change.ACCEPT


@pytest.mark.parametrize("limit, streams, expected", [
    # 66 kept free for one stream, plus an eighth of the limit for the accepts
    # libzmq makes before the loop reacts (at least 16).
    (256, 1, Marks(high=256 - 66 - 32, low=158 - 19)),
    (256, 10, Marks(high=256 - 102 - 32, low=122 - 15)),
    (1024, 1, Marks(high=1024 - 66 - 128, low=830 - 103)),
    (65536, 100, Marks(high=65536 - 462 - 8192, low=56882 - 7110)),
    (100, 1, Marks(high=100 - 66 - 16, low=18 - 8)),
    (64, 1, Marks(high=64 - 66 - 16, low=-18 - 8)),     # too low for feedsup: refuse for good
])
def test_marks_keep_feedsups_own_descriptors_free(limit, streams, expected):
    assert marks(limit, streams) == expected


def test_more_streams_keep_more_free():
    assert needed(2) - needed(1) == 4       # two workers (rotation) x (uplink + slack)
    assert marks(256, 2).high < marks(256, 1).high


# (open fds, now) fed in turn at limit 256, one stream (high 158, low 139),
# and the change expected after each.
CASES = {
    "below the high mark nothing happens": [((100, 0), None), ((157, 1), None)],
    "at the high mark it refuses": [((158, 0), R)],
    "refusing, it waits for the low mark": [((200, 0), R), ((140, 5), None), ((139, 6), A)],
    "refusing, it waits out the hold": [((200, 0), R), ((20, 0.5), None), ((20, MIN_HOLD_S), A)],
    "a refusal soon after accepting holds twice as long": [
        ((200, 0), R), ((20, 1), A), ((170, 2), R), ((20, 3.9), None), ((20, 4), A),
        ((170, 5), R), ((20, 8.9), None), ((20, 9), A)],
    "after a calm period the hold is short again": [
        ((200, 0), R), ((20, 1), A), ((170, 2), R), ((20, 4), A),
        ((170, 4 + CALM_S), R), ((20, 5 + CALM_S), A)],
    "no change while refusing above the low mark": [((200, 0), R), ((250, 1), None), ((180, 100), None)],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_guard_transitions(steps):
    guard = FdGuard()
    for (open_fds, now), change in steps:
        assert guard.decide(open_fds, 256, 1, now) is change, (open_fds, now)


def test_the_hold_is_capped():
    guard, now = FdGuard(), 0.0
    for _ in range(20):
        assert guard.decide(1000, 256, 1, now) is R
        now += guard.hold
        assert guard.decide(0, 256, 1, now) is A
    assert guard.hold == MAX_HOLD_S and guard.closures == 20


def test_status_fields_say_why():
    guard = FdGuard()
    guard.decide(170, 256, 1, 0)
    assert guard.refusing and guard.closures == 1
    assert guard.reason == "170 of 256 file descriptors open; 98 are kept free for workers, control and metrics"
    guard.decide(10, 256, 1, 5)
    assert not guard.refusing and guard.reason is None and guard.closures == 1


def test_a_limit_too_low_refuses_for_good_and_says_so():
    guard = FdGuard()
    assert guard.decide(10, 64, 1, 0) is R
    assert guard.decide(0, 64, 1, 1000) is None
    assert "fd limit 64 too low" in guard.reason and "ulimit -Hn" in reason(10, 64, 1)


def test_a_failed_rebind_stays_refusing_for_another_hold_uncounted():
    guard = FdGuard()
    guard.decide(200, 256, 1, 0)
    assert guard.decide(10, 256, 1, 1) is A
    guard.retry_later(1)
    assert guard.refusing and guard.closures == 1 and "retrying" in guard.reason
    assert guard.decide(10, 256, 1, 1.5) is None
    assert guard.decide(10, 256, 1, 1 + guard.hold) is A


@given(st.integers(16, 1 << 20), st.integers(0, 300),
       st.lists(st.tuples(st.integers(0, 1 << 21), st.floats(0, 10), st.integers(0, 5000)), max_size=50))
def test_refuses_at_the_high_mark_and_never_starts_below_it(limit, streams, steps):
    """Whatever the sequence: a refusal only ever starts at or above the high
    mark, the guard is refusing after any count at or above it, and it only
    accepts again at or below the low mark."""
    guard, now = FdGuard(), 0.0
    m = marks(limit, streams)
    assert m.low < m.high
    for open_fds, dt, attempts in steps:
        now += dt
        was = guard.refusing
        change = guard.decide(open_fds, limit, streams, now, attempts)
        if change is R:
            assert not was and open_fds >= m.high
        if change is A:
            assert was and open_fds <= m.low
        if open_fds >= m.high:
            assert guard.refusing
        if not was and open_fds < m.high:
            assert not guard.refusing and change is None


def test_refused_attempts_faster_than_the_loop_can_follow_keep_the_port_closed():
    guard = FdGuard()
    assert quiet_rate(256) == 320                # 32 descriptors of overshoot, 0.1 s to react
    assert guard.decide(200, 256, 1, 0) is R
    assert guard.decide(20, 256, 1, 0.5, attempts=300) is None
    assert guard.decide(20, 256, 1, 1.0, attempts=300) is None      # 600 in the last second
    assert guard.decide(20, 256, 1, 1.6, attempts=100) is None      # 400 in the last second
    assert guard.decide(20, 256, 1, 2.1) is A                        # 100: slow enough
    assert guard.refused == 700
    # A few subscribers retrying every 100 ms do not keep it closed.
    assert guard.decide(200, 256, 1, 100) is R
    assert guard.decide(20, 256, 1, 100.5, attempts=150) is None
    assert guard.decide(20, 256, 1, 101, attempts=150) is A
