"""The wire contract as JSON Schema (docs/schema/frame.schema.json) cannot
drift from the code: every frame of a run with every channel, spot and USD-M,
both account streams and gap notices must validate against it (issue 13)."""

from __future__ import annotations

import os
import signal

import pytest

from harness import Collector, wait_for
from test_account_e2e import API_KEY, API_SECRET, KEY_ENV, SECRET_ENV, account_stream, order
from wire_schema import errors, invalid_frames

SPOT = ["aggTrade", "trade", "bookTicker", "miniTicker", "ticker", "kline", "depth"]
USDM = ["aggTrade", "bookTicker", "miniTicker", "ticker", "kline", "depth", "markPrice"]

GOOD = {"topic": "aggTrade.BTCUSDT", "seq": 1, "epoch": 9, "stream": "s", "recv_ns": 1, "data": {
    "symbol": "BTCUSDT", "agg_id": 5, "price": "100.5", "qty": "0.1", "first_trade_id": 1, "last_trade_id": 2,
    "time": 1, "buyer_maker": False, "event_time": 2}}


def test_the_validator_refuses_what_the_contract_forbids():
    assert errors(GOOD) == []
    assert errors({**GOOD, "data": {**GOOD["data"], "price": 100.5}}), "decimals are strings"
    assert errors({**GOOD, "data": {**GOOD["data"], "agg_id": True}}), "ids are integers, not booleans"
    assert errors({**GOOD, "topic": "nope.BTCUSDT"}), "an unknown channel"
    assert errors({k: v for k, v in GOOD.items() if k != "seq"}), "seq is required"
    assert errors({**GOOD, "data": {**GOOD["data"], "extra": 1}}), "market data has no unnamed fields"
    notice = {**GOOD, "data": None, "gap": {"from_ms": 1, "to_ms": None, "reason": "x"}}
    assert errors(notice) == []
    assert errors({**notice, "data": GOOD["data"]}), "a gap notice has data null"
    assert errors({**GOOD, "data": None}), "null data only in a gap notice"


@pytest.mark.timeout(180)
def test_every_frame_of_a_run_with_every_channel_matches_the_schema(start_sim, start_feedsup, monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.setenv(SECRET_ENV, API_SECRET)
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4, book_rate=4,
                    api_key=API_KEY, api_secret=API_SECRET)
    streams = [{"name": f"spot-{c}", "market": "spot", "channel": c, "symbols": ["BTCUSDT", "ETHUSDT"]}
               for c in SPOT]
    streams += [{"name": f"usdm-{c}", "market": "usdm", "channel": c, "symbols": ["BTCUSDT"],
                 "topic_prefix": "usdm."} for c in USDM]
    for s in streams:
        if s["channel"] == "kline":
            s["intervals"] = ["1m"]
        if s["channel"] == "depth":
            s["depth_levels"] = 5
    streams += [account_stream("spot"), account_stream("usdm")]
    fs, col = start_feedsup(sim, streams)
    expect = {f"{c}." for c in SPOT} | {f"usdm.{c}." for c in USDM} | {"account.snapshot.acct-spot",
                                                                       "account.snapshot.acct-usdm"}
    wait_for(lambda: all(col.count(p) for p in expect), 60, "a frame of every channel and both snapshots")
    fs.wait_running("acct-spot")
    fs.wait_running("acct-usdm")
    order(sim, "spot", "BUY", "0.01")
    order(sim, "usdm", "BUY", "0.01")
    events = ("account.executionReport.", "account.outboundAccountPosition.", "account.ORDER_TRADE_UPDATE.",
              "account.ACCOUNT_UPDATE.")
    wait_for(lambda: all(col.count(p) for p in events), 30, "spot and USD-M account events")
    # A gap notice: a source with no REST history dies.
    os.kill(fs.wait_running("spot-bookTicker")["pid"], signal.SIGKILL)
    wait_for(lambda: [f for f in list(col.frames) if f.get("gap") and f["topic"].startswith("bookTicker.")
                      and f["gap"]["to_ms"] is not None], 30, "a closed gap notice")
    frames = list(col.frames)
    bad = invalid_frames(frames)
    assert not bad, "\n".join(f"{f['topic']}: {e[:3]}" for f, e in bad)
    assert len({f["topic"] for f in frames}) >= len(expect) + len(events)
