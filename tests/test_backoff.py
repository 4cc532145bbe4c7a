import random

import pytest
from hypothesis import given, strategies as st

from feedsup.supervisor.backoff import Backoff, full_jitter_ceiling


def test_ceiling_doubles_then_caps():
    assert [full_jitter_ceiling(a, 0.5, 30.0) for a in range(9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0,
    ]


def test_ceiling_does_not_overflow_on_huge_attempts():
    assert full_jitter_ceiling(10_000, 0.5, 30.0) == 30.0


@given(
    seed=st.integers(0, 2**32),
    initial=st.floats(0.001, 10.0),
    cap=st.floats(0.001, 100.0),
    draws=st.integers(1, 80),
)
def test_every_delay_is_within_its_full_jitter_bound(seed, initial, cap, draws):
    backoff = Backoff(initial, cap, stable_after=30.0, rng=random.Random(seed))
    for attempt in range(draws):
        bound = min(cap, initial * 2**attempt)
        delay = backoff.next_delay()
        assert 0.0 <= delay <= bound
    assert backoff.attempt == draws


def test_delays_are_jittered_not_fixed():
    backoff = Backoff(1.0, 1.0, stable_after=30.0, rng=random.Random(7))
    delays = {backoff.next_delay() for _ in range(20)}
    assert len(delays) == 20


def test_delays_use_the_whole_range():
    # Full jitter draws from [0, ceiling], not [ceiling/2, ceiling].
    backoff = Backoff(30.0, 30.0, stable_after=30.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(500)]
    assert min(delays) < 3.0 and max(delays) > 27.0


def test_same_seed_same_delays():
    a = Backoff(0.5, 30.0, 30.0, random.Random(42))
    b = Backoff(0.5, 30.0, 30.0, random.Random(42))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


def test_reset_if_stable_only_after_stable_period():
    backoff = Backoff(0.5, 30.0, stable_after=30.0, rng=random.Random(0))
    for _ in range(6):
        backoff.next_delay()
    assert backoff.ceiling() == 30.0
    assert not backoff.reset_if_stable(29.9)
    assert not backoff.reset_if_stable(None)
    assert backoff.ceiling() == 30.0
    assert backoff.reset_if_stable(30.0)
    assert backoff.attempt == 0 and backoff.ceiling() == 0.5


def test_negative_delays_are_rejected():
    with pytest.raises(ValueError):
        Backoff(-1.0, 30.0, 30.0, random.Random(0))


@pytest.mark.parametrize("initial, cap", [(-0.1, 1.0), (0.1, -1.0)])
def test_negative_delays_are_refused_saying_so(initial, cap):
    with pytest.raises(ValueError, match="^backoff delays must not be negative$"):
        Backoff(initial, cap, stable_after=30.0, rng=random.Random(1))
