"""Account REST against Binance's documented shapes, weights and the user-data
events: GET /fapi/v2|v3/account, GET /fapi/v1/openOrders, and the spot
account's balance events and updateTime."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from simhelpers import Http, collect, get, http, wait_until
from test_sim_conformance import BOOL, DEC, INT, SPOT_DEC, STR, check

from feedsup.sim.signing import ws_api_payload

KEY, SECRET = "acct-key", "acct-secret"
D8 = SPOT_DEC   # balances: eight decimals
OPEN_ORDER = {"avgPrice": D8, "clientOrderId": STR, "cumQuote": D8, "executedQty": DEC, "orderId": INT,
              "origQty": DEC, "origType": STR, "price": DEC, "reduceOnly": BOOL, "side": STR, "positionSide": STR,
              "status": STR, "stopPrice": DEC, "closePosition": BOOL, "symbol": STR, "time": INT,
              "timeInForce": STR, "type": STR, "updateTime": INT, "workingType": STR, "priceProtect": BOOL,
              "priceMatch": STR, "selfTradePreventionMode": STR, "goodTillDate": INT}
TOTALS = {"totalInitialMargin": D8, "totalMaintMargin": D8, "totalWalletBalance": D8, "totalUnrealizedProfit": D8,
          "totalMarginBalance": D8, "totalPositionInitialMargin": D8, "totalOpenOrderInitialMargin": D8,
          "totalCrossWalletBalance": D8, "totalCrossUnPnl": D8, "availableBalance": D8, "maxWithdrawAmount": D8}
ASSET_V3 = {"asset": STR, "walletBalance": D8, "unrealizedProfit": D8, "marginBalance": D8, "maintMargin": D8,
            "initialMargin": D8, "positionInitialMargin": D8, "openOrderInitialMargin": D8,
            "crossWalletBalance": D8, "crossUnPnl": D8, "availableBalance": D8, "maxWithdrawAmount": D8,
            "updateTime": INT}
ASSET_V2 = {**ASSET_V3, "marginAvailable": BOOL}
POSITION_V2 = {"symbol": STR, "initialMargin": DEC, "maintMargin": DEC, "unrealizedProfit": D8,
               "positionInitialMargin": DEC, "openOrderInitialMargin": DEC, "leverage": DEC, "isolated": BOOL,
               "entryPrice": DEC, "breakEvenPrice": DEC, "maxNotional": DEC, "bidNotional": DEC,
               "askNotional": DEC, "positionSide": "BOTH", "positionAmt": DEC, "updateTime": INT}
POSITION_V3 = {"symbol": STR, "positionSide": "BOTH", "positionAmt": DEC, "unrealizedProfit": D8,
               "isolatedMargin": DEC, "notional": DEC, "isolatedWallet": DEC, "initialMargin": DEC,
               "maintMargin": DEC, "updateTime": INT}
ACCOUNT_V2_HEAD = {"feeTier": INT, "feeBurn": BOOL, "canTrade": BOOL, "canDeposit": BOOL, "canWithdraw": BOOL,
                   "updateTime": INT, "multiAssetsMargin": BOOL, "tradeGroupId": INT}


@pytest.fixture
def asim(make_sim):
    # An hours-long weight window: the used-weight header then only grows during a test.
    return make_sim(speed=60.0, api_key=KEY, api_secret=SECRET, rest_weight_window=1e9)


def signed(sim, method: str, path: str, key: str = KEY, secret: str = SECRET, **params: Any) -> Http:
    """Signed like a Binance client: wall-clock timestamp, HMAC over the query, key header."""
    params.setdefault("timestamp", int(time.time() * 1000))
    params.setdefault("recvWindow", 5000)
    query = urlencode(params)
    query += "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return http(method, f"{sim.base_url}{path}?{query}", headers={"X-MBX-APIKEY": key} if key else {})


def ok(reply: Http) -> Any:
    assert reply.status == 200, reply.body
    return reply.body


def used_weight(reply: Http) -> int:
    return int(reply.headers["X-MBX-USED-WEIGHT-1M"])


def futures_order(sim, side: str, qty: str, price: str | None = None) -> dict[str, Any]:
    params = {"symbol": "BTCUSDT", "side": side, "quantity": qty, "type": "LIMIT" if price else "MARKET"}
    if price:
        params.update(price=price, timeInForce="GTC")
    return ok(signed(sim, "POST", "/fapi/v1/order", **params))


def far_below(sim, market: str = "usdm") -> str:
    path = "/fapi/v1/ticker/price" if market == "usdm" else "/api/v3/ticker/price"
    price = Decimal(get(sim.base_url + path, symbol="BTCUSDT").body["price"])
    return str((price / 2).quantize(Decimal("0.01")))


def private_ws(sim, ws_factory):
    key = http("POST", sim.base_url + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": KEY}).body["listenKey"]
    return ws_factory(f"{sim.ws_url}/private/ws?listenKey={key}")


def row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


# -- USD-M account ----------------------------------------------------------------------


def test_futures_account_v2_shape_and_agreement_with_account_update(asim, ws_factory):
    ws = private_ws(asim, ws_factory)
    fresh = ok(signed(asim, "GET", "/fapi/v2/account"))
    assert set(fresh) == set(ACCOUNT_V2_HEAD) | set(TOTALS) | {"assets", "positions"}
    check({k: fresh[k] for k in ACCOUNT_V2_HEAD}, ACCOUNT_V2_HEAD, "v2")
    check({k: fresh[k] for k in TOTALS}, TOTALS, "v2")
    assert fresh["updateTime"] == 0, "documented as reserved: 0"
    # v2 lists every symbol, traded or not.
    assert sorted(p["symbol"] for p in fresh["positions"]) == ["BTCUSDT", "ETHUSDT"]
    assert all(p["positionAmt"] == "0" and p["updateTime"] == 0 for p in fresh["positions"])

    futures_order(asim, "BUY", "0.010")
    update = next(e for e in collect(ws, lambda m: any(x["e"] == "ACCOUNT_UPDATE" for x in m))
                  if e["e"] == "ACCOUNT_UPDATE")
    account = ok(signed(asim, "GET", "/fapi/v2/account"))
    for asset in account["assets"]:
        check(asset, ASSET_V2, f"v2.assets.{asset['asset']}")
    for position in account["positions"]:
        check(position, POSITION_V2, f"v2.positions.{position['symbol']}")
    event_position = update["a"]["P"][0]
    btc = row(account["positions"], symbol="BTCUSDT")
    assert (btc["positionAmt"], btc["entryPrice"], btc["breakEvenPrice"], btc["updateTime"]) == \
        (event_position["pa"], event_position["ep"], event_position["bep"], update["T"])
    assert btc["positionAmt"] == "0.010" and Decimal(btc["entryPrice"]) > 0
    assert row(account["positions"], symbol="ETHUSDT")["positionAmt"] == "0"
    for wallet in update["a"]["B"]:
        asset = row(account["assets"], asset=wallet["a"])
        assert (asset["walletBalance"], asset["crossWalletBalance"]) == (wallet["wb"], wallet["cw"])
    usdt = row(account["assets"], asset="USDT")
    assert account["totalWalletBalance"] == account["availableBalance"] == usdt["walletBalance"]


def test_futures_deposit_moves_the_asset_update_time(asim, ws_factory):
    ws = private_ws(asim, ws_factory)
    before = row(ok(signed(asim, "GET", "/fapi/v2/account"))["assets"], asset="USDT")
    reply = http("POST", asim.control_url + "/balance", data={"market": "usdm", "asset": "USDT", "delta": "25"})
    assert reply.status == 200, reply.body
    update = collect(ws, lambda m: len(m) >= 1)[0]
    assert (update["e"], update["a"]["m"]) == ("ACCOUNT_UPDATE", "DEPOSIT")
    after = row(ok(signed(asim, "GET", "/fapi/v2/account"))["assets"], asset="USDT")
    assert Decimal(after["walletBalance"]) - Decimal(before["walletBalance"]) == 25
    assert after["updateTime"] == update["T"] > before["updateTime"]


def test_futures_account_v3_lists_only_active_symbols(asim):
    fresh = ok(signed(asim, "GET", "/fapi/v3/account"))
    assert set(fresh) == set(TOTALS) | {"assets", "positions"}, "v3 has no account flags"
    check({k: fresh[k] for k in TOTALS}, TOTALS, "v3")
    assert fresh["positions"] == []
    for asset in fresh["assets"]:
        check(asset, ASSET_V3, f"v3.assets.{asset['asset']}")
    futures_order(asim, "BUY", "0.010", price=far_below(asim))   # rests: a symbol with open orders
    resting = ok(signed(asim, "GET", "/fapi/v3/account"))["positions"]
    assert [(p["symbol"], p["positionAmt"]) for p in resting] == [("BTCUSDT", "0")]
    futures_order(asim, "SELL", "0.005")
    position = row(ok(signed(asim, "GET", "/fapi/v3/account"))["positions"], symbol="BTCUSDT")
    check(position, POSITION_V3, "v3.positions.BTCUSDT")
    assert position["positionAmt"] == "-0.005" and Decimal(position["notional"]) < 0


# -- USD-M open orders ----------------------------------------------------------------


def test_futures_open_orders_match_order_trade_update(asim, ws_factory):
    ws = private_ws(asim, ws_factory)
    placed = futures_order(asim, "BUY", "0.020", price=far_below(asim))
    assert placed["status"] == "NEW"
    new = collect(ws, lambda m: len(m) >= 1)[0]["o"]
    orders = ok(signed(asim, "GET", "/fapi/v1/openOrders"))
    assert len(orders) == 1
    check(orders[0], OPEN_ORDER, "openOrders[0]")
    got = orders[0]
    assert (got["orderId"], got["clientOrderId"], got["price"], got["origQty"], got["status"], got["type"],
            got["side"], got["timeInForce"], got["executedQty"]) == \
        (new["i"], new["c"], new["p"], new["q"], new["X"], new["o"], new["S"], new["f"], new["z"])
    assert got["time"] == got["updateTime"] == new["T"]
    assert ok(signed(asim, "GET", "/fapi/v1/openOrders", symbol="BTCUSDT")) == orders
    assert ok(signed(asim, "GET", "/fapi/v1/openOrders", symbol="ETHUSDT")) == []
    futures_order(asim, "SELL", "0.010")          # a market fill leaves the resting order open
    assert [o["orderId"] for o in ok(signed(asim, "GET", "/fapi/v1/openOrders"))] == [placed["orderId"]]


def test_futures_open_orders_rejections(asim):
    bad_symbol = signed(asim, "GET", "/fapi/v1/openOrders", symbol="NOPEUSDT")
    assert (bad_symbol.status, bad_symbol.body["code"]) == (400, -1121)
    for path in ("/fapi/v1/openOrders", "/fapi/v2/account", "/fapi/v3/account"):
        assert signed(asim, "GET", path, secret="wrong").body["code"] == -1022, path
        no_key = signed(asim, "GET", path, key="")
        assert (no_key.status, no_key.body["code"]) == (401, -2014), path
        assert signed(asim, "GET", path, timestamp=1000).body["code"] == -1021, path
        unsigned = http("GET", f"{asim.base_url}{path}?timestamp={int(time.time() * 1000)}",
                        headers={"X-MBX-APIKEY": KEY})
        assert unsigned.body["code"] == -1102, path


def test_account_request_weights_as_documented(asim):
    futures = [signed(asim, "GET", "/fapi/v2/account"), signed(asim, "GET", "/fapi/v3/account"),
               signed(asim, "GET", "/fapi/v1/openOrders", symbol="BTCUSDT"),
               signed(asim, "GET", "/fapi/v1/openOrders")]
    assert [used_weight(r) for r in futures] == [5, 10, 11, 51]     # 5, 5, 1 with a symbol, 40 without
    spot = [signed(asim, "GET", "/api/v3/account"), signed(asim, "GET", "/api/v3/openOrders", symbol="BTCUSDT"),
            signed(asim, "GET", "/api/v3/openOrders")]
    assert [used_weight(r) for r in spot] == [20, 26, 106]          # 20, 6 with a symbol, 80 without


# -- spot: balance events and updateTime ------------------------------------------------


def ws_api_subscribe(sim, ws_factory):
    ws = ws_factory(sim.ws_api_url)
    params = {"apiKey": KEY, "timestamp": int(time.time() * 1000)}
    params["signature"] = hmac.new(SECRET.encode(), ws_api_payload(params).encode(), hashlib.sha256).hexdigest()
    ws.send(json.dumps({"id": 1, "method": "userDataStream.subscribe.signature", "params": params}))
    assert json.loads(ws.recv())["status"] == 200
    return ws


def spot_limit_buy(sim, qty: str, price: str) -> dict[str, Any]:
    return ok(signed(sim, "POST", "/api/v3/order", symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                     quantity=qty, price=price))


def test_resting_spot_limit_order_sends_outbound_account_position(asim, ws_factory):
    ws = ws_api_subscribe(asim, ws_factory)
    placed = spot_limit_buy(asim, "0.5", "1000.00")
    assert placed["status"] == "NEW"
    events = [m["event"] for m in collect(ws, lambda m: len(m) >= 2)]
    assert [(e["e"], e.get("x")) for e in events] == [("executionReport", "NEW"), ("outboundAccountPosition", None)]
    position = events[1]
    check({k: v for k, v in position.items() if k != "B"}, {"e": "outboundAccountPosition", "E": INT, "u": INT})
    for balance in position["B"]:
        check(balance, {"a": STR, "f": D8, "l": D8}, "outboundAccountPosition.B")
    assert position["B"] == [{"a": "USDT", "f": "99500.00000000", "l": "500.00000000"}], "only what changed"
    balances = ok(signed(asim, "GET", "/api/v3/account"))["balances"]
    assert row(balances, asset="USDT") == {"asset": "USDT", "free": "99500.00000000", "locked": "500.00000000"}

    ok(signed(asim, "DELETE", "/api/v3/order", symbol="BTCUSDT", orderId=placed["orderId"]))
    events = [m["event"] for m in collect(ws, lambda m: len(m) >= 2)]
    assert [(e["e"], e.get("x")) for e in events] == [("executionReport", "CANCELED"),
                                                      ("outboundAccountPosition", None)]
    assert events[1]["B"] == [{"a": "USDT", "f": "100000.00000000", "l": "0.00000000"}]


def test_spot_account_update_time_is_the_last_balance_change(asim, ws_factory):
    ws = ws_api_subscribe(asim, ws_factory)
    assert ok(signed(asim, "GET", "/api/v3/account"))["updateTime"] == asim.options.start_ms, "no change yet"
    spot_limit_buy(asim, "0.1", "1000.00")
    position = next(m["event"] for m in collect(ws, lambda m: len(m) >= 2)
                    if m["event"]["e"] == "outboundAccountPosition")
    assert ok(signed(asim, "GET", "/api/v3/account"))["updateTime"] == position["u"]
    # Simulated time moves on (60x); with no balance change updateTime stays.
    later = position["u"] + 2000
    wait_until(lambda: get(asim.base_url + "/api/v3/time").body["serverTime"] >= later, what="2 s of sim time")
    assert ok(signed(asim, "GET", "/api/v3/account"))["updateTime"] == position["u"]
    reply = http("POST", asim.control_url + "/balance", data={"asset": "USDT", "delta": "1"})
    assert reply.status == 200, reply.body
    deposit = next(m["event"] for m in collect(ws, lambda m: any(x["event"]["e"] == "outboundAccountPosition"
                                                                 for x in m))
                   if m["event"]["e"] == "outboundAccountPosition")
    assert deposit["u"] >= later
    assert ok(signed(asim, "GET", "/api/v3/account"))["updateTime"] == deposit["u"]
