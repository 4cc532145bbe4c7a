"""The demo's verdict: the pure helpers that say "exactly once", and the
verdict that turns what the demo's consumer kept into problems (a demo
whose verdict cannot fail proves nothing)."""

from __future__ import annotations

import threading
import types

import pytest

from feedsup.tools import demo


@pytest.mark.parametrize("ids, holes", [
    ([], []),
    ([5], []),
    ([1, 2, 3], []),
    ([3, 1, 2], []),
    ([1, 1, 2], []),
    ([1, 3], [(2, 2)]),
    ([1, 5, 6, 9], [(2, 4), (7, 8)]),
    ([9, 1], [(2, 8)]),
])
def test_id_holes(ids, holes):
    assert demo.id_holes(ids) == holes


@pytest.mark.parametrize("opens, holes", [
    ([], []),
    ([0, 1000, 2000], []),
    ([2000, 0, 1000, 1000], []),
    ([0, 2000], [(1000, 1000)]),
    ([0, 4000, 5000], [(1000, 3000)]),
])
def test_kline_holes(opens, holes):
    assert demo.kline_holes(opens, 1000) == holes


def test_duplicates_counts_each_extra_copy():
    assert demo.duplicates([]) == 0
    assert demo.duplicates([1, 2, 3]) == 0
    assert demo.duplicates([1, 1, 2, 2, 2]) == 3


def _judge(agg: dict, klines: list[int], gaps: list = ()) -> list[str]:
    tap = types.SimpleNamespace(lock=threading.Lock(), agg_ids=agg, closed_klines=klines, backfilled=0,
                                gap_notices=0, seq_gaps=lambda: list(gaps))
    judged = types.SimpleNamespace(tap=tap, problems=[])
    demo.Demo.verdict(judged)
    return judged.problems


def test_verdict_passes_exactly_once_data(capsys):
    agg = {t: [10, 11, 12] for t in demo.PRICE_TOPICS}
    assert _judge(agg, [0, 1000, 2000]) == []
    assert "consecutive" in capsys.readouterr().out


@pytest.mark.parametrize("case, agg_of_first, klines, gaps, problem", [
    ("hole", [10, 12], [0, 1000], [], "not exactly once"),
    ("duplicate", [10, 11, 11], [0, 1000], [], "not exactly once"),
    ("kline hole", [10, 11], [0, 2000], [], demo.KLINE_TOPIC),
    ("kline duplicate", [10, 11], [0, 1000, 1000], [], demo.KLINE_TOPIC),
    ("seq gap", [10, 11], [0, 1000], ["gap"], "seq gaps"),
])
def test_verdict_names_every_problem(case, agg_of_first, klines, gaps, problem, capsys):
    agg = {t: [10, 11] for t in demo.PRICE_TOPICS}
    agg[demo.PRICE_TOPICS[0]] = agg_of_first
    problems = _judge(agg, klines, gaps)
    assert len(problems) == 1 and problem in problems[0], problems
