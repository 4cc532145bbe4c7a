"""User data: spot WebSocket API subscription and signed REST; futures listenKey and /private."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest
import websocket
from simhelpers import collect, get, http, read_frames, wait_until

from feedsup.sim.signing import ws_api_payload

KEY, SECRET = "test-key", "test-secret"


@pytest.fixture
def usim(make_sim):
    return make_sim(speed=60.0, api_key=KEY, api_secret=SECRET, listen_key_validity=3600.0)


def sign(payload: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def server_ms(sim) -> int:
    return get(sim.base_url + "/api/v3/time").body["serverTime"]


def signed(sim, method, path, key=KEY, secret=SECRET, in_body=False, **params):
    params.setdefault("timestamp", server_ms(sim))
    query = urlencode(params)
    query += "&signature=" + sign(query, secret)
    headers = {"X-MBX-APIKEY": key} if key else {}
    if in_body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return http(method, sim.base_url + path, data=query.encode(), headers=headers)
    return http(method, f"{sim.base_url}{path}?{query}", headers=headers)


def ws_api_subscribe(sim, ws_factory, secret=SECRET, key=KEY, timestamp=None):
    ws = ws_factory(sim.ws_api_url)
    params = {"apiKey": key, "timestamp": timestamp or server_ms(sim)}
    params["signature"] = sign(ws_api_payload(params), secret)
    ws.send(json.dumps({"id": "sub-1", "method": "userDataStream.subscribe.signature", "params": params}))
    return ws, json.loads(ws.recv())


def test_spot_subscribe_order_and_events(usim, ws_factory):
    ws, reply = ws_api_subscribe(usim, ws_factory)
    assert reply["status"] == 200 and reply["id"] == "sub-1"
    sub_id = reply["result"]["subscriptionId"]
    placed = signed(usim, "POST", "/api/v3/order", in_body=True, symbol="BTCUSDT", side="BUY", type="MARKET",
                    quantity="0.01000")
    assert placed.status == 200, placed.body
    assert placed.body["status"] == "FILLED" and placed.body["executedQty"] == "0.01000000"
    assert placed.body["fills"] and set(placed.body["fills"][0]) == {"price", "qty", "commission", "commissionAsset",
                                                                     "tradeId"}
    events = collect(ws, lambda m: any(e["event"]["e"] == "outboundAccountPosition" for e in m))
    assert all(e["subscriptionId"] == sub_id for e in events)
    kinds = [(e["event"]["e"], e["event"].get("x")) for e in events]
    # One TRADE report per book level the order took.
    trades = len(placed.body["fills"])
    assert kinds == [("executionReport", "NEW")] + [("executionReport", "TRADE")] * trades + [
        ("outboundAccountPosition", None)]
    report = events[-2]["event"]
    assert set(report) >= {"e", "E", "s", "c", "S", "o", "f", "q", "p", "x", "X", "i", "l", "z", "L", "n", "N", "T",
                           "t", "w", "m", "O", "Z", "Y", "Q"}
    assert (report["X"], report["i"], report["z"]) == ("FILLED", placed.body["orderId"], "0.01000000")
    position = events[-1]["event"]
    assert {b["a"] for b in position["B"]} == {"BTC", "USDT"}
    btc = next(b for b in position["B"] if b["a"] == "BTC")
    assert btc == {"a": "BTC", "f": "10.01000000", "l": "0.00000000"}


def test_spot_account_open_orders_cancel_and_balance_update(usim, ws_factory):
    ws, _ = ws_api_subscribe(usim, ws_factory)
    placed = signed(usim, "POST", "/api/v3/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                    timeInForce="GTC", quantity="0.5", price="1000.00")
    assert placed.body["status"] == "NEW"
    opened = signed(usim, "GET", "/api/v3/openOrders", symbol="BTCUSDT").body
    assert [o["orderId"] for o in opened] == [placed.body["orderId"]]
    account = signed(usim, "GET", "/api/v3/account").body
    usdt = next(b for b in account["balances"] if b["asset"] == "USDT")
    assert usdt == {"asset": "USDT", "free": "99500.00000000", "locked": "500.00000000"}
    cancelled = signed(usim, "DELETE", "/api/v3/order", symbol="BTCUSDT", orderId=placed.body["orderId"])
    assert cancelled.body["status"] == "CANCELED"
    assert signed(usim, "GET", "/api/v3/openOrders").body == []
    assert http("POST", usim.control_url + "/balance", data={"asset": "USDT", "delta": "25"}).status == 200
    events = collect(ws, lambda m: any(e["event"]["e"] == "balanceUpdate" for e in m))
    update = next(e["event"] for e in events if e["event"]["e"] == "balanceUpdate")
    assert set(update) == {"e", "E", "a", "d", "T"} and (update["a"], update["d"]) == ("USDT", "25.00000000")


def test_limit_order_fills_when_the_market_reaches_it(usim, ws_factory):
    ws, _ = ws_api_subscribe(usim, ws_factory)
    best_ask = float(get(usim.base_url + "/api/v3/depth", symbol="BTCUSDT", limit=5).body["asks"][0][0])
    placed = signed(usim, "POST", "/api/v3/order", symbol="BTCUSDT", side="SELL", type="LIMIT", timeInForce="GTC",
                    quantity="0.1", price=f"{best_ask + 0.03:.2f}")
    if placed.body["status"] == "FILLED":
        pytest.skip("the market moved through the price before the order arrived")
    events = collect(ws, lambda m: any(e["event"].get("X") == "FILLED" for e in m), timeout=10)
    assert any(e["event"].get("x") == "TRADE" for e in events)


@pytest.mark.parametrize("case,code", [("secret", -1022), ("key", -2015), ("timestamp", -1021)])
def test_spot_subscribe_rejections(usim, ws_factory, case, code):
    kwargs = {"secret": {"secret": "wrong"}, "key": {"key": "nobody"}, "timestamp": {"timestamp": 1000}}[case]
    _, reply = ws_api_subscribe(usim, ws_factory, **kwargs)
    assert reply["status"] in (400, 401) and reply["error"]["code"] == code


def test_unsubscribe_stops_events(usim, ws_factory):
    ws, reply = ws_api_subscribe(usim, ws_factory)
    sub_id = reply["result"]["subscriptionId"]
    ws.send(json.dumps({"id": 2, "method": "userDataStream.unsubscribe", "params": {"subscriptionId": sub_id},
                        }))
    answer = json.loads(ws.recv())
    assert (answer["id"], answer["status"], answer["result"]) == (2, 200, {})
    assert answer["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"   # shown by default
    # user-data-stream.md "Event Stream Terminated": sent when unsubscribed.
    ended = json.loads(ws.recv())
    assert ended["subscriptionId"] == sub_id and ended["event"]["e"] == "eventStreamTerminated"
    signed(usim, "POST", "/api/v3/order", symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.001")
    assert [f for f in read_frames(ws, 0.2) if f[0] == websocket.ABNF.OPCODE_TEXT] == []


def test_signed_rest_rejections(usim):
    assert signed(usim, "GET", "/api/v3/account", secret="wrong").body["code"] == -1022
    no_key = signed(usim, "GET", "/api/v3/account", key="")
    assert (no_key.status, no_key.body["code"]) == (401, -2014)
    stale = signed(usim, "GET", "/api/v3/account", timestamp=1000)
    assert stale.body["code"] == -1021
    poor = signed(usim, "POST", "/api/v3/order", symbol="BTCUSDT", side="BUY", type="MARKET", quantity="50")
    assert poor.body == {"code": -2010, "msg": "Account has insufficient balance for requested action."}


def listen_key(sim, method="POST"):
    return http(method, sim.base_url + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": KEY})


def test_futures_listen_key_lifecycle_and_private_events(usim, ws_factory):
    key = listen_key(usim).body["listenKey"]
    assert listen_key(usim).body["listenKey"] == key  # POST again returns the active key
    ws = ws_factory(f"{usim.ws_url}/private/ws?listenKey={key}")
    placed = signed(usim, "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010")
    # USD-M newOrderRespType defaults to ACK: the order as accepted, before it fills.
    assert placed.status == 200 and (placed.body["status"], placed.body["executedQty"]) == ("NEW", "0")
    events = collect(ws, lambda m: any(e["e"] == "ACCOUNT_UPDATE" for e in m))
    assert [e["e"] for e in events][0] == "ORDER_TRADE_UPDATE" and events[-1]["e"] == "ACCOUNT_UPDATE"
    order = events[-2]["o"]
    assert (order["x"], order["X"], order["s"], order["z"]) == ("TRADE", "FILLED", "BTCUSDT", "0.010")
    position = events[-1]["a"]["P"][0]
    assert (position["s"], position["pa"]) == ("BTCUSDT", "0.010")
    assert listen_key(usim, "PUT").status == 200
    assert listen_key(usim, "DELETE").body == {}
    gone = listen_key(usim, "PUT")
    assert (gone.status, gone.body) == (400, {"code": -1125, "msg": "This listenKey does not exist."})
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_factory(f"{usim.ws_url}/private/ws?listenKey={key}")


def test_listen_key_expires_on_the_simulated_clock(make_sim, ws_factory):
    sim = make_sim(speed=60.0, api_key=KEY, api_secret=SECRET, listen_key_validity=30.0)  # 0.5 s wall
    key = listen_key(sim).body["listenKey"]
    ws = ws_factory(f"{sim.ws_url}/private/ws?listenKey={key}")
    event = collect(ws, lambda m: len(m) >= 1)[0]
    assert event["e"] == "listenKeyExpired" and event["listenKey"] == key and isinstance(event["E"], int)
    assert listen_key(sim, "PUT").body["code"] == -1125


def test_expire_listen_key_fault(usim, ws_factory):
    key = listen_key(usim).body["listenKey"]
    ws = ws_factory(f"{usim.ws_url}/private/stream?listenKey={key}&events=ORDER_TRADE_UPDATE")
    wait_until(lambda: usim.connections())
    fault = http("POST", usim.control_url + "/faults", data={"kind": "expire_listen_key", "target": {"listenKey": key}})
    assert fault.body["applied_to"]
    assert collect(ws, lambda m: len(m) >= 1)[0]["e"] == "listenKeyExpired"


EXECUTION_REPORT = {"e", "E", "s", "c", "S", "o", "f", "q", "p", "P", "F", "g", "C", "x", "X", "r", "i", "l", "z",
                    "L", "n", "N", "T", "t", "I", "w", "m", "M", "O", "Z", "Y", "Q", "W", "V"}
ORDER_UPDATE = {"s", "c", "S", "o", "f", "q", "p", "ap", "sp", "x", "X", "i", "l", "z", "L", "n", "N", "T", "t", "b",
                "a", "m", "R", "wt", "ot", "ps", "cp", "rp", "pP", "si", "ss", "V", "pm", "gtd"}
ORDER_JSON = {"symbol", "orderId", "orderListId", "clientOrderId", "price", "origQty", "executedQty",
              "cummulativeQuoteQty", "status", "timeInForce", "type", "side", "stopPrice", "icebergQty", "time",
              "updateTime", "isWorking", "workingTime", "origQuoteOrderQty", "selfTradePreventionMode"}


def test_user_data_payload_fields(usim, ws_factory):
    ws, _ = ws_api_subscribe(usim, ws_factory)
    ack = signed(usim, "POST", "/api/v3/order", symbol="ETHUSDT", side="SELL", type="LIMIT", timeInForce="GTC",
                 quantity="1", price="9000.00", newClientOrderId="mine-1").body
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime", "price", "origQty",
                        "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty", "status", "timeInForce", "type",
                        "side", "workingTime", "selfTradePreventionMode", "fills"}
    assert ack["clientOrderId"] == "mine-1"
    report = collect(ws, lambda m: len(m) >= 1)[0]["event"]
    assert set(report) == EXECUTION_REPORT
    for key in ("q", "p", "P", "F", "l", "z", "L", "n", "Z", "Y", "Q"):
        assert isinstance(report[key], str), key
    for key in ("E", "g", "i", "T", "t", "I", "O", "W"):
        assert isinstance(report[key], int), key
    orders = signed(usim, "GET", "/api/v3/openOrders").body
    assert len(orders) == 1 and set(orders[0]) == ORDER_JSON
    account = signed(usim, "GET", "/api/v3/account").body
    assert {"makerCommission", "commissionRates", "canTrade", "updateTime", "accountType", "balances",
            "permissions"} <= set(account)
    assert all(set(b) == {"asset", "free", "locked"} for b in account["balances"])

    key = listen_key(usim).body["listenKey"]
    private = ws_factory(f"{usim.ws_url}/private/ws?listenKey={key}")
    wait_until(lambda: any(c["route"] == "private" for c in usim.connections()))
    signed(usim, "POST", "/fapi/v1/order", symbol="BTCUSDT", side="SELL", type="MARKET", quantity="0.005")
    updates = collect(private, lambda m: len(m) >= 3)
    for update in updates[:2]:
        assert set(update) == {"e", "E", "T", "o"} and set(update["o"]) == ORDER_UPDATE
    account_update = updates[2]
    assert set(account_update) == {"e", "E", "T", "a"} and set(account_update["a"]) == {"m", "B", "P"}
    assert all(set(b) == {"a", "wb", "cw", "bc"} for b in account_update["a"]["B"])
    assert all(set(p) == {"s", "pa", "ep", "bep", "cr", "up", "mt", "iw", "ps"} for p in account_update["a"]["P"])
    assert account_update["a"]["P"][0]["pa"] == "-0.005"
