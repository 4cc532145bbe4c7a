"""Protocol rules, each observed from a real websocket-client connection."""

from __future__ import annotations

import json
import time

import pytest
import websocket
from websocket import ABNF
from simhelpers import collect, get, read_frames, read_until_close, request

QUIET = dict(trade_rate=2.0, book_rate=2.0)


def first_frame(ws, opcode, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(deadline - time.monotonic())
        frame = ws.recv_frame()  # raw: no automatic pong
        if frame.opcode == opcode:
            return frame
    raise AssertionError(f"no frame with opcode {opcode}")


def test_server_pings_with_a_payload(make_sim, ws_factory):
    sim = make_sim(ping_interval=0.2, pong_timeout=5.0, **QUIET)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    started = time.monotonic()
    ping = first_frame(ws, ABNF.OPCODE_PING)
    assert ping.data and time.monotonic() - started >= 0.15


def test_missing_pong_closes_the_connection(make_sim, ws_factory):
    sim = make_sim(ping_interval=0.2, pong_timeout=0.6, **QUIET)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    started = time.monotonic()
    close = first_frame(ws, ABNF.OPCODE_CLOSE)  # we never answer pings
    elapsed = time.monotonic() - started
    assert int.from_bytes(close.data[:2], "big") == 1008
    assert 0.75 <= elapsed < 3.0


def test_echoed_pongs_keep_the_connection_alive(make_sim, ws_factory):
    # Pongs count as incoming messages: lift that limit to ping fast.
    # Counted in pings, not in how many fit in a window: 12 pings answered
    # span four pong timeouts, however slowly a loaded machine gets there.
    sim = make_sim(ping_interval=0.1, pong_timeout=0.3, msg_rate_limit=100, **QUIET)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    ws.settimeout(10)
    pings = 0
    while pings < 12:
        opcode, _ = ws.recv_data_frame(control_frame=True)  # pongs echo automatically
        assert opcode != ABNF.OPCODE_CLOSE, f"closed after {pings} answered pings"
        pings += opcode == ABNF.OPCODE_PING
    assert ws.connected


def test_unsolicited_or_wrong_pongs_do_not_keep_alive(make_sim, ws_factory):
    sim = make_sim(ping_interval=0.2, pong_timeout=0.5, **QUIET)
    ws = ws_factory(sim.ws_url + "/ws/btcusdt@aggTrade")
    deadline = time.monotonic() + 4.0
    next_pong = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_pong:
            ws.pong(b"not-the-payload")
            next_pong = time.monotonic() + 0.25
        ws.settimeout(0.05)
        try:
            frame = ws.recv_frame()
        except websocket.WebSocketTimeoutException:
            continue
        if frame.opcode == ABNF.OPCODE_CLOSE:
            assert int.from_bytes(frame.data[:2], "big") == 1008
            return
    pytest.fail("connection survived on unsolicited pongs")


@pytest.mark.parametrize("path,combined", [("/stream?streams=btcusdt@aggTrade", True),
                                           ("/ws/btcusdt@aggTrade", False)])
def test_lifetime_ends_with_server_shutdown_then_close(make_sim, ws_factory, path, combined):
    sim = make_sim(max_lifetime=0.4, shutdown_lead=0.3, **QUIET)
    ws = ws_factory(sim.ws_url + path)
    code, _, frames = read_until_close(ws, timeout=5)
    assert code == 1001
    events = [json.loads(f) for f in frames]
    if combined:
        # web-socket-streams.md "Server Shutdown": wrapped on a combined stream.
        assert all(set(e) == {"stream", "data"} for e in events)
        assert [e["stream"] for e in events if e["data"].get("e") == "serverShutdown"] == ["!serverShutdown"]
        events = [e["data"] for e in events]
    notices = [i for i, e in enumerate(events) if e.get("e") == "serverShutdown"]
    assert len(notices) == 1 and isinstance(events[notices[0]]["E"], int)
    assert set(events[notices[0]]) == {"e", "E"}


def test_more_than_five_messages_a_second_closes_with_1008(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws")
    for i in range(5):
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
    assert [json.loads(ws.recv())["id"] for _ in range(5)] == list(range(5))
    ws.ping(b"x")  # pings count too: the sixth message in the second
    code, _, _ = read_until_close(ws)
    assert code == 1008


def test_futures_allow_ten_messages_a_second(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/market/ws")
    for i in range(10):
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
    assert [json.loads(ws.recv())["id"] for _ in range(10)] == list(range(10))
    ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10}))
    code, _, _ = read_until_close(ws)
    assert code == 1008


def test_stream_count_limit(make_sim, ws_factory):
    sim = make_sim(max_streams=3, **QUIET)
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        ws_factory(sim.ws_url + "/stream?streams=a@trade/b@trade/c@trade/d@trade")
    assert err.value.status_code == 400
    ws = ws_factory(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade")
    reply = request(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "ethusdt@aggTrade"], "id": 9})
    assert reply["error"]["code"] == 2
    assert request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 10})["result"] == ["btcusdt@trade", "ethusdt@trade"]


def test_connection_attempts_per_ip_are_limited(make_sim, ws_factory):
    sim = make_sim(conn_attempts=3, **QUIET)
    for _ in range(3):
        ws_factory(sim.ws_url + "/ws").close()
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        ws_factory(sim.ws_url + "/ws")
    assert err.value.status_code == 429


def test_live_subscribe_list_unsubscribe_and_combined(make_sim, ws_factory):
    sim = make_sim(msg_rate_limit=50, speed=60.0)  # seven requests in a second
    ws = ws_factory(sim.ws_url + "/ws")
    assert request(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}) == {"result": None, "id": 1}
    raw = collect(ws, lambda m: len(m) >= 3)
    assert all(e["e"] == "aggTrade" for e in raw)
    assert request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})["result"] == ["btcusdt@aggTrade"]
    assert request(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 3})["result"] is False
    assert request(ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 4}) == {"result": None, "id": 4}
    wrapped = collect(ws, lambda m: len(m) >= 3 and "stream" in m[-1])
    assert wrapped[-1]["stream"] == "btcusdt@aggTrade" and wrapped[-1]["data"]["e"] == "aggTrade"
    assert request(ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 5}) == {"result": None, "id": 5}
    assert request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 6})["result"] == []
    err = request(ws, {"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 7})
    assert err == {"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": 7}


def test_invalid_json_gets_error_3(sim, ws_factory):
    ws = ws_factory(sim.ws_url + "/ws")
    ws.send("{not json")
    reply = json.loads(ws.recv())
    assert reply["error"]["code"] == 3 and reply["id"] is None


def test_stream_on_the_wrong_route_is_acknowledged_but_silent(sim, ws_factory):
    right = ws_factory(sim.ws_url + "/market/ws/btcusdt@aggTrade")
    wrong = ws_factory(sim.ws_url + "/public/ws/btcusdt@aggTrade")
    live_wrong = ws_factory(sim.ws_url + "/public/ws")
    assert request(live_wrong, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1})["result"] is None
    assert request(live_wrong, {"method": "LIST_SUBSCRIPTIONS", "id": 2})["result"] == ["btcusdt@aggTrade"]
    got = collect(right, lambda m: len(m) >= 20)
    assert got[0]["e"] == "aggTrade"
    for ws in (wrong, live_wrong):
        assert [f for f in read_frames(ws, 0.1) if f[0] == ABNF.OPCODE_TEXT] == []


def test_rest_weight_header_429_then_418(make_sim):
    sim = make_sim(rest_weight_limit=12, ban_after=2, ban_seconds=30, **QUIET)
    url = sim.base_url + "/api/v3/depth"
    first = get(url, symbol="BTCUSDT", limit=100)
    assert first.status == 200 and first.headers["X-MBX-USED-WEIGHT-1M"] == "5"
    assert get(url, symbol="BTCUSDT", limit=10).headers["X-MBX-USED-WEIGHT-1M"] == "10"
    over = get(url, symbol="BTCUSDT")
    assert over.status == 429 and int(over.headers["Retry-After"]) >= 1 and over.body["code"] == -1003
    assert get(sim.base_url + "/api/v3/ping").status == 429   # first strike
    banned = get(sim.base_url + "/api/v3/ping")
    assert banned.status == 418 and banned.headers["Retry-After"] == "30"
    assert get(sim.base_url + "/fapi/v1/ping").status == 200  # futures weight is separate


def test_depth_weight_depends_on_limit(sim):
    weights = []
    for limit in (100, 500, 1000, 5000):
        before = int(get(sim.base_url + "/api/v3/ping").headers["X-MBX-USED-WEIGHT-1M"])
        after = int(get(sim.base_url + "/api/v3/depth", symbol="BTCUSDT", limit=limit).headers["X-MBX-USED-WEIGHT-1M"])
        weights.append(after - before)
    assert weights == [5, 25, 50, 250]
