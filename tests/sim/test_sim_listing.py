"""Listings and delistings while the simulator runs (the ``list`` and
``delist`` faults): exchangeInfo follows, a new symbol's streams deliver, a
delisted symbol's streams stop and its exchangeInfo status is BREAK."""

from __future__ import annotations

import json

import pytest
import websocket
from simhelpers import collect, get, http, read_frames

from feedsup.sim.scenario import ScenarioError, load_scenario


def post_fault(sim, **body):
    reply = http("POST", sim.control_url + "/faults", data=body)
    assert reply.status == 200, reply.body
    return reply.body


def statuses(sim, path="/api/v3/exchangeInfo") -> dict[str, str]:
    return {e["symbol"]: e["status"] for e in get(sim.base_url + path).body["symbols"]}


def test_listing_appears_in_exchange_info_and_streams(sim, ws_factory):
    assert "NEWUSDT" not in statuses(sim)
    fault = post_fault(sim, kind="list", symbol="newusdt")
    assert fault["params"] == {"symbol": "NEWUSDT", "listed": True}
    assert statuses(sim)["NEWUSDT"] == "TRADING"
    assert statuses(sim, "/fapi/v1/exchangeInfo")["NEWUSDT"] == "TRADING"
    assert "NEWUSDT" in get(sim.control_url + "/state").body["symbols"]
    ws = ws_factory(sim.ws_url + "/ws/newusdt@aggTrade")
    got = collect(ws, lambda m: len(m) >= 3, timeout=10)
    assert {m["s"] for m in got} == {"NEWUSDT"}
    assert get(sim.base_url + "/api/v3/aggTrades", symbol="NEWUSDT", limit=5).status == 200
    assert post_fault(sim, kind="list", symbol="NEWUSDT")["params"]["listed"] is False   # listed already


def test_delisting_stops_streams_and_shows_break(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws/ethusdt@aggTrade")
    btc = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 2)
    fault = post_fault(sim, kind="delist", symbol="ETHUSDT")
    after = get(sim.control_url + "/state").body["sim_time"]
    assert fault["params"]["stopped"] == ["ethusdt@aggTrade"] and fault["applied_to"]
    assert statuses(sim)["ETHUSDT"] == "BREAK"
    assert get(sim.control_url + "/state").body["delisted"] == ["ETHUSDT"]
    assert statuses(sim, "/fapi/v1/exchangeInfo")["ETHUSDT"] == "BREAK"
    only = get(sim.base_url + "/api/v3/exchangeInfo", symbol="ETHUSDT").body["symbols"]
    assert [e["status"] for e in only] == ["BREAK"]
    late = [json.loads(p) for op, p in read_frames(ws, 1.0) if op == websocket.ABNF.OPCODE_TEXT]
    assert all(m["E"] <= after for m in late), "nothing generated after the delisting"
    assert get(sim.base_url + "/api/v3/aggTrades", symbol="ETHUSDT").body["code"] == -1121
    assert collect(btc, lambda m: len(m) >= 2)[-1]["s"] == "BTCUSDT", "other symbols keep trading"
    # listed again: the same market resumes, ids continue
    post_fault(sim, kind="list", symbol="ETHUSDT")
    assert statuses(sim)["ETHUSDT"] == "TRADING"
    again = ws_factory(sim.ws_url + "/ws/ethusdt@aggTrade")
    assert collect(again, lambda m: len(m) >= 1, timeout=10)[0]["s"] == "ETHUSDT"


@pytest.mark.parametrize("body", [{"kind": "list"}, {"kind": "delist", "symbol": "BTC-USDT"},
                                  {"kind": "list", "symbol": ""}])
def test_bad_listing_requests_are_refused(sim, body):
    assert http("POST", sim.control_url + "/faults", data=body).status == 400


def test_scenario_files_schedule_listings(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"at": 1, "kind": "list", "symbol": "NEWUSDT"},
                                {"at": 2, "kind": "delist", "symbol": "BTCUSDT"}]))
    assert [e["kind"] for e in load_scenario(path)] == ["list", "delist"]
    path.write_text(json.dumps([{"at": 1, "kind": "delist"}]))
    with pytest.raises(ScenarioError, match="symbol"):
        load_scenario(path)


def test_a_scheduled_listing_happens(make_sim):
    from simhelpers import wait_until

    sim = make_sim(scenario=({"at": 0, "kind": "list", "symbol": "NEWUSDT"},
                             {"at": 0, "kind": "delist", "symbol": "ETHUSDT"}))
    wait_until(lambda: statuses(sim).get("NEWUSDT") == "TRADING" and statuses(sim)["ETHUSDT"] == "BREAK",
               what="the scheduled listing and delisting")
