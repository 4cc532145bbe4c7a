"""Binance account events and REST snapshots -> feedsup's normalised data.

Pure functions, no I/O. Topics are ``account.<event>`` (spot
``outboundAccountPosition``, ``balanceUpdate``, ``executionReport``; USD-M
``ACCOUNT_UPDATE``, ``ORDER_TRADE_UPDATE``) and ``account.snapshot``; the
worker publishes them as ``account.<event>.<stream name>``, so that two
account streams never share a topic (see ``account.stream_topic``).

Field names are explicit snake_case; decimals stay the exchange's strings,
times int milliseconds. Optional Binance fields (sent only for some orders)
appear only when Binance sent them.

Ordering keys. The parent drops a frame whose key is not newer than the
topic's last one, so an account key must (1) never go backwards within one
connection, or the connection's own events would be dropped, and (2) be the
same for the same event on two overlapping connections (rotation), so the
copy is dropped. Binance keeps ``E`` strictly ordered per event type on one
connection but several events may share one ``E`` (a fill's NEW and TRADE
reports): ``EventOrder`` makes the key ``(E, n)``, ``n`` counting events of
that topic with that ``E``. It depends only on the event sequence, which every
connection of one account sees alike, so copies get equal keys. Across a
restart ``E`` moves on, so the first new event is always newer.

Snapshots and replays. After every (re)connect the worker subscribes first,
takes the snapshot second (account, open orders, then the server time), and
publishes the snapshot before any event it received after subscribing;
those events follow it at once as *replays* (``backfill: true``). In a
rotation the old worker may have delivered some of them just before the
snapshot (and the snapshot may lack them), so replays are keyed to pass the
parent again: ``replay`` keys them ``(newest E of the topic, REPLAY_MINOR +
i)``, above anything delivered up to that E, and the connection's later
events at that E continue from there. An event received after the snapshot
is also flagged ``backfill: true`` when its change time (``change_time``:
Binance's transaction, clear or update time) is at or before the snapshot's
``as_of``: the exchange made it before the snapshot was complete, so the
snapshot may contain it, however late its push came. Snapshots are keyed by
the exchange's ``time`` (server time after the answers), never our clock.

Consumer rule (snapshot + events = exact state), per stream: subscribe to
``account.`` (one subscriber socket, so frames keep the parent's order),
replace your state with each ``account.snapshot.<stream>``, then apply
every later event of that stream in order:

- frames without ``backfill`` are new to the snapshot: apply them;
- ``backfill: true`` frames may already be in the snapshot (or repeat an
  earlier frame). Events with absolute values (balances in
  ``outboundAccountPosition``/``ACCOUNT_UPDATE``, order status and
  cumulative fills, positions) are safe to apply again. Count fills by
  (order id, trade id).
- ``balanceUpdate`` is a *delta*. Prefer balances from
  ``outboundAccountPosition``. To sum deltas, skip a ``backfill: true``
  balanceUpdate whose ``clear_time`` is at or before the snapshot's
  ``update_time`` (the account's last balance change the snapshot holds):
  the snapshot already includes it.

Residual risks (documented, not handled): (1) if a run of events sharing one
E straddles the successor's subscribe or drain moment *and* the old worker
is ahead of the successor in delivering, the rest of that run can be
dropped. Binance pushes one matching step's events together, so both
conditions together are very unlikely. (2) In a make-before-break rotation
the old worker keeps publishing live until it is stopped; an event it
delivers after the successor's snapshot that the snapshot already contains
reaches the consumer without ``backfill`` (the successor's flagged copy is
then the duplicate the parent drops). Harmless for absolute values; a
consumer summing ``balanceUpdate`` deltas can double-count it. The parent
would have to stop admitting the old instance's account frames once the
successor's snapshot is out to close this.
"""

from __future__ import annotations

from typing import Any, Iterable

from feedsup.ipc.topics import account_topic
from feedsup.binance.normalise import MalformedEvent

SNAPSHOT_TOPIC = account_topic("snapshot")

# Events that end a connection rather than carry account data.
SPOT_TERMINATED = "eventStreamTerminated"
LISTEN_KEY_EXPIRED = "listenKeyExpired"
# Per market: the events published, and those that end the stream (why).
PUBLISHED = {"spot": frozenset({"outboundAccountPosition", "balanceUpdate", "executionReport"}),
             "usdm": frozenset({"ACCOUNT_UPDATE", "ORDER_TRADE_UPDATE"})}
STREAM_ENDED = {"spot": {SPOT_TERMINATED: "user data stream terminated by the exchange (eventStreamTerminated)"},
                "usdm": {LISTEN_KEY_EXPIRED: "listenKey expired (listenKeyExpired event)"}}

_I64_MAX = (1 << 63) - 1

# Binance letter -> our name, for every event. Required fields raise
# MalformedEvent when missing; optional ones are copied when present.
_EXECUTION_REPORT = {
    "E": "event_time", "s": "symbol", "c": "client_order_id", "S": "side",
    "o": "order_type", "f": "time_in_force", "q": "quantity", "p": "price",
    "P": "stop_price", "F": "iceberg_quantity", "g": "order_list_id",
    "C": "orig_client_order_id", "x": "execution_type", "X": "order_status",
    "r": "reject_reason", "i": "order_id", "l": "last_executed_quantity",
    "z": "cumulative_filled_quantity", "L": "last_executed_price",
    "n": "commission", "N": "commission_asset", "T": "transaction_time",
    "t": "trade_id", "w": "is_on_book", "m": "is_maker", "O": "order_creation_time",
    "Z": "cumulative_quote_quantity", "Y": "last_quote_quantity",
    "Q": "quote_order_quantity", "V": "self_trade_prevention_mode",
}
_EXECUTION_REPORT_OPTIONAL = {
    "W": "working_time", "v": "prevented_match_id", "d": "trailing_delta",
    "D": "trailing_time", "j": "strategy_id", "J": "strategy_type",
    "A": "prevented_quantity", "B": "last_prevented_quantity", "u": "trade_group_id",
    "U": "counter_order_id", "Cs": "counter_symbol", "pl": "prevented_execution_quantity",
    "pL": "prevented_execution_price", "pY": "prevented_execution_quote_quantity",
    "b": "match_type", "a": "allocation_id", "k": "working_floor", "uS": "used_sor",
}
_ORDER_TRADE_UPDATE = {
    "s": "symbol", "c": "client_order_id", "S": "side", "o": "order_type",
    "f": "time_in_force", "q": "quantity", "p": "price", "ap": "average_price",
    "sp": "stop_price", "x": "execution_type", "X": "order_status", "i": "order_id",
    "l": "last_filled_quantity", "z": "cumulative_filled_quantity",
    "L": "last_filled_price", "T": "trade_time", "t": "trade_id",
    "b": "bids_notional", "a": "asks_notional", "m": "is_maker", "R": "reduce_only",
    "wt": "working_type", "ot": "original_order_type", "ps": "position_side",
    "cp": "close_position", "rp": "realized_profit",
}
_ORDER_TRADE_UPDATE_OPTIONAL = {
    "N": "commission_asset", "n": "commission", "AP": "activation_price",
    "cr": "callback_rate", "pP": "price_protect", "si": "ignore_si", "ss": "ignore_ss",
    "V": "self_trade_prevention_mode", "pm": "price_match", "gtd": "good_till_date",
    "er": "expiry_reason",
}
_FUTURES_BALANCE = {"a": "asset", "wb": "wallet_balance", "cw": "cross_wallet_balance",
                    "bc": "balance_change"}
_FUTURES_POSITION = {"s": "symbol", "pa": "position_amount", "ep": "entry_price",
                     "bep": "break_even_price", "cr": "accumulated_realized",
                     "up": "unrealized_pnl", "mt": "margin_type", "iw": "isolated_wallet",
                     "ps": "position_side"}
_FUTURES_POSITION_OPTIONAL = {"ma": "margin_asset"}

# REST snapshots. Open orders: the fields both markets' rows share, then each
# market's own.
_ORDER = {
    "symbol": "symbol", "orderId": "order_id", "clientOrderId": "client_order_id",
    "price": "price", "origQty": "quantity", "executedQty": "cumulative_filled_quantity",
    "status": "order_status", "timeInForce": "time_in_force", "type": "order_type",
    "side": "side", "stopPrice": "stop_price", "time": "order_creation_time",
    "updateTime": "update_time",
}
_SPOT_ORDER = {
    **_ORDER, "orderListId": "order_list_id", "cummulativeQuoteQty": "cumulative_quote_quantity",
    "icebergQty": "iceberg_quantity", "isWorking": "is_working",
    "origQuoteOrderQty": "quote_order_quantity",
}
_SPOT_ORDER_OPTIONAL = {"workingTime": "working_time",
                        "selfTradePreventionMode": "self_trade_prevention_mode"}
_FUTURES_ORDER = {
    **_ORDER, "avgPrice": "average_price", "cumQuote": "cumulative_quote_quantity",
    "reduceOnly": "reduce_only", "closePosition": "close_position", "positionSide": "position_side",
    "workingType": "working_type", "origType": "original_order_type",
}
_FUTURES_ORDER_OPTIONAL = {"priceProtect": "price_protect", "priceMatch": "price_match",
                           "selfTradePreventionMode": "self_trade_prevention_mode",
                           "goodTillDate": "good_till_date", "activatePrice": "activation_price",
                           "priceRate": "callback_rate"}
_FUTURES_ASSET = {"asset": "asset", "walletBalance": "wallet_balance",
                  "crossWalletBalance": "cross_wallet_balance"}
_FUTURES_ASSET_OPTIONAL = {
    "unrealizedProfit": "unrealized_profit", "marginBalance": "margin_balance",
    "availableBalance": "available_balance", "maxWithdrawAmount": "max_withdraw_amount",
    "updateTime": "update_time",
}
_FUTURES_SNAPSHOT_POSITION = {"symbol": "symbol", "positionSide": "position_side",
                              "positionAmt": "position_amount"}
_FUTURES_SNAPSHOT_POSITION_OPTIONAL = {
    "entryPrice": "entry_price", "breakEvenPrice": "break_even_price",
    "unrealizedProfit": "unrealized_pnl", "isolated": "isolated", "leverage": "leverage",
    "isolatedWallet": "isolated_wallet", "updateTime": "update_time",
}


def _pick(raw: dict[str, Any], required: dict[str, str],
          optional: dict[str, str] | None = None) -> dict[str, Any]:
    data = {name: raw[key] for key, name in required.items()}
    for key, name in (optional or {}).items():
        if key in raw:
            data[name] = raw[key]
    return data


def _event_time(event: dict[str, Any], what: str) -> int:
    e = event["E"]
    if type(e) is not int or not 0 <= e <= _I64_MAX:
        raise MalformedEvent(f"{what}: event time 'E' is not an int64: {e!r}")
    return e


# -- events --------------------------------------------------------------------------

def normalise_spot(event: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """A spot user-data event -> (topic, data, event time)."""
    try:
        kind = event["e"]
        if kind == "executionReport":
            data = _pick(event, _EXECUTION_REPORT, _EXECUTION_REPORT_OPTIONAL)
        elif kind == "outboundAccountPosition":
            data = {"event_time": event["E"], "last_update_time": event["u"],
                    "balances": [{"asset": b["a"], "free": b["f"], "locked": b["l"]}
                                 for b in event["B"]]}
        elif kind == "balanceUpdate":
            data = {"event_time": event["E"], "asset": event["a"], "delta": event["d"],
                    "clear_time": event["T"]}
        else:
            raise MalformedEvent(f"spot account: unexpected event type {kind!r}")
        return account_topic(kind), data, _event_time(event, kind)
    except (KeyError, TypeError) as exc:
        raise MalformedEvent(f"spot account: missing field or not an event ({exc})") from None


def normalise_usdm(event: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """A USD-M user-data event -> (topic, data, event time)."""
    try:
        kind = event["e"]
        if kind == "ORDER_TRADE_UPDATE":
            data = {"event_time": event["E"], "transaction_time": event["T"],
                    **_pick(event["o"], _ORDER_TRADE_UPDATE, _ORDER_TRADE_UPDATE_OPTIONAL)}
        elif kind == "ACCOUNT_UPDATE":
            a = event["a"]
            data = {"event_time": event["E"], "transaction_time": event["T"],
                    "reason": a["m"],
                    "balances": [_pick(b, _FUTURES_BALANCE) for b in a["B"]],
                    "positions": [_pick(p, _FUTURES_POSITION, _FUTURES_POSITION_OPTIONAL)
                                  for p in a["P"]]}
        else:
            raise MalformedEvent(f"usdm account: unexpected event type {kind!r}")
        return account_topic(kind), data, _event_time(event, kind)
    except (KeyError, TypeError) as exc:
        raise MalformedEvent(f"usdm account: missing field or not an event ({exc})") from None


NORMALISERS = {"spot": normalise_spot, "usdm": normalise_usdm}


# Replayed events' minor keys start here: above any count of events sharing
# one event time on a live connection. A frame keyed above it may repeat one
# delivered before (it is published with ``backfill: true``).
REPLAY_MINOR = 1 << 40


def is_replay(minor: int) -> bool:
    return minor > REPLAY_MINOR


class EventOrder:
    """Ordering keys ``(major, minor)`` for one connection's events (see the
    module docstring). One instance per connection."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def replay(self, events: list[tuple[str, int]]) -> list[tuple[int, int]]:
        """Keys for the events (topic, E) republished right after a snapshot.

        Another connection (the worker this one replaces in a rotation) may
        have delivered some of them *before* the snapshot; the consumer's
        snapshot then lacks them, so they must pass the parent again. Each
        topic's replays get the topic's newest ``E`` and minors above any
        live count, so they are newer than anything delivered up to that
        ``E``; later live keys continue from there, so same-``E`` copies
        from the other connection are still dropped."""
        top: dict[str, int] = {}
        for topic, e in events:
            top[topic] = max(e, top.get(topic, e), self._last.get(topic, (e, 0))[0])
        counts: dict[str, int] = {}
        keys = []
        for topic, _ in events:
            counts[topic] = counts.get(topic, 0) + 1
            keys.append((top[topic], REPLAY_MINOR + counts[topic]))
        for topic, count in counts.items():
            self._last[topic] = (top[topic], REPLAY_MINOR + count)
        return keys

    def key(self, topic: str, event_time: int) -> tuple[int, int]:
        last = self._last.get(topic)
        if last is None or event_time > last[0]:
            key = (event_time, 1)
        else:
            # Same E, or (not seen from Binance) an older one: stay on the
            # topic's last E so this connection's own events never look old.
            key = (last[0], last[1] + 1)
        self._last[topic] = key
        return key


# -- snapshots ------------------------------------------------------------------------

def spot_snapshot(account: dict[str, Any], open_orders: Iterable[dict[str, Any]],
                  server: dict[str, Any]) -> dict[str, Any]:
    """``GET /api/v3/account`` + ``GET /api/v3/openOrders`` + ``GET
    /api/v3/time`` (asked last) -> snapshot data.

    ``update_time`` is Binance's account ``updateTime``, when a balance last
    changed: a ``balanceUpdate`` whose ``clear_time`` is at or before it is
    already in the snapshot's balances. ``time`` is the exchange's time
    after the answers; ``as_of`` (see ``snapshot_times``) the boundary of
    what the snapshot may contain."""
    try:
        data = {
            "market": "spot",
            "update_time": account["updateTime"],
            "balances": [{"asset": b["asset"], "free": b["free"], "locked": b["locked"]}
                         for b in account["balances"]],
            "open_orders": [_pick(o, _SPOT_ORDER, _SPOT_ORDER_OPTIONAL) for o in open_orders],
        }
        changes = [data["update_time"]] + [o["update_time"] for o in data["open_orders"]]
        return {**data, **snapshot_times(server["serverTime"], changes, "spot snapshot")}
    except (KeyError, TypeError) as exc:
        raise MalformedEvent(f"spot snapshot: unexpected REST reply ({exc})") from None


def usdm_snapshot(account: dict[str, Any], open_orders: Iterable[dict[str, Any]],
                  server: dict[str, Any]) -> dict[str, Any]:
    """``GET /fapi/v2/account`` + ``GET /fapi/v1/openOrders`` + ``GET
    /fapi/v1/time`` (asked last) -> snapshot data."""
    try:
        data = {
            "market": "usdm",
            "update_time": account.get("updateTime"),
            "balances": [_pick(a, _FUTURES_ASSET, _FUTURES_ASSET_OPTIONAL)
                         for a in account["assets"]],
            "positions": [_pick(p, _FUTURES_SNAPSHOT_POSITION, _FUTURES_SNAPSHOT_POSITION_OPTIONAL)
                          for p in account["positions"]],
            "open_orders": [_pick(o, _FUTURES_ORDER, _FUTURES_ORDER_OPTIONAL) for o in open_orders],
        }
        changes = [x.get("update_time") for x in data["balances"] + data["positions"] + data["open_orders"]]
        return {**data, **snapshot_times(server["serverTime"], changes, "usdm snapshot")}
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedEvent(f"usdm snapshot: unexpected REST reply ({exc})") from None


# The REST calls of a snapshot per market, in the order they are asked:
# account, open orders, then the exchange's time (last: the time when both
# answers were complete); and the function that turns the answers into data.
SNAPSHOT_CALLS = {
    "spot": ("/api/v3/account", "/api/v3/openOrders", "/api/v3/time"),
    "usdm": ("/fapi/v2/account", "/fapi/v1/openOrders", "/fapi/v1/time"),
}
SNAPSHOTS = {"spot": spot_snapshot, "usdm": usdm_snapshot}


def snapshot_times(server_time: Any, changes: Iterable[Any], what: str) -> dict[str, int]:
    """``time``: the exchange's time once the snapshot's answers were all
    complete (it orders snapshots: our wall clock may step). ``as_of``: no
    change after it can be in the snapshot, so events whose change time is
    at or before it may be in it already (they are published as backfill).
    The newest update time of the answers counts too, in case the REST
    server's clock trails the account's."""
    if type(server_time) is not int or not 0 <= server_time <= _I64_MAX:
        raise MalformedEvent(f"{what}: serverTime is not an int64: {server_time!r}")
    times = [t for t in changes if type(t) is int and 0 <= t <= _I64_MAX]
    return {"time": server_time, "as_of": max([server_time, *times])}


# The exchange time at which each event's change happened (Binance's
# transaction, clear or account update time). An event is in a snapshot only
# if this is at or before the snapshot's ``as_of``.
_CHANGE_TIME = {"executionReport": "transaction_time", "outboundAccountPosition": "last_update_time",
                "balanceUpdate": "clear_time", "ACCOUNT_UPDATE": "transaction_time",
                "ORDER_TRADE_UPDATE": "transaction_time"}


def change_time(topic: str, data: dict[str, Any], event_time: int) -> int:
    """When the change an event reports happened: its change-time field, or
    its event time if that is earlier (or the field is missing). ``topic``
    is ``account.<event>[.<stream>]``."""
    value = data.get(_CHANGE_TIME.get(topic.split(".", 2)[1], ""))
    return min(value, event_time) if type(value) is int else event_time
