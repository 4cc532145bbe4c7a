"""Each fault kind, injected over the control API and observed by a real client."""

from __future__ import annotations

import json
import threading
import time

import pytest
import websocket
from websocket import ABNF
from simhelpers import collect, get, http, read_frames, read_until_close, wait_until

from feedsup.sim.faults import FaultError


def post_fault(sim, **body):
    reply = http("POST", sim.control_url + "/faults", data=body)
    assert reply.status == 200, reply.body
    return reply.body


def conn_id(sim, stream):
    conns = wait_until(lambda: [c for c in sim.connections() if stream in c["streams"]], what=stream)
    return conns[0]["id"]


def test_connections_listing(sim, ws_factory):
    ws_factory(sim.ws_url + "/stream?streams=btcusdt@aggTrade/ethusdt@trade")
    listing = get(sim.control_url + "/connections").body
    assert len(listing) == 1
    conn = listing[0]
    assert conn["streams"] == ["btcusdt@aggTrade", "ethusdt@trade"]
    assert conn["path"].startswith("/stream?streams=") and conn["client"].startswith("127.0.0.1:")
    assert isinstance(conn["id"], int) and conn["age"] >= 0


def test_drop_resets_tcp_without_close_frame(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 1)
    fault = post_fault(sim, kind="drop", target={"conn": conn_id(sim, "btcusdt@aggTrade")})
    assert fault["applied_to"]
    with pytest.raises((ConnectionResetError, websocket.WebSocketConnectionClosedException)):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            opcode, _ = ws.recv_data_frame(control_frame=True)
            assert opcode != ABNF.OPCODE_CLOSE, "a drop must not send a close frame"


@pytest.mark.parametrize("code", [1001, 1008, 1011])
def test_close_with_code(sim, ws_factory, code):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    post_fault(sim, kind="close", target={}, code=code, reason="test")
    got, reason, _ = read_until_close(ws)
    assert (got, reason) == (code, "test")


def test_stream_target_hits_only_its_subscribers(sim, ws_factory):
    hit = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    spared = ws_factory(sim.ws_url + "/ws/ethusdt@aggTrade")
    wait_until(lambda: len(sim.connections()) == 2)
    post_fault(sim, kind="close", target={"stream": "btcusdt@aggTrade"}, code=1011)
    assert read_until_close(hit)[0] == 1011
    assert collect(spared, lambda m: len(m) >= 5)[0]["s"] == "ETHUSDT"


def test_silent_stall_sends_nothing_and_answers_no_ping(make_sim, ws_factory):
    sim = make_sim(speed=60.0, ping_interval=0.1, pong_timeout=0.3)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 1)
    # The stall outlasts the quiet window below by far, so a loaded machine
    # that is slow to read cannot see it end inside the window.
    post_fault(sim, kind="stall", target={"conn": conn_id(sim, "btcusdt@aggTrade")}, duration=3.0)
    read_frames(ws, 0.05)  # drain what was in flight
    ws.ping(b"are-you-there")
    frames = read_frames(ws, 0.4)
    assert frames == [], "a stalled server sends no data, no ping, no pong and does not close"
    # After the stall the connection carries data again (pong timer was suspended too).
    assert collect(ws, lambda m: len(m) >= 3, timeout=10)[-1]["e"] == "aggTrade"


def test_data_stall_keeps_pinging_and_ponging(make_sim, ws_factory):
    sim = make_sim(speed=60.0, ping_interval=0.1, pong_timeout=5)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 1)
    post_fault(sim, kind="data_stall", target={"stream": "btcusdt@aggTrade"}, duration=5)
    read_frames(ws, 0.05)
    ws.ping(b"hello")
    frames = read_frames(ws, 0.4)
    opcodes = [op for op, _ in frames]
    assert ABNF.OPCODE_TEXT not in opcodes
    assert ABNF.OPCODE_PING in opcodes and (ABNF.OPCODE_PONG, b"hello") in frames
    assert http("DELETE", sim.control_url + "/faults").body == {"cleared": 1}
    assert collect(ws, lambda m: len(m) >= 3)[-1]["e"] == "aggTrade"


def test_latency_delays_delivery(sim, ws_factory):
    slow = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    fast = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    wait_until(lambda: len(sim.connections()) == 2)
    slow_id = min(c["id"] for c in sim.connections())
    post_fault(sim, kind="latency", target={"conn": slow_id}, ms=300)
    arrivals = {"slow": {}, "fast": {}}

    def reader(name, ws):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(arrivals[name]) < 60:
            ws.settimeout(1)
            arrivals[name][json.loads(ws.recv())["a"]] = time.monotonic()

    threads = [threading.Thread(target=reader, args=(n, w)) for n, w in (("slow", slow), ("fast", fast))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    common = [a for a in arrivals["fast"] if a in arrivals["slow"]][10:]
    assert common
    delays = sorted(arrivals["slow"][a] - arrivals["fast"][a] for a in common)
    assert delays[len(delays) // 2] >= 0.25


@pytest.mark.parametrize("variant", ["invalid_json", "unknown_event", "truncated", "oversized"])
def test_malformed_frames(sim, ws_factory, variant):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 1)
    post_fault(sim, kind="malformed", target={}, variant=variant, size=200_000)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = ws.recv()
        try:
            event = json.loads(text)
        except ValueError:
            assert variant in ("invalid_json", "truncated")
            return
        if event.get("e") != "aggTrade":
            if variant == "unknown_event":
                assert event["e"] == "simUnknownEvent"
            else:
                assert variant == "oversized" and len(text) >= 200_000
            return
    pytest.fail("no malformed frame arrived")


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_refuse_new_connections_for_a_while(sim, ws_factory, mode):
    existing = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    post_fault(sim, kind="refuse", duration=0.5, mode=mode)
    refused_at = time.monotonic()
    if mode == "503":
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
        assert err.value.status_code == 503
    else:
        with pytest.raises((ConnectionResetError, websocket.WebSocketConnectionClosedException)):
            ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    assert collect(existing, lambda m: len(m) >= 2)  # established connections carry on
    wait_until(lambda: time.monotonic() - refused_at > 0.55)
    assert collect(ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade"), lambda m: len(m) >= 1)


@pytest.mark.parametrize("status", [500, 503, 429, 418])
def test_rest_errors_for_the_next_calls(sim, status):
    post_fault(sim, kind="rest_error", status=status, count=2, retry_after=7)
    for _ in range(2):
        reply = get(sim.base_url + "/api/v3/time")
        assert reply.status == status and isinstance(reply.body["code"], int)
        assert (reply.headers.get("Retry-After") == "7") == (status in (418, 429))
    assert get(sim.base_url + "/api/v3/time").status == 200


def test_rest_error_for_a_duration(sim):
    # Long enough that the two calls below fall inside it on a loaded
    # machine; its end is waited for, not timed.
    started = time.monotonic()
    post_fault(sim, kind="rest_error", status=503, duration=2.0)
    assert get(sim.base_url + "/fapi/v1/time").status == 503
    assert get(sim.base_url + "/api/v3/ping").status == 503
    wait_until(lambda: get(sim.base_url + "/api/v3/ping").status == 200, timeout=15, interval=0.05)
    assert time.monotonic() - started >= 2.0


def test_server_shutdown_event_then_close(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 1)
    sent = time.monotonic()
    post_fault(sim, kind="server_shutdown", delay=0.3)
    code, _, frames = read_until_close(ws)
    assert code == 1001 and time.monotonic() - sent >= 0.25
    notices = [json.loads(f) for f in frames if b"serverShutdown" in f]
    assert len(notices) == 1 and set(notices[0]) == {"e", "E"}


def test_lifetime_expiry_now(make_sim, ws_factory):
    sim = make_sim(speed=60.0, shutdown_lead=0.1)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    collect(ws, lambda m: len(m) >= 1)
    post_fault(sim, kind="lifetime")
    code, _, frames = read_until_close(ws)
    assert code == 1001 and any(b"serverShutdown" in f for f in frames)


def test_faults_list_clear_and_validation(sim):
    stall = post_fault(sim, kind="stall", target={"stream": "btcusdt@trade"})
    assert [f["id"] for f in get(sim.control_url + "/faults").body] == [stall["id"]]
    assert http("DELETE", f"{sim.control_url}/faults/{stall['id']}").body == {"cleared": 1}
    assert get(sim.control_url + "/faults").body == []
    bad = http("POST", sim.control_url + "/faults", data={"kind": "explode"})
    assert bad.status == 400 and "unknown kind" in bad.body["error"]
    with pytest.raises(FaultError):
        sim.inject("close", code=99)


def test_scenario_schedules_faults(make_sim):
    # A lasting fault, observed when it shows: a close at 0.3 s would miss a
    # client that a loaded machine connected only after it.
    started = time.monotonic()
    sim = make_sim(speed=60.0, scenario=({"at": 0.3, "kind": "rest_error", "status": 503, "duration": 60},))
    wait_until(lambda: get(sim.base_url + "/api/v3/ping").status == 503, timeout=10,
               what="the scheduled rest_error")
    assert time.monotonic() - started >= 0.3, "not before its time"
