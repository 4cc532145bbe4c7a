"""The parent's state file: edges that mutation testing found unpinned
(docs/mutation.md). Where each topic's marks come from (account streams,
prefixes, dotted names), the exact bounds of a plausible mark, the kline
grid, what a corrupt file is told apart by, and saving next to the current
directory or failing half-way.
"""

from __future__ import annotations

import errno
import os
import time

import msgpack
import pytest

from feedsup.config import Config, Endpoint, Stream
from feedsup.supervisor import state as saved

SPOT = Endpoint(ws_url="wss://spot.example/ws", rest_url="https://spot.example",
                ws_api_url="wss://spot-api.example/ws-api/v3")
USDM = Endpoint(ws_url="wss://usdm.example/ws", rest_url="https://usdm.example")
T = 1_767_225_600_000     # 2026-01-01T00:00Z, a Thursday
DAY = 86_400_000


def origins(*streams: Stream) -> saved.Origins:
    return saved.Origins(Config(path="x", spot=SPOT, usdm=USDM, streams=streams))


def account(name: str, market: str = "spot") -> Stream:
    return Stream(name=name, market=market, channel="account", api_key_env="K", api_secret_env="S")


# -- where marks come from -------------------------------------------------------------

def test_account_marks_come_from_the_user_data_endpoint_of_their_market():
    o = origins(account("a"), account("f", "usdm"))
    assert o.of("account.executionReport.a") == ("spot", SPOT.ws_api_url, SPOT.rest_url)
    assert o.of("account.ORDER_TRADE_UPDATE.f") == ("usdm", USDM.ws_url, USDM.rest_url)
    assert o.channel("account.snapshot.a") == ("account", "")


def test_streams_after_an_account_stream_are_known_too():
    o = origins(account("a"), Stream(name="p", market="spot", channel="aggTrade", symbols=("BTCUSDT",)))
    assert o.of("aggTrade.BTCUSDT") == ("spot", SPOT.ws_url, SPOT.rest_url)


def test_prefixed_topics_are_known_by_their_prefix():
    o = origins(Stream(name="u", market="usdm", channel="aggTrade", symbols=("BTCUSDT",), topic_prefix="usdm."))
    assert o.of("usdm.aggTrade.BTCUSDT") == ("usdm", USDM.ws_url, USDM.rest_url)
    assert o.of("aggTrade.BTCUSDT") is None


def test_an_account_stream_name_may_hold_dots():
    o = origins(account("desk.main"))
    assert o.of("account.executionReport.desk.main") == ("spot", SPOT.ws_api_url, SPOT.rest_url)


def test_only_account_topics_belong_to_an_account_stream():
    o = origins(account("a"))
    assert o.of("trade.BTCUSDT.a") is None
    assert o.of("account.a") is None


# -- plausible marks -----------------------------------------------------------------

@pytest.mark.parametrize("mark, why", [
    ((-(1 << 63), 0, True), "negative"),
    ((-(1 << 63) - 1, 0, True), "outside int64"),
    ((0, -(1 << 63), True), "negative"),
    ((0, -(1 << 63) - 1, True), "outside int64"),
    (((1 << 63) - 1, 0, True), "beyond any Binance id"),
    (((1 << 63), 0, True), "outside int64"),
    ((5, (1 << 63), True), "outside int64"),
    ((1 << 53, 0, True), None),
    ((5, (1 << 63) - 1, True), None),
    ((0, 0, True), None),
])
def test_mark_bounds(mark, why):
    got = saved.implausible(mark, "aggTrade", "", T)
    assert (got is None) if why is None else (why in got)


@pytest.mark.parametrize("interval, t, ok", [
    ("15m", T + 15 * 60_000, True), ("15m", T + 60_000, False),
    ("3d", 3 * DAY, True), ("3d", 4 * DAY, False),
    ("1w", 4 * DAY, True), ("1w", 0, False),
    ("1M", T, True), ("1M", T + 3_600_000, False), ("1M", T + DAY, False),
    ("1x", 0, False), ("am", 0, False), ("1xm", 0, False), ("", 0, False),
])
def test_the_kline_grid(interval, t, ok):
    assert saved.on_grid(interval, t) == ok


def test_month_starts_are_judged_in_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert saved.on_grid("1M", T)          # 2025-12-31 19:00 in New York
    finally:
        monkeypatch.undo()
        time.tzset()


# -- corrupt files ------------------------------------------------------------------------

def packed(**fields) -> bytes:
    return msgpack.packb({"version": 2, "saved_at": 1.0, "marks": {}, "attempts": [], **fields})


def origin_tail() -> list[str]:
    return ["spot", SPOT.ws_url, SPOT.rest_url]


@pytest.mark.parametrize("raw, message", [
    (msgpack.packb([1, 2]), "^not a feedsup state file$"),
    (packed(version=3), "^unknown state version 3$"),
    (b"\xc1", "^unreadable state: "),
    (packed(marks={"t": 5}), "^bad mark for 't': 5$"),
    (packed(marks={"t": [1, 2]}), r"^bad mark for 't': \[1, 2\]$"),
    (packed(marks={"t": [1.0, 2, True, *origin_tail()]}), "^bad mark for 't'"),
    (packed(marks={"t": [1, 2, 1, *origin_tail()]}), "^bad mark for 't'"),
    (packed(marks={"t": [1, 2, True, "spot", "x"]}), "^bad origin of the mark for 't'$"),
    (packed(marks={"t": [1, 2, True, "spot", "x", 3]}), "^bad origin of the mark for 't'$"),
    (packed(attempts=["soon"]), "^bad time 'soon'$"),
    (packed(attempts=[True]), "^bad time True$"),
    (packed(saved_at=float("nan")), "^bad time nan$"),
])
def test_a_corrupt_file_is_told_apart(raw, message):
    with pytest.raises(saved.StateError, match=message):
        saved.decode(raw)


def test_messages_about_a_hostile_file_stay_short():
    long = "t" * 500
    for raw, cap in ((packed(marks={long: 5}), 200), (packed(marks={long: [1, 2, True, "x"]}), 200),
                     (packed(attempts=["x" * 500]), 100)):
        with pytest.raises(saved.StateError) as info:
            saved.decode(raw)
        assert len(str(info.value)) == cap


def test_an_unreadable_state_path_says_why(tmp_path):
    with pytest.raises(saved.StateError, match=f"^{tmp_path}: is a directory, not a file$"):
        saved.load(str(tmp_path))


# -- the file ---------------------------------------------------------------------------

def test_save_and_load_a_file_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    o = origins(Stream(name="p", market="spot", channel="aggTrade", symbols=("BTCUSDT",)))
    (tmp_path / ".state.tmp-stale").write_bytes(b"x")
    saved.save("state", saved.SavedState({"aggTrade.BTCUSDT": (7, 0, True)}, [], 1.0), o)
    assert saved.load("state").marks == {"aggTrade.BTCUSDT": (7, 0, True)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_failed_save_raises_its_own_error_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state"
    target.mkdir()
    (target / "keep").write_bytes(b"")     # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError) as info:
        saved.save(str(target), saved.SavedState(), origins())
    assert info.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


@pytest.mark.parametrize("code, raised", [(errno.EINVAL, False), (errno.ENOTSUP, False), (errno.EIO, True)])
def test_a_folder_fsync_the_file_system_cannot_do_is_skipped_a_failing_one_is_not(tmp_path, monkeypatch,
                                                                                  code, raised):
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(saved.os, "fsync", fsync)
    if raised:
        with pytest.raises(OSError):
            saved._fsync_folder(str(tmp_path))
    else:
        saved._fsync_folder(str(tmp_path))


def test_an_attempt_saved_right_now_is_kept():
    assert saved.to_monotonic([1000.0, 1000.5], now_wall=1000.0, now_mono=50.0) == [50.0]
