import random

import pytest

from feedsup.config import Restart, Stream
from feedsup.supervisor import state as saved
from feedsup.supervisor.budget import ConnectBudget
from feedsup.supervisor.policy import Policy, Spawn, State
from feedsup.supervisor.sequencer import Sequencer


def test_state_round_trips_through_the_file(tmp_path):
    path = str(tmp_path / "state")
    s = saved.SavedState({"aggTrade.BTCUSDT": (42, 0, True), "kline.BTCUSDT.1m": (60_000, 7, False)},
                         [100.0, 101.5], 102.0)
    saved.save(path, s)
    assert saved.load(path) == s
    assert [p.name for p in tmp_path.iterdir()] == ["state"], "no temporary file left behind"


def test_missing_state_is_none_and_garbage_is_an_error(tmp_path):
    assert saved.load(str(tmp_path / "none")) is None
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xc1not msgpack")
    with pytest.raises(saved.StateError):
        saved.load(str(bad))


def test_wall_and_monotonic_conversion_keeps_ages():
    mono = saved.to_monotonic([990.0, 995.0], now_wall=1000.0, now_mono=50.0)
    assert mono == [40.0, 45.0]
    assert saved.to_wall(mono, now_wall=1000.0, now_mono=50.0) == [990.0, 995.0]


def test_restored_watermarks_suppress_what_consumers_already_have():
    old = Sequencer()
    for i in (1, 2, 3):
        old.admit(b"aggTrade.BTCUSDT", i, 0, True)
    new = Sequencer()
    new.restore(old.marks())
    assert new.admit(b"aggTrade.BTCUSDT", 3, 0, True) == 0
    assert new.admit(b"aggTrade.BTCUSDT", 4, 0, True) == 1       # seq starts again at 1
    assert new.watermarks()["aggTrade.BTCUSDT"] == 4


def test_budget_restore_counts_a_previous_parents_attempts():
    b = ConnectBudget(3, 300)
    b.restore([10.0, 20.0, 30.0, 500.0], now=100.0)   # a future time is ignored
    assert b.remaining(100.0) == 0
    assert b.next_free(100.0) == 310.0
    assert b.taken(100.0) == [10.0, 20.0, 30.0]


def test_a_restarted_parent_cannot_spend_the_quota_again():
    streams = [Stream(name="p", market="spot", channel="aggTrade", symbols=("BTCUSDT",))]
    restart = Restart(connect_budget=2, budget_window=300)
    policy = Policy(streams, restart, random.Random(1))
    policy.restore_connect_attempts([0.0, 1.0], now=10.0)
    actions = policy.start(10.0)
    assert not [a for a in actions if isinstance(a, Spawn)]
    assert policy.status(10.0)[0]["state"] == State.BACKOFF.name
    later = policy.tick(300.0)
    assert [a for a in later if isinstance(a, Spawn)]
