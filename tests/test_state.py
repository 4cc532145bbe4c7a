import os
import random

import msgpack
import pytest

from feedsup.config import Config, Endpoint, Restart, Stream
from feedsup.supervisor import state as saved
from feedsup.supervisor.budget import ConnectBudget
from feedsup.supervisor.policy import Policy, Spawn, State
from feedsup.supervisor.sequencer import Sequencer


def test_state_round_trips_through_the_file(tmp_path):
    path = str(tmp_path / "state")
    s = saved.SavedState({"aggTrade.BTCUSDT": (42, 0, True), "kline.BTCUSDT.1m": (60_000, 7, False)},
                         [100.0, 101.5], 102.0)
    config = Config(path="x", streams=(
        Stream(name="a", market="spot", channel="aggTrade", symbols=("BTCUSDT",)),
        Stream(name="k", market="spot", channel="kline", symbols=("BTCUSDT",), intervals=("1m",))))
    saved.save(path, s, saved.Origins(config))
    back = saved.load(path)
    assert (back.marks, back.attempts, back.saved_at) == (s.marks, s.attempts, s.saved_at)
    assert back.origins["aggTrade.BTCUSDT"] == ("spot", config.spot.ws_url, config.spot.rest_url)
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


# --- checked, durable, tied to the exchange ------------------------------------

SPOT = Endpoint(ws_url="wss://stream.binance.com:9443", rest_url="https://api.binance.com")
TESTNET = Endpoint(ws_url="wss://stream.testnet.binance.vision", rest_url="https://testnet.binance.vision")
NOW_MS = 1_767_225_600_000          # 2026-01-01T00:00:00Z


def config_with(*streams: Stream, spot: Endpoint = SPOT) -> Config:
    return Config(path="x.toml", spot=spot, streams=streams)


AGG = Stream(name="p", market="spot", channel="aggTrade", symbols=("BTCUSDT",))
KLINE = Stream(name="k", market="spot", channel="kline", symbols=("BTCUSDT",), intervals=("1m", "1w", "1M"))
ACCT = Stream(name="acct", market="spot", channel="account", api_key_env="K", api_secret_env="S")


def saved_by(config: Config, marks: dict) -> saved.SavedState:
    """What a parent with ``config`` writes, read back."""
    raw = saved.encode(saved.SavedState(marks, [], 1.0), saved.Origins(config))
    return saved.decode(raw)


def test_marks_from_the_same_exchange_are_kept():
    config = config_with(AGG, KLINE, ACCT)
    marks = {"aggTrade.BTCUSDT": (42, 0, True), "kline.BTCUSDT.1m": (NOW_MS - 60_000, 7, False),
             "kline.BTCUSDT.1w": (1_766_966_400_000, 1, True),     # Monday 2025-12-29
             "kline.BTCUSDT.1M": (1_764_547_200_000, 1, True),     # 2025-12-01
             "account.executionReport.acct": (NOW_MS - 5, (1 << 40) + 3, False)}
    kept, dropped = saved.usable_marks(saved_by(config, marks), saved.Origins(config), NOW_MS)
    assert kept == marks and dropped == []


def test_marks_of_another_exchange_are_dropped_with_the_reason():
    testnet_state = saved_by(config_with(AGG, spot=TESTNET), {"aggTrade.BTCUSDT": (10**9, 0, True)})
    kept, dropped = saved.usable_marks(testnet_state, saved.Origins(config_with(AGG)), NOW_MS)
    assert kept == {}
    assert dropped == [("aggTrade.BTCUSDT", "saved from another exchange "
                        "(wss://stream.testnet.binance.vision, https://testnet.binance.vision)")]


def test_marks_of_a_topic_whose_market_changed_are_dropped():
    spot_state = saved_by(config_with(AGG), {"aggTrade.BTCUSDT": (10**9, 0, True)})
    usdm = Stream(name="p", market="usdm", channel="aggTrade", symbols=("BTCUSDT",))
    kept, dropped = saved.usable_marks(spot_state, saved.Origins(config_with(usdm)), NOW_MS)
    assert kept == {} and dropped == [("aggTrade.BTCUSDT", "market was spot, now usdm")]


def test_marks_of_topics_no_longer_configured_are_dropped():
    state = saved_by(config_with(AGG, ACCT), {"aggTrade.BTCUSDT": (5, 0, True),
                                               "account.balanceUpdate.acct": (NOW_MS, 1, False)})
    eth = Stream(name="p", market="spot", channel="aggTrade", symbols=("ETHUSDT",))
    kept, dropped = saved.usable_marks(state, saved.Origins(config_with(eth)), NOW_MS)
    assert kept == {}
    assert sorted(dropped) == [("account.balanceUpdate.acct", "topic no longer configured"),
                               ("aggTrade.BTCUSDT", "topic no longer configured")]


@pytest.mark.parametrize("topic, mark, reason", [
    ("aggTrade.BTCUSDT", (2**62, 0, True), "beyond any Binance id or time"),
    ("aggTrade.BTCUSDT", (2**63 + 5, 0, True), "outside int64"),
    ("aggTrade.BTCUSDT", (-1, 0, True), "negative"),
    ("aggTrade.BTCUSDT", (5, -3, True), "negative"),
    ("kline.BTCUSDT.1m", (NOW_MS + 1, 0, True), "not on the 1m grid"),
    ("kline.BTCUSDT.1w", (NOW_MS, 0, True), "not on the 1w grid"),             # a Thursday
    ("kline.BTCUSDT.1M", (NOW_MS + 86_400_000, 0, True), "not on the 1M grid"),
    ("kline.BTCUSDT.1m", (NOW_MS + 7 * 86_400_000, 0, True), "in the future"),
    ("account.executionReport.acct", (NOW_MS + 7 * 86_400_000, 0, False), "in the future"),
])
def test_implausible_marks_are_refused(topic, mark, reason):
    config = config_with(AGG, KLINE, ACCT)
    state = saved_by(config, {})
    state.marks[topic] = mark
    state.origins[topic] = saved.Origins(config).of(topic)
    kept, dropped = saved.usable_marks(state, saved.Origins(config), NOW_MS)
    assert kept == {}
    assert len(dropped) == 1 and dropped[0][0] == topic and reason in dropped[0][1], dropped


def test_a_float_mark_like_2_pow_70_makes_the_file_unreadable(tmp_path):
    raw = msgpack.packb({"version": saved.VERSION, "saved_at": 1.0, "attempts": [],
                         "marks": {"aggTrade.BTCUSDT": [float(2**70), 0, True, "spot", "x"]}})
    with pytest.raises(saved.StateError, match="mark"):
        saved.decode(raw)


def test_version_1_marks_carry_no_exchange_and_are_dropped():
    raw = msgpack.packb({"version": 1, "saved_at": 1.0, "attempts": [100.0],
                         "marks": {"aggTrade.BTCUSDT": [42, 0, True]}})
    state = saved.decode(raw)
    kept, dropped = saved.usable_marks(state, saved.Origins(config_with(AGG)), NOW_MS)
    assert kept == {} and dropped == [("aggTrade.BTCUSDT", "saved without its exchange (older feedsup)")]
    assert state.attempts == [100.0]


def test_save_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "state"
    saved.save(str(path), saved.SavedState({}, [], 1.0), saved.Origins(config_with(AGG)))
    assert len(synced) == 2
    assert synced[0].startswith(str(tmp_path / ".state.tmp-"))   # the data, before the rename
    assert synced[1] == str(tmp_path)                           # the rename itself


def test_load_removes_temporary_files_of_a_killed_save(tmp_path):
    path = tmp_path / "state"
    saved.save(str(path), saved.SavedState({}, [], 1.0), saved.Origins(config_with(AGG)))
    (tmp_path / ".state.tmp-k1ll3d").write_bytes(b"half")
    (tmp_path / ".other.tmp-keep").write_bytes(b"not ours")
    assert saved.load(str(path)) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep", "state"]


def test_a_fifo_state_file_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "state"
    os.mkfifo(fifo)
    with pytest.raises(saved.StateError, match="not a regular file"):
        saved.load(str(fifo))


def test_dev_zero_is_an_error_not_a_memory_error():
    with pytest.raises(saved.StateError, match="not a regular file"):
        saved.load("/dev/zero")


def test_an_oversized_state_file_is_an_error(tmp_path):
    path = tmp_path / "state"
    with open(path, "wb") as f:
        f.truncate(saved.MAX_STATE_BYTES + 1)
    with pytest.raises(saved.StateError, match="larger than"):
        saved.load(str(path))
