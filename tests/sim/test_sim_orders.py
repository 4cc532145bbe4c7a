"""Order handling as Binance's matching engine does it: filters, timeInForce,
walking the book, order types, response types, cancels, counters, endpoints.

The market is frozen (no trades, no book updates) and its book set by hand, so
every fill is known in advance.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from simhelpers import KEY, SECRET, collect, get, http, server_ms, signed

from feedsup.sim.signing import hmac_hex, ws_api_payload


@pytest.fixture
def frozen(make_sim):
    return make_sim(trade_rate=0.0, book_rate=0.0, api_key=KEY, api_secret=SECRET)


def set_book(sim, asks=None, bids=None, market="spot", last=None):
    """Levels best first, in quantity steps (spot BTCUSDT: 0.00001 BTC; USD-M: 0.001)."""
    def run(core):
        m = core.hub.market(market, "BTCUSDT")
        if asks is not None:
            m.asks = {m.center + i + 1: units for i, units in enumerate(asks)}
        if bids is not None:
            m.bids = {m.center - i - 1: units for i, units in enumerate(bids)}
        if last is not None:
            m.last_price = m.center + last
    sim.call(run)


def order(sim, **params):
    params.setdefault("symbol", "BTCUSDT")
    return signed(sim, "POST", "/api/v3/order", **params)


def subscribe(sim, ws_factory):
    ws = ws_factory(sim.ws_api_url)
    params = {"apiKey": KEY, "timestamp": server_ms(sim)}
    params["signature"] = hmac_hex(SECRET, ws_api_payload(params))
    ws.send(json.dumps({"id": 1, "method": "userDataStream.subscribe.signature", "params": params}))
    assert json.loads(ws.recv())["status"] == 200
    return ws


def reports(ws, until):
    events = collect(ws, lambda m: until([e["event"] for e in m]))
    return [e["event"] for e in events if e["event"]["e"] == "executionReport"]


# -- filters (filters.md, errors.md -1013) ---------------------------------------------------


@pytest.mark.parametrize("params,msg", [
    ({"price": "80000.005", "quantity": "0.001"}, "Filter failure: PRICE_FILTER"),        # off the tick
    ({"price": "80000.00", "quantity": "0.0000123"}, "Filter failure: LOT_SIZE"),          # off the step
    ({"price": "80000.00", "quantity": "0.00001"}, "Filter failure: NOTIONAL"),            # 0.80 USDT
    ({"price": "2000000.00", "quantity": "0.001"}, "Filter failure: PRICE_FILTER"),        # above maxPrice
])
def test_spot_limit_orders_are_filtered_like_binance(frozen, params, msg):
    placed = order(frozen, side="BUY", type="LIMIT", timeInForce="GTC", **params)
    assert (placed.status, placed.body) == (400, {"code": -1013, "msg": msg})


def test_spot_market_orders_use_market_lot_size_and_notional(frozen):
    info = get(frozen.base_url + "/api/v3/exchangeInfo", symbol="BTCUSDT").body["symbols"][0]
    assert {"PRICE_FILTER", "LOT_SIZE", "MARKET_LOT_SIZE", "NOTIONAL"} <= {f["filterType"] for f in info["filters"]}
    too_big = order(frozen, side="BUY", type="MARKET", quantity="101")
    assert too_big.body == {"code": -1013, "msg": "Filter failure: MARKET_LOT_SIZE"}
    tiny = order(frozen, side="BUY", type="MARKET", quoteOrderQty="0.8")
    assert tiny.body == {"code": -1013, "msg": "Filter failure: NOTIONAL"}
    assert order(frozen, side="BUY", type="MARKET", quantity="0.001", timeInForce="GTC").body["code"] == -1106


@pytest.mark.parametrize("params,code", [
    ({"price": "80000.005", "quantity": "0.010"}, -1111),   # more decimals than the tick
    ({"price": "80000.00", "quantity": "0.0105"}, -1111),   # more decimals than the step
    ({"price": "80000.00", "quantity": "0.000"}, -4003),
    ({"price": "10.00", "quantity": "0.001"}, -4164),       # 0.01 USDT notional
])
def test_futures_orders_are_filtered_like_binance(frozen, params, code):
    placed = signed(frozen, "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                    timeInForce="GTC", **params)
    assert placed.status == 400 and placed.body["code"] == code, placed.body


# -- the book, timeInForce ---------------------------------------------------------------------


def test_market_order_walks_the_book_one_trade_per_level(frozen, ws_factory):
    set_book(frozen, asks=[100, 200, 100_000])
    ws = subscribe(frozen, ws_factory)
    placed = order(frozen, side="BUY", type="MARKET", quantity="0.004").body
    assert [(f["price"], f["qty"]) for f in placed["fills"]] == [
        ("90000.01000000", "0.00100000"), ("90000.02000000", "0.00200000"), ("90000.03000000", "0.00100000")]
    assert placed["status"] == "FILLED" and placed["cummulativeQuoteQty"] == "360.00008000"
    assert len({f["tradeId"] for f in placed["fills"]}) == 3
    assert all(f["commissionAsset"] == "BTC" for f in placed["fills"])   # the asset received
    events = reports(ws, lambda m: sum(e.get("x") == "TRADE" for e in m) == 3)
    assert [(e["x"], e["X"], e["l"]) for e in events] == [
        ("NEW", "NEW", "0.00000000"), ("TRADE", "PARTIALLY_FILLED", "0.00100000"),
        ("TRADE", "PARTIALLY_FILLED", "0.00200000"), ("TRADE", "FILLED", "0.00100000")]
    assert len({e["I"] for e in events}) == len(events)     # a unique execution id each


def test_ioc_fills_what_it_can_and_expires_the_rest(frozen):
    set_book(frozen, asks=[100, 200, 100_000])
    placed = order(frozen, side="BUY", type="LIMIT", timeInForce="IOC", quantity="0.01", price="90000.02").body
    assert (placed["status"], placed["executedQty"], len(placed["fills"])) == ("EXPIRED", "0.00300000", 2)
    assert signed(frozen, "GET", "/api/v3/openOrders").body == []


def test_fok_fills_completely_or_expires(frozen):
    set_book(frozen, asks=[100, 200, 100_000])
    killed = order(frozen, side="BUY", type="LIMIT", timeInForce="FOK", quantity="0.01", price="90000.02").body
    assert (killed["status"], killed["executedQty"], killed["fills"]) == ("EXPIRED", "0.00000000", [])
    filled = order(frozen, side="BUY", type="LIMIT", timeInForce="FOK", quantity="0.003", price="90000.02").body
    assert (filled["status"], filled["executedQty"]) == ("FILLED", "0.00300000")


def test_gtc_takes_what_crosses_and_rests(frozen):
    set_book(frozen, asks=[100, 200, 100_000])
    placed = order(frozen, side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.01", price="90000.02").body
    assert (placed["status"], placed["executedQty"]) == ("PARTIALLY_FILLED", "0.00300000")
    resting = signed(frozen, "GET", "/api/v3/openOrders", symbol="BTCUSDT").body
    assert [o["orderId"] for o in resting] == [placed["orderId"]]
    usdt = next(b for b in signed(frozen, "GET", "/api/v3/account").body["balances"] if b["asset"] == "USDT")
    # locked: what the rest may still spend at its limit price, 0.007 * 90000.02
    assert usdt["locked"] == "630.00014000"


def test_quote_order_qty_spends_at_most_that_much(frozen):
    set_book(frozen, asks=[100, 200, 100_000])
    placed = order(frozen, side="BUY", type="MARKET", quoteOrderQty="100").body
    assert placed["origQuoteOrderQty"] == "100.00000000" and placed["status"] == "FILLED"
    assert Decimal(placed["cummulativeQuoteQty"]) <= 100 and placed["executedQty"] == "0.00111000"


# -- order types ---------------------------------------------------------------------------------


def test_advertised_order_types_are_served(frozen):
    info = get(frozen.base_url + "/api/v3/exchangeInfo", symbol="BTCUSDT").body["symbols"][0]
    set_book(frozen, asks=[100_000], bids=[100_000])
    far = {"LIMIT": {"price": "80000.00", "timeInForce": "GTC"}, "LIMIT_MAKER": {"price": "80000.00"},
           "MARKET": {}, "STOP_LOSS": {"stopPrice": "95000.00"},   # a buy stop waits for a rise
           "STOP_LOSS_LIMIT": {"stopPrice": "95000.00", "price": "95000.00", "timeInForce": "GTC"},
           "TAKE_PROFIT": {"stopPrice": "80000.00"},
           "TAKE_PROFIT_LIMIT": {"stopPrice": "80000.00", "price": "80000.00", "timeInForce": "GTC"}}
    assert set(info["orderTypes"]) == set(far)
    assert not (info["ocoAllowed"] or info["otoAllowed"] or info["icebergAllowed"] or info["allowTrailingStop"])
    for otype, extra in far.items():
        placed = order(frozen, side="BUY", type=otype, quantity="0.001", **extra)
        assert placed.status == 200, (otype, placed.body)


def test_limit_maker_and_stops_reject_what_would_execute_at_once(frozen):
    set_book(frozen, asks=[100_000], bids=[100_000])
    maker = order(frozen, side="BUY", type="LIMIT_MAKER", quantity="0.001", price="90000.05")
    assert maker.body == {"code": -2010, "msg": "Order would immediately match and take."}
    stop = order(frozen, side="SELL", type="STOP_LOSS", quantity="0.001", stopPrice="95000.00")
    assert stop.body == {"code": -2010, "msg": "Stop price would trigger immediately."}


def test_stop_order_triggers_when_the_last_price_reaches_it(frozen, ws_factory):
    set_book(frozen, asks=[100_000], bids=[100_000])
    ws = subscribe(frozen, ws_factory)
    placed = order(frozen, side="SELL", type="STOP_LOSS", quantity="0.001", stopPrice="89999.00").body
    assert placed == {"symbol": "BTCUSDT", "orderId": placed["orderId"], "orderListId": -1,
                      "clientOrderId": placed["clientOrderId"], "transactTime": placed["transactTime"]}  # ACK
    status = signed(frozen, "GET", "/api/v3/order", symbol="BTCUSDT", orderId=placed["orderId"]).body
    assert (status["status"], status["isWorking"], status["stopPrice"]) == ("NEW", False, "89999.00000000")
    set_book(frozen, last=-200)   # the last trade at 89998.00
    events = reports(ws, lambda m: any(e.get("X") == "FILLED" for e in m))
    assert events[-1]["L"] == "89999.99000000" and events[-1]["o"] == "STOP_LOSS"


# -- responses, cancels, counters ----------------------------------------------------------------


def test_new_order_resp_types(frozen):
    set_book(frozen, asks=[100_000], bids=[100_000])
    ack = order(frozen, side="BUY", type="MARKET", quantity="0.001", newOrderRespType="ACK").body
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    result = order(frozen, side="BUY", type="MARKET", quantity="0.001", newOrderRespType="RESULT").body
    assert result["status"] == "FILLED" and "fills" not in result
    full = order(frozen, side="BUY", type="MARKET", quantity="0.001").body    # MARKET defaults to FULL
    assert len(full["fills"]) == 1
    futures = signed(frozen, "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="MARKET",
                     quantity="0.010").body                                     # USD-M defaults to ACK
    assert (futures["status"], futures["executedQty"]) == ("NEW", "0")
    later = signed(frozen, "GET", "/fapi/v1/order", symbol="BTCUSDT", orderId=futures["orderId"]).body
    assert later["status"] == "FILLED"
    result = signed(frozen, "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="MARKET",
                    quantity="0.010", newOrderRespType="RESULT").body
    assert result["status"] == "FILLED" and result["avgPrice"] != "0.00000000"


def test_cancel_has_binance_shape_and_report(frozen, ws_factory):
    ws = subscribe(frozen, ws_factory)
    placed = order(frozen, side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001", price="80000.00",
                   newClientOrderId="mine-1").body
    cancelled = signed(frozen, "DELETE", "/api/v3/order", symbol="BTCUSDT", origClientOrderId="mine-1",
                       newClientOrderId="cancel-1").body
    assert (cancelled["origClientOrderId"], cancelled["clientOrderId"], cancelled["status"]) == (
        "mine-1", "cancel-1", "CANCELED")
    assert isinstance(cancelled["transactTime"], int) and cancelled["orderId"] == placed["orderId"]
    report = reports(ws, lambda m: any(e.get("x") == "CANCELED" for e in m))[-1]
    assert (report["c"], report["C"]) == ("cancel-1", "mine-1")   # user-data-stream.md "Order Update"
    again = signed(frozen, "DELETE", "/api/v3/order", symbol="BTCUSDT", orderId=placed["orderId"])
    assert again.body == {"code": -2011, "msg": "Unknown order sent."}
    resting = signed(frozen, "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                     timeInForce="GTC", quantity="0.010", price="80000.00").body
    gone = signed(frozen, "DELETE", "/fapi/v1/order", symbol="BTCUSDT", orderId=resting["orderId"]).body
    assert gone["status"] == "CANCELED"


def test_order_count_headers(frozen):
    first = order(frozen, side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001", price="80000.00")
    second = order(frozen, side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001", price="80000.00")
    assert (first.headers["X-MBX-ORDER-COUNT-10S"], second.headers["X-MBX-ORDER-COUNT-10S"]) == ("1", "2")
    assert second.headers["X-MBX-ORDER-COUNT-1D"] == "2"
    futures = signed(frozen, "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                     timeInForce="GTC", quantity="0.010", price="80000.00")
    assert futures.headers["X-MBX-ORDER-COUNT-1M"] == "1"


def test_endpoints_clients_call(frozen):
    set_book(frozen, asks=[100_000], bids=[100_000])
    placed = order(frozen, side="BUY", type="MARKET", quantity="0.002").body
    mine = signed(frozen, "GET", "/api/v3/myTrades", symbol="BTCUSDT").body
    assert [t["orderId"] for t in mine] == [placed["orderId"]] and mine[0]["isBuyer"] is True
    fetched = signed(frozen, "GET", "/api/v3/order", symbol="BTCUSDT", orderId=placed["orderId"]).body
    assert fetched["status"] == "FILLED" and fetched["executedQty"] == "0.00200000"
    missing = signed(frozen, "GET", "/api/v3/order", symbol="BTCUSDT", orderId=1)
    assert missing.body == {"code": -2013, "msg": "Order does not exist."}
    avg = get(frozen.base_url + "/api/v3/avgPrice", symbol="BTCUSDT").body
    assert avg["mins"] == 5 and avg["price"] == "90000.00000000"
    tested = signed(frozen, "POST", "/api/v3/order/test", symbol="BTCUSDT", side="BUY", type="MARKET",
                    quantity="0.001")
    assert tested.body == {} and len(signed(frozen, "GET", "/api/v3/allOrders", symbol="BTCUSDT").body) == 1
    assert signed(frozen, "POST", "/api/v3/order/test", symbol="BTCUSDT", side="BUY", type="MARKET",
                  quantity="0.0000001").body["code"] == -1013
    risk = signed(frozen, "GET", "/fapi/v2/positionRisk", symbol="BTCUSDT").body
    assert risk[0]["symbol"] == "BTCUSDT" and risk[0]["positionAmt"] == "0"
    bracket = signed(frozen, "GET", "/fapi/v1/leverageBracket", symbol="BTCUSDT").body
    assert bracket["symbol"] == "BTCUSDT" and bracket["brackets"][0]["initialLeverage"] == 20
    for path in ("/sapi/v1/asset/nothing", "/api/v3/nothing", "/fapi/v1/nothing"):
        unknown = http("GET", frozen.base_url + path)
        assert unknown.status == 404 and unknown.raw == b"<html><body><h2>404 Not found</h2></body></html>"


def test_max_num_orders(frozen):
    def fill_up(core):
        for _ in range(200):
            core.userdata.spot.place({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                      "quantity": "0.001", "price": "80000.00"}, core.hub.advance())
    frozen.call(fill_up)
    over = order(frozen, side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001", price="80000.00")
    assert over.body == {"code": -1013, "msg": "Filter failure: MAX_NUM_ORDERS"}
    assert order(frozen, symbol="ETHUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.01",
                 price="2000.00").status == 200          # per symbol


# -- the pure rules ------------------------------------------------------------------------------


def test_walk_takes_levels_best_first_up_to_the_limit():
    from feedsup.sim.orders import walk
    d = Decimal
    asks = [(d("10.0"), d("1")), (d("10.1"), d("2")), (d("10.2"), d("5"))]
    step = d("0.01")
    assert walk(asks, "BUY", d("2.5"), None, None, step) == [(d("10.0"), d("1")), (d("10.1"), d("1.5"))]
    assert walk(asks, "BUY", d("9"), None, d("10.1"), step) == [(d("10.0"), d("1")), (d("10.1"), d("2"))]
    # by quote amount: whole steps only, never more than the amount
    fills = walk(asks, "BUY", None, d("20.5"), None, step)
    assert fills == [(d("10.0"), d("1")), (d("10.1"), d("1.03"))] and sum(p * q for p, q in fills) <= d("20.5")
    bids = [(d("9.9"), d("1")), (d("9.8"), d("1"))]
    assert walk(bids, "SELL", d("5"), None, d("9.85"), step) == [(d("9.9"), d("1"))]


@pytest.mark.parametrize("stop_loss,side,last,fires", [
    (True, "SELL", "99", True), (True, "SELL", "101", False),     # stop-loss sell: price falls to it
    (True, "BUY", "101", True), (True, "BUY", "99", False),       # stop-loss buy: price rises to it
    (False, "SELL", "101", True), (False, "SELL", "99", False),   # take-profit sell: price rises to it
    (False, "BUY", "99", True), (False, "BUY", "101", False),
])
def test_stop_triggers(stop_loss, side, last, fires):
    from feedsup.sim.orders import triggered
    assert triggered(stop_loss, side, Decimal("100"), Decimal(last)) is fires


def test_time_zone_parameter():
    from feedsup.sim.rest import RestError
    from feedsup.sim.rest_more import time_zone_ms
    assert [time_zone_ms(t) for t in ("0", "8", "-1:00", "05:45", "+14:00")] == [
        0, 8 * 3_600_000, -3_600_000, 20_700_000, 14 * 3_600_000]
    for bad in ("15", "-13:00", "abc", "5:75"):
        with pytest.raises(RestError):
            time_zone_ms(bad)


def test_order_counter_windows():
    from feedsup.sim.limits import OrderCounter
    counter = OrderCounter({"10S": (10.0, 2), "1D": (86_400.0, 100)})
    assert counter.count(0.0) == ({"X-MBX-ORDER-COUNT-10S": "1", "X-MBX-ORDER-COUNT-1D": "1"}, None)
    counter.count(1.0)
    assert counter.count(2.0)[1] == "10S"
    assert counter.count(11.5)[0]["X-MBX-ORDER-COUNT-10S"] == "2"     # the first two left the window
