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


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError):
        ConnectBudget(0, 10.0)
    with pytest.raises(ValueError):
        ConnectBudget(1, 0.0)


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
