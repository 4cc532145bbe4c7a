"""Exchange-side faults beyond the connection: trading halts, REST lagging
the streams, exchange-wide outages (as Binance behaves; FACTS.md)."""

from __future__ import annotations

import time

import pytest
import websocket
from simhelpers import collect, get, http, wait_until


def post_fault(sim, **body):
    reply = http("POST", sim.control_url + "/faults", data=body)
    assert reply.status == 200, reply.body
    return reply.body


def sim_now(sim) -> int:
    return get(sim.control_url + "/state").body["sim_time"]


def klines(sim, interval="1s", **params):
    reply = get(sim.base_url + "/api/v3/klines", symbol="BTCUSDT", interval=interval, limit=1000, **params)
    assert reply.status == 200, reply.body
    return reply.body


def test_halt_stops_trades_and_klines_on_streams_and_rest(make_sim, ws_factory):
    sim = make_sim(speed=60.0, trade_rate=5.0, book_rate=5.0)
    trades = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    kl = ws_factory(sim.ws_url + "/ws/btcusdt@kline_1s")
    collect(trades, lambda m: len(m) >= 3)
    fault = post_fault(sim, kind="halt", symbol="btcusdt", duration=1.0)
    first, last = fault["params"]["from_ms"], fault["params"]["to_ms"]
    assert last - first >= 59_000                    # 1 wall s at speed 60
    got = collect(trades, lambda m: m and m[-1]["T"] > last + 2_000, timeout=10)
    ids = [m["a"] for m in got]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "ids continue with no hole"
    assert not [m for m in got if first <= m["T"] <= last], "no trade inside the halt"
    events = collect(kl, lambda m: m and m[-1]["k"]["t"] > last + 2_000, timeout=10)
    # Only the kline the halt began in closes (at its close time); nothing else.
    during = [e for e in events if first < e["E"] <= last]
    assert all(e["k"]["x"] and e["k"]["t"] < first for e in during), "the kline stream is silent"
    opens = [e["k"]["t"] for e in events]
    assert any(b - a > 50_000 for a, b in zip(opens, opens[1:])), "the stream resumes at a later open time"
    rows = klines(sim, startTime=first - 5_000, endTime=last + 5_000)
    inside = [r for r in rows if r[0] >= first and r[6] <= last]
    assert rows and not inside, "REST has no kline for an interval wholly inside the halt"
    # other symbols keep trading
    eth = ws_factory(sim.ws_url + "/ws/ethusdt@aggTrade")
    assert collect(eth, lambda m: len(m) >= 2)[-1]["s"] == "ETHUSDT"


def test_halt_is_listed_and_clearing_it_resumes_trading(sim):
    fault = post_fault(sim, kind="halt", duration=600)
    assert [f["kind"] for f in get(sim.control_url + "/faults").body] == ["halt"]
    assert http("DELETE", sim.control_url + f"/faults/{fault['id']}").body == {"cleared": 1}
    before = get(sim.base_url + "/api/v3/aggTrades", symbol="BTCUSDT", limit=1).body[-1]["a"]
    wait_until(lambda: get(sim.base_url + "/api/v3/aggTrades", symbol="BTCUSDT", limit=1).body[-1]["a"] > before,
               what="trading resumed")


@pytest.mark.parametrize("body", [{"kind": "halt"}, {"kind": "halt", "duration": 1, "symbol": "NOPE"},
                                  {"kind": "rest_lag"}, {"kind": "outage"},
                                  {"kind": "outage", "duration": 1, "status": 418}])
def test_bad_requests_are_refused(sim, body):
    assert http("POST", sim.control_url + "/faults", data=body).status == 400


def test_rest_lag_serves_the_past_with_then_current_values(make_sim):
    sim = make_sim(speed=60.0, trade_rate=20.0, book_rate=5.0)
    wait_until(lambda: sim_now(sim) > sim.options.start_ms + 600_000, timeout=15, what="10 sim minutes")
    lag = 90_000
    post_fault(sim, kind="rest_lag", ms=lag)
    lagged = klines(sim, "1m")
    aggs = get(sim.base_url + "/api/v3/aggTrades", symbol="BTCUSDT", limit=1000).body
    bound = sim_now(sim) - lag
    assert lagged[-1][0] <= bound and aggs[-1]["T"] <= bound, "nothing newer than now - lag"
    http("DELETE", sim.control_url + "/faults")
    truth = {r[0]: r for r in klines(sim, "1m")}
    newest = lagged[-1]
    assert all(truth[r[0]] == r for r in lagged[:-1]), "older rows are final"
    assert newest[6] > bound - 60_000
    final = truth[newest[0]]
    assert newest[8] < final[8] and newest != final, "the newest row had its then-current values"
    assert 0 < newest[8] <= sum(a["l"] - a["f"] + 1 for a in aggs if a["T"] >= newest[0])


def test_outage_drops_everything_refuses_upgrades_and_fails_rest(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 1)
    started = time.monotonic()
    post_fault(sim, kind="outage", duration=0.5)
    with pytest.raises((OSError, websocket.WebSocketException)):
        collect(ws, lambda m: False, timeout=3)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(sim.ws_url + "/ws/btcusdt@aggTrade", timeout=2)
    assert refused.value.status_code == 503
    assert get(sim.base_url + "/api/v3/klines", symbol="BTCUSDT", interval="1m").status == 503
    wait_until(lambda: time.monotonic() - started > 0.6)
    assert get(sim.base_url + "/api/v3/ping").status == 200
    again = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    assert collect(again, lambda m: len(m) >= 1)[0]["e"] == "aggTrade"


def test_latency_on_rest_delays_answers_not_stream_data(sim, ws_factory):
    post_fault(sim, kind="latency", ms=300, rest=True, duration=5)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    t0 = time.monotonic()
    collect(ws, lambda m: len(m) >= 3)
    assert time.monotonic() - t0 < 0.3, "stream data is not delayed"
    t0 = time.monotonic()
    assert get(sim.base_url + "/api/v3/time").status == 200
    assert time.monotonic() - t0 >= 0.3
