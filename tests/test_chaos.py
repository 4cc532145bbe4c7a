"""Issue 4's chaos run, short version (the long one: bench/chaos.py)."""

from __future__ import annotations

from feedsup.tools.chaos import (BREAKING, CATALOGUE, ChaosOptions, ChaosRun, OutageOptions, OutageRun,
                                 first_after)


def test_every_fault_kind_loses_and_duplicates_nothing(tmp_path, timing, capsys):
    faults = len(CATALOGUE)
    run = ChaosRun(ChaosOptions(sim_minutes=12, faults=faults, speed=120, seed=11), tmp_path)
    report = run.run()
    with capsys.disabled():
        print("\n" + report.summary())
    for rec in report.faults:
        if rec.recovery is not None:
            timing(f"chaos: {rec.kind} on {rec.stream} -> fresh live data", rec.recovery)
    assert report.problems == []
    assert {f.kind for f in report.faults} == set(CATALOGUE)
    assert {"halt", "rest_lag", "outage"} <= set(CATALOGUE)
    assert len(report.recovery_times()) == sum(1 for f in report.faults if f.kind in BREAKING)
    assert report.sim_minutes >= 12
    for symbol in run.o.symbols:
        assert report.klines[symbol] >= 10
        assert report.trades[symbol] > 1000
    assert report.backfilled > 0, "the outages must have been bridged by REST backfill"


class _FakeTruth(ChaosRun):
    """The verifier against a fixed REST truth, without processes."""

    def __init__(self, tmp_path, trades, klines):
        super().__init__(ChaosOptions(symbols=("BTCUSDT",)), tmp_path)
        self._trades, self._klines = trades, klines

    def _rest(self, path, **params):
        if path.endswith("aggTrades"):
            return [t for t in self._trades if t["a"] >= params["fromId"]][: params["limit"]]
        return [k for k in self._klines if params["startTime"] <= k[0] <= params["endTime"]]


TRUTH_TRADES = [{"a": i, "p": "1.0", "q": "2.0"} for i in range(1, 6)]
TRUTH_KLINES = [[t, "1", "2", "0.5", "1.5", "10", t + 59_999, "15", 3, "4", "6", "0"] for t in (0, 60_000, 120_000)]


def _trade(i, **extra):
    return {"topic": "aggTrade.BTCUSDT", "data": {"agg_id": i, "price": "1.0", "qty": "2.0"}, **extra}


def _kline(t, close="1.5", trades=3):
    return {"topic": "kline.BTCUSDT.1m", "data": {"open_time": t, "open": "1", "high": "2", "low": "0.5",
                                                   "close": close, "volume": "10", "closed": True,
                                                   "close_time": t + 59_999, "quote_volume": "15",
                                                   "trades": trades, "taker_buy_volume": "4",
                                                   "taker_buy_quote_volume": "6"}}


def _verify(tmp_path, frames):
    run = _FakeTruth(tmp_path, TRUTH_TRADES, TRUTH_KLINES)
    run.verify(frames)
    return run.report.problems


def test_verifier_accepts_complete_data(tmp_path):
    assert _verify(tmp_path, [_trade(i) for i in range(1, 6)] + [_kline(t) for t in (0, 60_000, 120_000)]) == []


def test_verifier_flags_a_silent_hole_but_not_an_announced_one(tmp_path):
    klines = [_kline(t) for t in (0, 60_000, 120_000)]
    silent = [_trade(i) for i in (1, 2, 4, 5)] + klines
    assert any("without a gap notice" in p for p in _verify(tmp_path, silent))
    gap = {"topic": "aggTrade.BTCUSDT", "data": None, "gap": {"from_id": 3, "to_id": 3}}
    assert _verify(tmp_path, silent + [gap]) == []


def test_verifier_flags_duplicates_and_wrong_values(tmp_path):
    klines = [_kline(t) for t in (0, 60_000, 120_000)]
    dup = [_trade(i) for i in (1, 2, 2, 3, 4, 5)] + klines
    assert any("duplicated" in p for p in _verify(tmp_path, dup))
    wrong = [_trade(i) for i in range(1, 6)] + [_kline(0), _kline(60_000, close="9"), _kline(120_000)]
    assert any("differ from REST" in p for p in _verify(tmp_path, wrong))
    # a kline published with REST's not-yet-final values (fewer trades) is wrong too
    stale = [_trade(i) for i in range(1, 6)] + [_kline(0), _kline(60_000, trades=2), _kline(120_000)]
    assert any("differ from REST" in p for p in _verify(tmp_path, stale))


def test_verifier_accepts_a_halted_span_without_klines(tmp_path):
    run = _FakeTruth(tmp_path, TRUTH_TRADES, [TRUTH_KLINES[0], TRUTH_KLINES[2]])   # no kline at 60 000
    run.verify([_trade(i) for i in range(1, 6)] + [_kline(0), _kline(120_000)])
    assert run.report.problems == []


class _ArrivingFrames:
    """The consumer thread's frame list as the checker sees it: each read
    may find a frame that arrived since the previous one (None: none did)."""

    def __init__(self, arrivals):
        self._arrivals = list(arrivals)
        self._seen = []

    @property
    def frames(self):
        arrived = self._arrivals.pop(0) if self._arrivals else None
        if arrived is not None:
            self._seen.append(arrived)
        return self._seen


def test_a_frame_arriving_mid_check_marks_a_stream_both_resumed_and_live(tmp_path):
    run = OutageRun(OutageOptions(outage_s=1, backoff_max=0), tmp_path)
    run.names = ["depth"]
    run.status = lambda: {}
    run.consumer = _ArrivingFrames([
        {"_t": 1.0, "topic": "depth.BTCUSDT", "data": {"u": 1}},    # before the outage's end
        None,
        {"_t": 6.0, "topic": "depth.BTCUSDT", "data": {"u": 2}},    # lands between two reads
    ])
    run._await_resumed(end=5.0)
    assert run.report.problems == []
    assert run.report.resumed == {"depth": 1.0} and run.report.live == {"depth": 1.0}


def test_first_after_reports_backfill_as_data_but_not_as_live():
    frames = [{"_t": 1.0, "topic": "kline.X.1m", "data": {}},
              {"_t": 2.0, "topic": "kline.X.1m", "data": {}, "backfill": True},
              {"_t": 3.0, "topic": "kline.Y.1m", "data": {}},
              {"_t": 4.0, "topic": "kline.X.1m", "data": None, "gap": {}},
              {"_t": 5.0, "topic": "kline.X.1m", "data": {}}]
    assert first_after(frames, ("kline.X.",), since=1.0) == (2.0, 5.0)
    assert first_after(frames, ("kline.X.",), since=5.0) == (None, None)
    assert first_after(frames[:4], ("kline.X.",), since=1.0) == (2.0, None)


def test_an_exchange_wide_outage_across_eight_streams_leaves_none_fatal_and_loses_nothing(tmp_path, timing, capsys):
    # The long form: python bench/outage.py (90 s, backoff_max 10).
    run = OutageRun(OutageOptions(outage_s=20, backoff_max=2, intensity=5), tmp_path)
    report = run.run()
    with capsys.disabled():
        print("\n" + report.summary())
    for name, seconds in sorted(report.resumed.items()):
        timing(f"outage end -> {name} delivering (backoff_max 2 s)", seconds)
    assert report.streams == 8
    assert report.fatal == []
    assert report.problems == []
    assert set(report.resumed) == set(report.live) == set(run.names)
    for symbol in run.o.symbols:
        assert report.klines[symbol] >= 10 and report.trades[symbol] > 1000
    assert report.backfilled > 0, "the outage must have been bridged by REST backfill"
