import pytest
from hypothesis import given, strategies as st

from feedsup.supervisor.budget import ConnectBudget


def test_takes_up_to_capacity_then_refuses():
    budget = ConnectBudget(3, 10.0)
    assert [budget.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.remaining(0.0) == 0


def test_token_frees_exactly_one_window_after_it_was_taken():
    budget = ConnectBudget(2, 10.0)
    assert budget.try_take(1.0) and budget.try_take(4.0)
    assert budget.next_free(5.0) == 11.0
    assert not budget.try_take(10.999)
    assert budget.remaining(11.0) == 1
    assert budget.try_take(11.0)
    assert not budget.try_take(13.0)
    assert budget.next_free(13.0) == 14.0


def test_next_free_is_now_when_tokens_remain():
    budget = ConnectBudget(2, 10.0)
    budget.try_take(0.0)
    assert budget.next_free(3.0) == 3.0
    assert budget.remaining(3.0) == 1


def test_invalid_parameters_are_rejected_saying_which():
    with pytest.raises(ValueError, match="^connect budget must allow at least one attempt$"):
        ConnectBudget(0, 10.0)
    with pytest.raises(ValueError, match="^budget window must be positive$"):
        ConnectBudget(1, 0.0)
    ConnectBudget(1, 1e-9)   # the smallest legal values
    assert ConnectBudget(1, 1.0).remaining(0.0) == 1


def test_taken_lists_the_takes_that_still_count():
    budget = ConnectBudget(5, 10.0)
    for t in (1.0, 2.0, 8.0):
        assert budget.try_take(t)
    assert budget.taken(9.0) == [1.0, 2.0, 8.0]
    assert budget.taken(11.0) == [2.0, 8.0]       # 1.0 stops counting at 11.0 exactly
    assert budget.taken(18.0) == []


def test_restore_counts_a_previous_parents_takes():
    budget = ConnectBudget(3, 10.0)
    assert budget.try_take(5.0)
    # A take in the future is a clock error: ignored. One a window old is gone.
    budget.restore([4.0, 6.0, -7.0, 99.0], now=6.0)
    assert budget.taken(6.0) == [4.0, 5.0, 6.0]
    assert budget.remaining(6.0) == 0 and not budget.try_take(6.0)
    assert budget.next_free(6.0) == 14.0
    assert budget.remaining(14.0) == 1


@given(
    capacity=st.integers(1, 8),
    window=st.floats(0.5, 20.0),
    gaps=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=200),
)
def test_no_window_ever_holds_more_than_capacity(capacity, window, gaps):
    budget = ConnectBudget(capacity, window)
    now, taken = 0.0, []
    for gap in gaps:
        now += gap
        if budget.try_take(now):
            taken.append(now)
        else:
            # Refused only when the window really is full ...
            assert sum(1 for t in taken if t + window > now) == capacity
            # ... and next_free is the moment the oldest of them expires.
            assert budget.next_free(now) > now
    for start in taken:
        assert sum(1 for t in taken if start <= t < start + window) <= capacity
