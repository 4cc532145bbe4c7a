"""Pure account cores: event and snapshot normalisers on Binance's documented
payloads, ordering keys against the parent's sequencer, request signing
against Binance's documented examples, error classification.
"""

from __future__ import annotations

import copy
import random

import pytest

from feedsup.credentials import Credentials
from feedsup.supervisor.sequencer import Sequencer, is_newer
from feedsup.binance.rest import classify_rejection, ws_api_payload
from feedsup.workers.signed_rest import signed_query
from feedsup.binance.account_normalise import (
    REPLAY_MINOR, EventOrder, change_time, is_replay, normalise_spot, normalise_usdm, spot_snapshot, usdm_snapshot,
)
from feedsup.workers.account_spot import SUBSCRIBE, subscribe_request, subscription_id
from feedsup.workers.account_usdm import private_url
from feedsup.binance.normalise import MalformedEvent
from feedsup.workers.runtime import ConnectionEnded

# --- Binance's documented payloads (user-data-stream.md, futures user data docs) ----------

EXECUTION_REPORT = {
    "e": "executionReport", "E": 1499405658658, "s": "ETHBTC", "c": "mUvoqJxFIILMdfAW5iGSOW",
    "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "1.00000000", "p": "0.10264410", "P": "0.00000000",
    "F": "0.00000000", "g": -1, "C": "", "x": "NEW", "X": "NEW", "r": "NONE", "i": 4293153,
    "l": "0.00000000", "z": "0.00000000", "L": "0.00000000", "n": "0", "N": None,
    "T": 1499405658657, "t": -1, "v": 3, "I": 8641984, "w": True, "m": False, "M": False,
    "O": 1499405658657, "Z": "0.00000000", "Y": "0.00000000", "Q": "0.00000000",
    "W": 1499405658657, "V": "NONE",
}
ACCOUNT_POSITION = {"e": "outboundAccountPosition", "E": 1564034571105, "u": 1564034571073,
                    "B": [{"a": "ETH", "f": "10000.000000", "l": "0.000000"}]}
BALANCE_UPDATE = {"e": "balanceUpdate", "E": 1573200697110, "a": "BTC", "d": "100.00000000",
                  "T": 1573200697068}
ACCOUNT_UPDATE = {
    "e": "ACCOUNT_UPDATE", "E": 1564745798939, "T": 1564745798938,
    "a": {"m": "ORDER",
          "B": [{"a": "USDT", "wb": "122624.12345678", "cw": "100.12345678", "bc": "50.12345678"}],
          "P": [{"s": "BTCUSDT", "pa": "0", "ep": "0.00000", "bep": "0", "cr": "200", "up": "0",
                 "mt": "isolated", "iw": "0.00000000", "ps": "BOTH"}]},
}
ORDER_TRADE_UPDATE = {
    "e": "ORDER_TRADE_UPDATE", "E": 1568879465651, "T": 1568879465650,
    "o": {"s": "BTCUSDT", "c": "TEST", "S": "SELL", "o": "TRAILING_STOP_MARKET", "f": "GTC",
          "q": "0.001", "p": "0", "ap": "0", "sp": "7103.04", "x": "NEW", "X": "NEW", "i": 8886774,
          "l": "0", "z": "0", "L": "0", "N": "USDT", "n": "0", "T": 1568879465650, "t": 0, "b": "0",
          "a": "9.91", "m": False, "R": False, "wt": "CONTRACT_PRICE", "ot": "TRAILING_STOP_MARKET",
          "ps": "LONG", "cp": False, "AP": "7476.89", "cr": "5.0", "pP": False, "si": 0, "ss": 0,
          "rp": "0", "V": "EXPIRE_TAKER", "pm": "OPPONENT", "gtd": 0},
}
SPOT_ACCOUNT = {
    "makerCommission": 15, "takerCommission": 15, "buyerCommission": 0, "sellerCommission": 0,
    "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
    "requireSelfTradePrevention": False, "preventSor": False, "updateTime": 123456789,
    "accountType": "SPOT",
    "balances": [{"asset": "BTC", "free": "4723846.89208129", "locked": "0.00000000"},
                 {"asset": "LTC", "free": "4763368.68006011", "locked": "0.00000000"}],
    "permissions": ["SPOT"], "uid": 354937868,
}
SPOT_OPEN_ORDERS = [{
    "symbol": "LTCBTC", "orderId": 1, "orderListId": -1, "clientOrderId": "myOrder1", "price": "0.1",
    "origQty": "1.0", "executedQty": "0.0", "cummulativeQuoteQty": "0.0", "status": "NEW",
    "timeInForce": "GTC", "type": "LIMIT", "side": "BUY", "stopPrice": "0.0", "icebergQty": "0.0",
    "time": 1499827319559, "updateTime": 1499827319559, "isWorking": True,
    "origQuoteOrderQty": "0.000000", "workingTime": 1499827319559, "selfTradePreventionMode": "NONE",
}]
FUTURES_ACCOUNT = {
    "assets": [{"asset": "USDT", "walletBalance": "23.72469206", "unrealizedProfit": "0.00000000",
                "marginBalance": "23.72469206", "maintMargin": "0.00000000", "initialMargin": "0.00000000",
                "crossWalletBalance": "23.72469206", "crossUnPnl": "0.00000000",
                "availableBalance": "23.72469206", "maxWithdrawAmount": "23.72469206",
                "marginAvailable": True, "updateTime": 1625474304765}],
    "positions": [{"symbol": "BTCUSDT", "initialMargin": "0", "maintMargin": "0",
                   "unrealizedProfit": "0.00000000", "leverage": "100", "isolated": True,
                   "entryPrice": "0.00000", "breakEvenPrice": "0.0", "maxNotional": "250000",
                   "positionSide": "BOTH", "positionAmt": "0", "updateTime": 0}],
}
FUTURES_OPEN_ORDERS = [{
    "avgPrice": "0.00000", "clientOrderId": "abc", "cumQuote": "0", "executedQty": "0",
    "orderId": 1917641, "origQty": "0.40", "origType": "TRAILING_STOP_MARKET", "price": "0",
    "reduceOnly": False, "side": "BUY", "positionSide": "SHORT", "status": "NEW", "stopPrice": "9300",
    "closePosition": False, "symbol": "BTCUSDT", "time": 1579276756075, "timeInForce": "GTC",
    "type": "TRAILING_STOP_MARKET", "activatePrice": "9020", "priceRate": "0.3",
    "updateTime": 1579276756075, "workingType": "CONTRACT_PRICE", "priceProtect": False,
    "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0,
}]


# --- events ------------------------------------------------------------------------------

def test_execution_report_keeps_every_documented_field_under_a_name():
    topic, data, e = normalise_spot(EXECUTION_REPORT)
    assert (topic, e) == ("account.executionReport", 1499405658658)
    # Every field but the event type and the two Binance marks "ignore".
    assert len(data) == len(EXECUTION_REPORT) - 3
    assert data["order_id"] == 4293153 and type(data["order_id"]) is int
    assert data["client_order_id"] == "mUvoqJxFIILMdfAW5iGSOW"
    assert (data["side"], data["order_type"], data["time_in_force"]) == ("BUY", "LIMIT", "GTC")
    assert (data["execution_type"], data["order_status"]) == ("NEW", "NEW")
    assert data["price"] == "0.10264410" and data["quantity"] == "1.00000000"   # strings stay strings
    assert data["cumulative_filled_quantity"] == "0.00000000"
    assert data["transaction_time"] == 1499405658657 and data["event_time"] == 1499405658658
    assert data["is_on_book"] is True and data["is_maker"] is False
    assert data["commission_asset"] is None and data["trade_id"] == -1
    assert data["working_time"] == 1499405658657 and data["prevented_match_id"] == 3


def test_execution_report_optional_fields_appear_only_when_sent():
    event = {k: v for k, v in EXECUTION_REPORT.items() if k not in ("W", "v")}
    _, data, _ = normalise_spot(event)
    assert "working_time" not in data and "prevented_match_id" not in data


def test_outbound_account_position_and_balance_update():
    assert normalise_spot(ACCOUNT_POSITION) == ("account.outboundAccountPosition", {
        "event_time": 1564034571105, "last_update_time": 1564034571073,
        "balances": [{"asset": "ETH", "free": "10000.000000", "locked": "0.000000"}],
    }, 1564034571105)
    assert normalise_spot(BALANCE_UPDATE) == ("account.balanceUpdate", {
        "event_time": 1573200697110, "asset": "BTC", "delta": "100.00000000",
        "clear_time": 1573200697068,
    }, 1573200697110)


def test_account_update():
    topic, data, e = normalise_usdm(ACCOUNT_UPDATE)
    assert (topic, e) == ("account.ACCOUNT_UPDATE", 1564745798939)
    assert data == {
        "event_time": 1564745798939, "transaction_time": 1564745798938, "reason": "ORDER",
        "balances": [{"asset": "USDT", "wallet_balance": "122624.12345678",
                      "cross_wallet_balance": "100.12345678", "balance_change": "50.12345678"}],
        "positions": [{"symbol": "BTCUSDT", "position_amount": "0", "entry_price": "0.00000",
                       "break_even_price": "0", "accumulated_realized": "200", "unrealized_pnl": "0",
                       "margin_type": "isolated", "isolated_wallet": "0.00000000",
                       "position_side": "BOTH"}],
    }


def test_order_trade_update_keeps_every_documented_field_under_a_name():
    topic, data, e = normalise_usdm(ORDER_TRADE_UPDATE)
    assert (topic, e) == ("account.ORDER_TRADE_UPDATE", 1568879465651)
    assert len(data) == len(ORDER_TRADE_UPDATE["o"]) + 2          # + event and transaction time
    assert data["order_id"] == 8886774 and data["symbol"] == "BTCUSDT"
    assert (data["order_status"], data["execution_type"], data["position_side"]) == ("NEW", "NEW", "LONG")
    assert data["stop_price"] == "7103.04" and data["activation_price"] == "7476.89"
    assert data["callback_rate"] == "5.0" and data["reduce_only"] is False
    assert data["trade_time"] == 1568879465650 and data["transaction_time"] == 1568879465650


OPTIONAL = {"I", "M", "W", "v"}   # executionReport: "ignore" fields and optional ones


@pytest.mark.parametrize("normalise, event", [
    (normalise_spot, EXECUTION_REPORT), (normalise_spot, ACCOUNT_POSITION), (normalise_spot, BALANCE_UPDATE),
    (normalise_usdm, ACCOUNT_UPDATE), (normalise_usdm, ORDER_TRADE_UPDATE),
])
def test_missing_fields_and_bad_event_times_are_malformed(normalise, event):
    for key in set(event) - OPTIONAL:
        with pytest.raises(MalformedEvent):
            normalise({k: v for k, v in event.items() if k != key})
    for bad in ("1", -1, 1.5, None, 1 << 63):
        with pytest.raises(MalformedEvent):
            normalise({**event, "E": bad})
    with pytest.raises(MalformedEvent):
        normalise([event])


def test_events_of_the_other_market_are_malformed():
    with pytest.raises(MalformedEvent):
        normalise_spot(ACCOUNT_UPDATE)
    with pytest.raises(MalformedEvent):
        normalise_usdm(EXECUTION_REPORT)


# --- snapshots ---------------------------------------------------------------------------

def test_spot_snapshot():
    data = spot_snapshot(SPOT_ACCOUNT, SPOT_OPEN_ORDERS, {"serverTime": 1499827319000})
    assert data["market"] == "spot" and data["update_time"] == 123456789
    assert (data["time"], data["as_of"]) == (1499827319000, 1499827319559)   # an order changed later
    assert data["balances"] == [{"asset": "BTC", "free": "4723846.89208129", "locked": "0.00000000"},
                                {"asset": "LTC", "free": "4763368.68006011", "locked": "0.00000000"}]
    assert data["open_orders"] == [{
        "symbol": "LTCBTC", "order_id": 1, "order_list_id": -1, "client_order_id": "myOrder1",
        "price": "0.1", "quantity": "1.0", "cumulative_filled_quantity": "0.0",
        "cumulative_quote_quantity": "0.0", "order_status": "NEW", "time_in_force": "GTC",
        "order_type": "LIMIT", "side": "BUY", "stop_price": "0.0", "iceberg_quantity": "0.0",
        "order_creation_time": 1499827319559, "update_time": 1499827319559, "is_working": True,
        "quote_order_quantity": "0.000000", "working_time": 1499827319559,
        "self_trade_prevention_mode": "NONE",
    }]


def test_usdm_snapshot():
    data = usdm_snapshot(FUTURES_ACCOUNT, FUTURES_OPEN_ORDERS, {"serverTime": 1700000000000})
    assert data["market"] == "usdm"
    assert (data["time"], data["as_of"]) == (1700000000000, 1700000000000)
    assert data["balances"] == [{
        "asset": "USDT", "wallet_balance": "23.72469206", "cross_wallet_balance": "23.72469206",
        "unrealized_profit": "0.00000000", "margin_balance": "23.72469206",
        "available_balance": "23.72469206", "max_withdraw_amount": "23.72469206",
        "update_time": 1625474304765,
    }]
    assert data["positions"] == [{
        "symbol": "BTCUSDT", "position_side": "BOTH", "position_amount": "0", "entry_price": "0.00000",
        "break_even_price": "0.0", "unrealized_pnl": "0.00000000", "isolated": True, "leverage": "100",
        "update_time": 0,
    }]
    order = data["open_orders"][0]
    assert (order["order_id"], order["order_status"], order["position_side"]) == (1917641, "NEW", "SHORT")
    assert order["activation_price"] == "9020" and order["callback_rate"] == "0.3"
    assert order["cumulative_filled_quantity"] == "0" and order["update_time"] == 1579276756075


def test_snapshot_of_an_unexpected_reply_is_malformed():
    with pytest.raises(MalformedEvent):
        spot_snapshot({"code": -1000, "msg": "x"}, [], {"serverTime": 1})
    with pytest.raises(MalformedEvent):
        usdm_snapshot(FUTURES_ACCOUNT, [{"orderId": 1}], {"serverTime": 1})
    with pytest.raises(MalformedEvent):
        spot_snapshot(SPOT_ACCOUNT, [], {"serverTime": "soon"})
    with pytest.raises(MalformedEvent):
        usdm_snapshot(FUTURES_ACCOUNT, [], {})


def test_change_time_is_the_time_the_change_happened():
    """The time compared with a snapshot's ``as_of``: Binance's transaction,
    clear or update time, never later than the event time."""
    topic, data, e = normalise_spot({"e": "balanceUpdate", "E": 1000, "a": "BTC", "d": "1", "T": 990})
    assert change_time(topic + ".acct", data, e) == 990
    topic, data, e = normalise_spot({"e": "outboundAccountPosition", "E": 1000, "u": 995, "B": []})
    assert change_time(topic + ".acct", data, e) == 995
    topic, data, e = normalise_spot(EXECUTION_REPORT)
    assert change_time(topic, data, e) == EXECUTION_REPORT["T"]
    assert change_time("account.balanceUpdate.acct", {"clear_time": 2000}, 1000) == 1000
    assert change_time("account.balanceUpdate.acct", {"clear_time": "x"}, 1000) == 1000


# --- ordering keys -------------------------------------------------------------------------

def test_keys_share_e_without_colliding_and_follow_new_event_times():
    order = EventOrder()
    assert order.key("account.executionReport", 100) == (100, 1)
    assert order.key("account.executionReport", 100) == (100, 2)   # NEW and TRADE of one fill
    assert order.key("account.outboundAccountPosition", 100) == (100, 1)   # per topic
    assert order.key("account.executionReport", 101) == (101, 1)
    assert order.key("account.executionReport", 99) == (101, 2)    # never backwards


def test_replay_keys_pass_what_the_other_connection_delivered_and_live_keys_continue():
    order = EventOrder()
    r = REPLAY_MINOR
    keys = order.replay([("account.a", 100), ("account.b", 90), ("account.a", 105), ("account.a", 105)])
    assert keys == [(105, r + 1), (90, r + 1), (105, r + 2), (105, r + 3)]
    assert all(is_replay(m) for _, m in keys) and not is_replay(1)
    assert order.key("account.a", 105) == (105, r + 4)   # rest of the run: still above the replays
    assert order.key("account.a", 106) == (106, 1)       # a new E: keyed like any connection would
    assert order.key("account.b", 91) == (91, 1)


def _frames(events: list[tuple[str, int]]) -> list[tuple[str, int, int, int]]:
    """(topic, E) per event -> (topic, event index, major, minor) as one connection keys them."""
    order = EventOrder()
    return [(t, i, *order.key(t, e)) for i, (t, e) in enumerate(events)]


def test_overlapping_connections_deliver_each_event_once_through_the_sequencer():
    rng = random.Random(7)
    topics = ["account.executionReport", "account.outboundAccountPosition"]
    events, e = [], 1_000
    for _ in range(300):
        e += rng.choice((0, 0, 1, 5))          # many events share an event time
        events.append((rng.choice(topics), e))
    boundaries = [i for i in range(1, 300) if events[i][1] != events[i - 1][1]]
    for _ in range(50):
        # The old connection saw events[:stop]; the new one subscribed before
        # ``stop`` (overlap) at a moment between two event times. The old
        # connection's earlier frames reached the parent while the new one
        # fetched its snapshot; from then on the parent receives both
        # connections' frames interleaved at random.
        start = rng.choice(boundaries[:-5])
        stop = rng.randrange(start + 1, 301)
        old = _frames(events[:stop])
        new = [(t, i + start, M, m) for t, i, M, m in _frames(events[start:])]
        merged, a, b = old[:start], start, 0
        while a < len(old) or b < len(new):
            if b >= len(new) or (a < len(old) and rng.random() < 0.5):
                merged.append(old[a])
                a += 1
            else:
                merged.append(new[b])
                b += 1
        seq = Sequencer()
        delivered = [(i, m) for t, i, M, m in merged if seq.admit(t.encode(), M, m, False)]
        assert sorted(i for i, _ in delivered) == list(range(len(events))), "each event exactly once"


def test_keys_of_one_connection_are_always_newer():
    order = EventOrder()
    rng = random.Random(3)
    last = None
    for _ in range(500):
        key = order.key("t", rng.randrange(100, 110))
        assert last is None or is_newer((*last, False), *key, False)
        last = key


# --- signing and replies ------------------------------------------------------------------

DOC_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"


def test_rest_signature_matches_binances_documented_example():
    query = signed_query({"symbol": "LTCBTC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                          "quantity": 1, "price": 0.1}, Credentials("k", DOC_SECRET), 1499827319559)
    assert query["signature"] == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    assert list(query)[-3:] == ["recvWindow", "timestamp", "signature"]


def test_ws_api_payload_matches_binances_documented_example():
    params = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC",
              "quantity": "0.01000000", "price": "52000.00", "newOrderRespType": "ACK",
              "recvWindow": 100, "timestamp": 1645423376532,
              "apiKey": "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"}
    signature = Credentials("k", DOC_SECRET).sign(ws_api_payload(params))
    assert signature == "cc15477742bd704c29492d96c7ead9414dfd8e0ec4a00f947bb5bb454ddbd08a"


def test_subscribe_request_is_signed_over_its_sorted_params():
    creds = Credentials("my-key", "my-secret")
    req = subscribe_request(creds, 1_700_000_000_000)
    assert req["method"] == SUBSCRIBE
    params = req["params"]
    assert (params["apiKey"], params["timestamp"], params["recvWindow"]) == \
        ("my-key", 1_700_000_000_000, 5000)
    assert params["signature"] == creds.sign(
        "apiKey=my-key&recvWindow=5000&timestamp=1700000000000")


def test_subscribe_request_signed_with_ed25519_verifies():
    ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
    key = ed25519.Ed25519PrivateKey.generate()
    req = subscribe_request(Credentials("my-key", ed25519_key=key), 1_700_000_000_000)
    import base64
    key.public_key().verify(base64.b64decode(req["params"]["signature"]),
                            ws_api_payload(req["params"]).encode())   # raises if wrong


def test_subscribe_reply():
    assert subscription_id({"id": "x", "status": 200, "result": {"subscriptionId": 4}}) == 4
    with pytest.raises(ConnectionEnded) as bad:
        subscription_id({"id": "x", "status": 401, "error": {"code": -2015, "msg": "Invalid API-key"}})
    assert bad.value.fatal and "-2015" in bad.value.reason
    with pytest.raises(ConnectionEnded) as clock:
        subscription_id({"id": "x", "status": 400, "error": {"code": -1021, "msg": "Timestamp"}})
    assert not clock.value.fatal
    with pytest.raises(ConnectionEnded) as odd:
        subscription_id("nonsense")
    assert not odd.value.fatal


@pytest.mark.parametrize("status, body, fatal", [
    (400, {"code": -1022, "msg": "Signature for this request is not valid."}, True),
    (401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}, True),
    (401, {"code": -2014, "msg": "API-key format invalid."}, True),
    (401, None, True),
    (400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}, False),
    (400, {"code": -1125, "msg": "This listenKey does not exist."}, False),
    (429, {"code": -1003, "msg": "Too many requests"}, False),
    (503, "<html>busy</html>", False),
])
def test_classify_rejection(status, body, fatal):
    reason, is_fatal = classify_rejection("GET /x", status, copy.deepcopy(body))
    assert is_fatal is fatal and reason.startswith("GET /x: ") and f"HTTP {status}" in reason


def test_listen_key_helpers():
    # The keepalive period is the config key listen_key_keepalive now:
    # tests/test_config_worker_keys.py checks its default, values and errors.
    assert private_url("wss://fstream.binance.com/", "a/b+c") == \
        "wss://fstream.binance.com/private/ws?listenKey=a%2Fb%2Bc"


def test_snapshot_plus_replays_rebuild_exact_state_through_a_rotation():
    """Model of a make-before-break handover through the parent's sequencer.

    Events set an item to a value (absolute, like Binance's). The old
    connection delivers events[:stop]. The successor subscribes at ``sub``,
    reads the REST snapshot after ``snap`` events, has received events up to
    ``drained`` when it publishes the snapshot, replays events[sub:drained],
    then streams live. The parent sees both streams interleaved at random
    (each in its own order). The old one's frames of events before ``sub``
    reached the parent before the snapshot (the successor spent a connect
    and a REST round trip in between); of events after ``drained`` after it
    (they had not happened when the snapshot went out). The consumer replaces
    its state with the snapshot and applies every admitted event in order: it
    must end exact, and only replays may repeat an event."""
    rng = random.Random(11)
    for _ in range(300):
        n = rng.randrange(5, 60)
        events, e = [], 1_000
        for _ in range(n):
            e += rng.choice((0, 1, 3))
            events.append((rng.choice(("account.a", "account.b")), e, rng.randrange(4), rng.random()))
        # Subscribing and draining happen between two event times: Binance
        # pushes the events of one matching step (one E) together.
        cuts = [0] + [i for i in range(1, n) if events[i][1] != events[i - 1][1]] + [n]
        sub = rng.choice(cuts[:-1])
        snap = rng.randrange(sub, n + 1)
        drained = rng.choice([c for c in cuts if c >= snap])
        stop = rng.randrange(sub, n + 1)
        truth = {}
        for _, _, item, value in events[:snap]:
            truth[item] = value
        snapshot = dict(truth)
        old_keys = EventOrder()
        old = [("event", i, False, *old_keys.key(events[i][0], events[i][1])) for i in range(stop)]
        order = EventOrder()
        replay_keys = order.replay([(t, e) for t, e, _, _ in events[sub:drained]])
        # The snapshot and its replays travel as one uplink message, which the
        # parent handles in one go.
        handover = [("snapshot", -1, False, 0, 0)]
        handover += [("event", sub + k, True, *key) for k, key in enumerate(replay_keys)]
        new = [handover] + [[("event", i, False, *order.key(events[i][0], events[i][1]))]
                            for i in range(drained, n)]
        merged, a, b = old[:sub], sub, 0
        while a < len(old) or b < len(new):
            old_may = a < len(old) and (b > 0 or old[a][1] < drained)
            if b >= len(new) or (old_may and rng.random() < 0.5):
                merged.append(old[a])
                a += 1
            else:
                merged += new[b]
                b += 1
        seq = Sequencer()
        state: dict = {}
        live_seen: list[int] = []
        for kind, i, _, major, minor in merged:
            if kind == "snapshot":
                state = dict(snapshot)
                continue
            topic, _, item, value = events[i]
            if seq.admit(topic.encode(), major, minor, False):
                state[item] = value
                if not is_replay(minor):
                    live_seen.append(i)
        final = dict(snapshot)
        for _, _, item, value in events[snap:]:
            final[item] = value
        assert state == final
        assert len(live_seen) == len(set(live_seen)), "no live event twice"


def test_listen_key_leases_let_only_the_last_user_delete(tmp_path):
    import subprocess
    import sys
    from feedsup.workers.account_usdm import KeyLeases

    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        retiring, successor = KeyLeases(str(tmp_path), "key-1"), KeyLeases(str(tmp_path), "key-1", other.pid)
        retiring.take()
        successor.take()
        assert KeyLeases(str(tmp_path), "key-2").release(), "another key's users do not count"
        assert not retiring.release(), "the successor still uses the key: keep it"
    finally:
        other.communicate(b"")
    assert KeyLeases(str(tmp_path), "key-1").release(), "a dead worker's lease does not count"
    assert KeyLeases("", "key-1").release(), "outside a parent: always the last user"
    assert "key-1" not in " ".join(p.name for p in tmp_path.rglob("*")), "the key is not written to disk"
