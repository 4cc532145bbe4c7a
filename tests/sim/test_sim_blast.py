"""Blast mode: synthetic trades as fast as possible, ids consecutive, nothing else mixed in."""

from __future__ import annotations

import json

import websocket
from simhelpers import collect, read_until_close


def test_blast_ids_are_consecutive_and_count_is_respected(sim, ws_factory):
    n = 20_000
    ws = ws_factory(sim.ws_url + f"/ws/btcusdt@aggTrade?blast=1&count={n}", skip_utf8_validation=True)
    ids = []
    for _ in range(n):
        event = json.loads(ws.recv_data()[1])
        assert event["e"] == "aggTrade" and event["f"] == event["l"] == event["a"]
        ids.append(event["a"])
    assert ids == list(range(1, n + 1))
    ws.settimeout(0.2)
    try:
        extra = ws.recv_data()
    except websocket.WebSocketTimeoutException:
        extra = None
    assert extra is None, "blast sent more than count"


def test_blast_combined_with_two_streams(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@aggTrade&blast=1&count=500")
    msgs = collect(ws, lambda m: len(m) >= 1000)
    trades = [m["data"]["t"] for m in msgs if m["stream"] == "btcusdt@trade"]
    aggs = [m["data"]["a"] for m in msgs if m["stream"] == "ethusdt@aggTrade"]
    assert trades == list(range(1, 501)) and aggs == list(range(1, 501))


def test_blast_option_and_faults_still_apply(make_sim, ws_factory):
    sim = make_sim(blast=True, blast_count=0)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@trade")
    assert collect(ws, lambda m: len(m) >= 2000)[-1]["t"] == 2000
    sim.inject("close", {}, code=1011)
    assert read_until_close(ws, timeout=10)[0] == 1011
