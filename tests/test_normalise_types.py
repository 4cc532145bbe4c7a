"""The wire contract's field types, enforced by the normalisers.

"Decimals stay as the exchange's strings, times are integer ms" (README,
Consumer wire contract). An exchange frame with a price as a float, a dict or
null, or a time as a string, is malformed: it is counted and skipped, never
published against the contract. The fuzz test feeds arbitrary JSON-ish
events: the answer is a conforming dict or MalformedEvent, nothing else.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from feedsup.binance.normalise import MalformedEvent
from test_normalise import CASES, KLINE, norm

DEC, INT, BOOL, STR, LIST = "decimal", "int", "bool", "str", "list"

# The contract, written from the README independently of the code.
CONTRACT: dict[tuple[str, str], dict[str, str]] = {
    ("spot", "aggTrade"): {"symbol": STR, "agg_id": INT, "price": DEC, "qty": DEC, "first_trade_id": INT,
                           "last_trade_id": INT, "time": INT, "buyer_maker": BOOL, "event_time": INT},
    ("spot", "trade"): {"symbol": STR, "trade_id": INT, "price": DEC, "qty": DEC, "time": INT,
                        "buyer_maker": BOOL, "event_time": INT},
    ("spot", "bookTicker"): {"symbol": STR, "update_id": INT, "bid_price": DEC, "bid_qty": DEC,
                             "ask_price": DEC, "ask_qty": DEC},
    ("spot", "miniTicker"): {"symbol": STR, "event_time": INT, "close": DEC, "open": DEC, "high": DEC,
                             "low": DEC, "volume": DEC, "quote_volume": DEC},
    ("usdm", "markPrice"): {"symbol": STR, "event_time": INT, "mark_price": DEC, "index_price": DEC,
                            "estimated_settle_price": DEC, "funding_rate": DEC, "next_funding_time": INT},
    ("spot", "kline"): {"symbol": STR, "interval": STR, "open_time": INT, "close_time": INT, "open": DEC,
                        "high": DEC, "low": DEC, "close": DEC, "volume": DEC, "quote_volume": DEC,
                        "trades": INT, "closed": BOOL, "event_time": INT, "first_trade_id": INT,
                        "last_trade_id": INT, "taker_buy_volume": DEC, "taker_buy_quote_volume": DEC},
    ("spot", "depth"): {"symbol": STR, "event_time": INT, "first_update_id": INT, "last_update_id": INT,
                        "bids": LIST, "asks": LIST},
}
CONTRACT["usdm", "bookTicker"] = {**CONTRACT["spot", "bookTicker"], "event_time": INT, "transaction_time": INT}
CONTRACT["usdm", "ticker"] = {**CONTRACT["spot", "miniTicker"], "price_change": DEC, "price_change_percent": DEC,
                              "weighted_avg_price": DEC, "last_qty": DEC, "open_time": INT, "close_time": INT,
                              "first_trade_id": INT, "last_trade_id": INT, "trades": INT}
CONTRACT["spot", "ticker"] = {**CONTRACT["usdm", "ticker"], "prev_close_price": DEC, "bid_price": DEC,
                              "bid_qty": DEC, "ask_price": DEC, "ask_qty": DEC}
CONTRACT["usdm", "depth"] = {**CONTRACT["spot", "depth"], "transaction_time": INT, "prev_update_id": INT}

CHECK = {DEC: lambda v: type(v) is str, STR: lambda v: type(v) is str, INT: lambda v: type(v) is int,
         BOOL: lambda v: type(v) is bool, LIST: lambda v: type(v) is list}


def conforms(market: str, channel: str, data: Any) -> bool:
    schema = CONTRACT[market, channel]
    return type(data) is dict and set(data) == set(schema) and all(CHECK[t](data[k]) for k, t in schema.items())


WRONG = {DEC: [1.5, 100, None, {"v": "1"}, ["1"], True], INT: ["1672515782134", 1.5, None, True, {}],
         BOOL: ["true", 1, None], LIST: ["x", None, {}]}


@pytest.mark.parametrize("channel, market, event, _key", CASES)
def test_every_contract_field_of_the_wrong_type_is_malformed(channel, market, event, _key):
    normalise = norm(channel, market)
    _topic, good, *_ = normalise(event)
    assert conforms(market, channel, good)
    schema = CONTRACT[market, channel]
    for field, value in event.items():
        if field in ("e", "s", "M", "k"):
            continue
        out = next(k for k, v in good.items() if v is value and k != "symbol")
        for bad in WRONG[schema[out]] if schema[out] != STR else []:
            with pytest.raises(MalformedEvent):
                normalise(dict(event, **{field: bad}))


def test_every_kline_field_of_the_wrong_type_is_malformed():
    normalise = norm("kline")
    schema = CONTRACT["spot", "kline"]
    names = {"t": "open_time", "T": "close_time", "o": "open", "c": "close", "h": "high", "l": "low",
             "v": "volume", "n": "trades", "x": "closed", "q": "quote_volume", "V": "taker_buy_volume",
             "Q": "taker_buy_quote_volume", "f": "first_trade_id", "L": "last_trade_id"}
    for field, out in names.items():
        for bad in WRONG[schema[out]]:
            broken = copy.deepcopy(KLINE)
            broken["k"][field] = bad
            with pytest.raises(MalformedEvent):
                normalise(broken)


def test_a_price_as_a_float_is_named_in_the_error():
    with pytest.raises(MalformedEvent, match="'p'.*str"):
        norm("aggTrade")(dict(CASES[0][2], p=90000.01))


# -- fuzz: any JSON-ish event -------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
                         st.floats(allow_nan=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=8)


@st.composite
def mutated_events(draw):
    channel, market, event, _key = draw(st.sampled_from(CASES))
    event = copy.deepcopy(event)
    target = event["k"] if channel == "kline" and draw(st.booleans()) else event
    for field in draw(st.lists(st.sampled_from(sorted(target)), max_size=4)):
        if draw(st.booleans()):
            target[field] = draw(json_values)
        else:
            target.pop(field, None)
    return channel, market, event


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_fuzz_mutated_events_conform_or_are_malformed(case):
    channel, market, event = case
    try:
        topic, data, major, minor, final = norm(channel, market)(event)
    except MalformedEvent:
        return
    assert conforms(market, channel, data), data
    assert type(major) is int and 0 <= major < 1 << 63 and type(minor) is int and type(final) is bool


@settings(deadline=None)
@given(st.sampled_from(CASES), json_values)
def test_fuzz_arbitrary_values_are_malformed(case, value):
    channel, market, _event, _key = case
    with pytest.raises(MalformedEvent):
        norm(channel, market)(value)
