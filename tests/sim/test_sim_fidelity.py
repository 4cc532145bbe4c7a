"""Stream, WebSocket API and REST details where a bot built on the simulator
would otherwise pass and then fail on Binance."""

from __future__ import annotations

import hashlib
import hmac as hm
import json
import time
from urllib.parse import urlencode

import pytest
import websocket
from simhelpers import KEY, SECRET, collect, get, http, read_frames, recv_json, server_ms, signed, wait_until
from websocket import ABNF

from feedsup.sim.limits import WeightLimiter
from feedsup.sim.signing import hmac_hex, ws_api_payload

QUIET = dict(trade_rate=2.0, book_rate=2.0)


@pytest.fixture
def usim(make_sim):
    return make_sim(speed=60.0, trade_rate=20.0, book_rate=20.0, api_key=KEY, api_secret=SECRET)


# -- streams ---------------------------------------------------------------------------------------


def test_stream_names_are_case_sensitive(usim, ws_factory):
    ws = ws_factory(usim.ws_url + "/stream?streams=BTCUSDT@aggTrade/btcusdt@trade")
    frames = collect(ws, lambda m: len(m) >= 20)
    assert {f["stream"] for f in frames} == {"btcusdt@trade"}   # the upper-case one never delivers
    ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
    listed = next(m for m in collect(ws, lambda m: any("result" in x for x in m)) if "result" in m)
    assert listed["result"] == ["BTCUSDT@aggTrade", "btcusdt@trade"]


def test_stream_names_clients_use(usim, ws_factory):
    spot = ws_factory(usim.ws_url + "/ws/!miniTicker@arr@1000ms")
    assert recv_json(spot)[0]["e"] == "24hrMiniTicker"
    cont = ws_factory(usim.ws_url + "/market/ws/btcusdt_perpetual@continuousKline_1m")
    event = recv_json(cont)
    assert (event["e"], event["ps"], event["ct"], event["k"]["i"]) == ("continuous_kline", "BTCUSDT", "PERPETUAL",
                                                                        "1m")
    assert "s" not in event["k"]


def test_legacy_usdm_paths_serve_every_usdm_stream(usim, ws_factory):
    # fstream.binance.com/stream: public and market streams on one connection, futures payloads.
    ws = ws_factory(usim.ws_url + "/usdm/stream?streams=btcusdt@bookTicker/btcusdt@markPrice@1s")
    frames = collect(ws, lambda m: {f["stream"] for f in m} == {"btcusdt@bookTicker", "btcusdt@markPrice@1s"})
    book = next(f["data"] for f in frames if f["stream"] == "btcusdt@bookTicker")
    assert {"T", "E"} <= set(book)       # USD-M bookTicker fields, not spot's
    raw = ws_factory(usim.ws_url + "/usdm/ws/btcusdt@trade")    # a spot-only stream: never delivers
    assert [f for f in read_frames(raw, 0.3) if f[0] == ABNF.OPCODE_TEXT] == []


def test_usdm_accepts_unsolicited_pongs_as_keepalive(make_sim, ws_factory):
    sim = make_sim(futures_ping_interval=0.2, futures_pong_timeout=0.5, futures_msg_rate_limit=100, **QUIET)
    ws = ws_factory(sim.ws_url + "/market/ws/btcusdt@aggTrade")
    deadline = time.monotonic() + 2.0           # four pong timeouts, pings never answered
    next_pong = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_pong:
            ws.pong(b"")
            next_pong = time.monotonic() + 0.1
        ws.settimeout(0.05)
        try:
            frame = ws.recv_frame()
        except websocket.WebSocketTimeoutException:
            continue
        assert frame.opcode != ABNF.OPCODE_CLOSE
    assert ws.connected


# -- WebSocket API -----------------------------------------------------------------------------------


def api_request(ws, method, params=None, req_id=1):
    ws.send(json.dumps({"id": req_id, "method": method, **({"params": params} if params is not None else {})}))
    while True:
        msg = recv_json(ws)
        if msg.get("id") == req_id:
            return msg


def signature_params(sim, **extra):
    # Wall time (accepted too): simulated time runs 60 times faster here.
    params = {"apiKey": KEY, "timestamp": int(time.time() * 1000), **extra}
    params["signature"] = hmac_hex(SECRET, ws_api_payload(params))
    return params


def test_ws_api_rate_limits_shown_by_default(usim, ws_factory):
    ws = ws_factory(usim.ws_api_url)
    first = api_request(ws, "time")
    limits = first["rateLimits"]
    assert limits[0]["rateLimitType"] == "REQUEST_WEIGHT" and limits[0]["limit"] == 6000
    # web-socket-api.md: connecting costs 2, time 1 (1 alone if a clock minute began in between).
    assert limits[0]["count"] in (3, 1)
    assert "rateLimits" not in api_request(ws, "time", {"returnRateLimits": False}, 2)
    quiet = ws_factory(usim.ws_api_url + "?returnRateLimits=false")
    assert "rateLimits" not in api_request(quiet, "ping")
    assert "rateLimits" in api_request(quiet, "ping", {"returnRateLimits": True}, 2)


def test_ws_api_user_data_subscriptions(usim, ws_factory):
    ws = ws_factory(usim.ws_api_url)
    first = api_request(ws, "userDataStream.subscribe.signature", signature_params(usim))
    assert first["result"] == {"subscriptionId": 0}          # per session, from 0
    again = api_request(ws, "userDataStream.subscribe.signature", signature_params(usim), 2)
    assert (again["status"], again["error"]["code"]) == (400, -2035)   # one per account per connection
    api_request(ws, "userDataStream.unsubscribe", {"subscriptionId": 0}, 3)
    ended = recv_json(ws)
    assert ended["subscriptionId"] == 0 and ended["event"]["e"] == "eventStreamTerminated"
    renewed = api_request(ws, "userDataStream.subscribe.signature", signature_params(usim), 4)
    assert renewed["result"] == {"subscriptionId": 1}
    other = ws_factory(usim.ws_api_url)
    assert api_request(other, "userDataStream.subscribe.signature",
                       signature_params(usim))["result"] == {"subscriptionId": 0}


def test_ws_api_trades_and_reads(usim, ws_factory):
    ws = ws_factory(usim.ws_api_url)
    placed = api_request(ws, "order.place", signature_params(usim, symbol="BTCUSDT", side="BUY", type="LIMIT",
                                                             timeInForce="GTC", quantity="0.001", price="80000.00"))
    assert placed["result"]["status"] == "NEW"
    assert {r["rateLimitType"] for r in placed["rateLimits"]} == {"REQUEST_WEIGHT", "ORDERS"}
    status = api_request(ws, "order.status", signature_params(usim, symbol="BTCUSDT",
                                                              orderId=placed["result"]["orderId"]), 2)
    assert status["result"]["status"] == "NEW"
    depth = api_request(ws, "depth", {"symbol": "BTCUSDT", "limit": 5}, 3)
    assert len(depth["result"]["bids"]) == 5


def test_ws_api_pings_and_lifetime(make_sim, ws_factory):
    sim = make_sim(ping_interval=0.2, max_lifetime=0.8, shutdown_lead=0.4, **QUIET)
    ws = ws_factory(sim.ws_api_url)
    frames = read_frames(ws, 3.0)
    opcodes = [op for op, _ in frames]
    assert ABNF.OPCODE_PING in opcodes and opcodes[-1] == ABNF.OPCODE_CLOSE
    shutdown = [json.loads(data) for op, data in frames if op == ABNF.OPCODE_TEXT]
    assert [e["event"]["e"] for e in shutdown] == ["serverShutdown"]    # web-socket-api.md "Server Shutdown"
    assert int.from_bytes(frames[-1][1][:2], "big") == 1001


# -- REST ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v3/klines", "/fapi/v1/klines"])
def test_klines_start_at_or_after_start_time(usim, path):
    wait_until(lambda: len(get(usim.base_url + path, symbol="BTCUSDT", interval="1m").body) >= 3)
    rows = get(usim.base_url + path, symbol="BTCUSDT", interval="1m").body
    start = rows[0][0] + 1
    after = get(usim.base_url + path, symbol="BTCUSDT", interval="1m", startTime=start).body
    assert after[0][0] == rows[1][0]


def test_klines_time_zone(usim):
    utc = get(usim.base_url + "/api/v3/klines", symbol="BTCUSDT", interval="1d").body
    eight = get(usim.base_url + "/api/v3/klines", symbol="BTCUSDT", interval="1d", timeZone="8").body
    assert utc[-1][0] % 86_400_000 == 0 and eight[-1][0] % 86_400_000 == 16 * 3_600_000
    assert get(usim.base_url + "/api/v3/klines", symbol="BTCUSDT", interval="1d", timeZone="15").status == 400


def test_spot_agg_trades_span_more_than_an_hour(usim):
    now = server_ms(usim)
    spot = get(usim.base_url + "/api/v3/aggTrades", symbol="BTCUSDT", startTime=now - 7_200_000, endTime=now)
    assert spot.status == 200
    futures = get(usim.base_url + "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=now - 7_200_000, endTime=now)
    assert futures.body["code"] == -1127


def test_ticker_symbols_type_and_weight(usim):
    before = int(get(usim.base_url + "/api/v3/ping").headers["X-MBX-USED-WEIGHT-1M"])
    both = get(usim.base_url + "/api/v3/ticker/24hr", symbols='["BTCUSDT","ETHUSDT"]', type="MINI")
    assert [r["symbol"] for r in both.body] == ["BTCUSDT", "ETHUSDT"] and "bidPrice" not in both.body[0]
    assert int(both.headers["X-MBX-USED-WEIGHT-1M"]) - before == 2      # 1-20 symbols: weight 2
    prices = get(usim.base_url + "/api/v3/ticker/price", symbols='["ETHUSDT"]').body
    assert [r["symbol"] for r in prices] == ["ETHUSDT"]
    assert get(usim.base_url + "/api/v3/ticker/bookTicker", symbols='["NOPE"]').body["code"] == -1121


def test_rest_429_and_418_bodies_and_growing_bans():
    lim = WeightLimiter(limit=10, window=60.0, ban_after=2, ban_seconds=120.0)
    assert lim.charge("ip", 11, 0.0).message() == (
        "Too much request weight used; current limit is 10 request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API.")
    lim.charge("ip", 1, 1.0)
    ban = lim.charge("ip", 1, 2.0)
    assert ban.status == 418 and ban.retry_after == 120
    assert ban.message().startswith("Way too much request weight used; IP banned until 122000.")
    lim.charge("ip", 11, 200.0)               # a new window, over the limit again
    lim.charge("ip", 1, 201.0)
    second = lim.charge("ip", 1, 202.0)
    assert second.status == 418 and second.retry_after == 240     # twice as long


def test_rest_418_over_http(make_sim):
    sim = make_sim(rest_weight_limit=3, ban_after=1, **QUIET)
    statuses = [get(sim.base_url + "/api/v3/exchangeInfo") for _ in range(3)]
    assert [r.status for r in statuses] == [429, 418, 418]
    assert statuses[0].body["msg"].startswith("Too much request weight used; current limit is 3 ")
    assert "IP banned until " in statuses[1].body["msg"] and int(statuses[1].headers["Retry-After"]) > 0
    futures = make_sim(futures_rest_weight_limit=1, ban_after=1, **QUIET)
    over = [get(futures.base_url + "/fapi/v1/exchangeInfo") for _ in range(3)]
    assert [r.status for r in over] == [200, 429, 418]
    assert over[1].body["msg"].startswith("Too many requests; current limit is 1 requests per minute.")
    assert over[2].body["msg"].startswith("Way too many requests; IP banned until ")


def test_signed_request_details(usim):
    ts = int(time.time() * 1000)   # wall time: accepted as well, and it does not run 60 times faster
    query = urlencode({"timestamp": ts, "recvWindow": "5000.123"})
    sig = hm.new(SECRET.encode(), query.encode(), hashlib.sha256).hexdigest().upper()   # hex in upper case
    ok = http("GET", f"{usim.base_url}/api/v3/account?{query}&signature={sig}", headers={"X-MBX-APIKEY": KEY})
    assert ok.status == 200, ok.body
    assert signed(usim, "GET", "/api/v3/account", recvWindow="60001").body["code"] == -1131
    # A parameter in both query and body: the query's value counts.
    query = urlencode({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                       "quantity": "0.001", "price": "80000.00", "timestamp": int(time.time() * 1000)})
    body = "quantity=0.002"
    sig = hm.new(SECRET.encode(), (query + body).encode(), hashlib.sha256).hexdigest()
    placed = http("POST", f"{usim.base_url}/api/v3/order?{query}", data=f"{body}&signature={sig}".encode(),
                  headers={"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"})
    assert placed.status == 200 and placed.body["origQty"] == "0.00100000", placed.body


def test_ws_api_rate_limited_answers(make_sim, ws_factory):
    sim = make_sim(rest_weight_limit=4, ban_after=1, **QUIET)
    ws = ws_factory(sim.ws_api_url)            # 2
    assert api_request(ws, "ping")["status"] == 200                          # 3
    over = api_request(ws, "exchangeInfo", req_id=2)                         # +20: over the limit
    assert (over["status"], over["error"]["code"]) == (429, -1003)
    assert over["error"]["msg"].startswith("Too much request weight used; current limit is 4 ")
    banned = api_request(ws, "ping", req_id=3)
    assert banned["status"] == 418 and "IP banned until" in banned["error"]["msg"]
    data = banned["error"]["data"]
    assert isinstance(data["serverTime"], int) and data["retryAfter"] > time.time() * 1000   # when the ban ends
