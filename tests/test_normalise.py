import copy

import msgpack
import pytest

from feedsup.config import Stream
from feedsup.ipc.frames import DATA, encode_body, encode_data, iter_records
from feedsup.binance.normalise import MalformedEvent, depth_frame, make_normaliser

# Payloads as Binance documents them (values from the docs' examples).
AGG_TRADE = {
    "e": "aggTrade", "E": 1672515782136, "s": "BTCUSDT", "a": 12345, "p": "0.001",
    "q": "100", "f": 100, "l": 105, "T": 1672515782134, "m": True, "M": True,
}
TRADE = {
    "e": "trade", "E": 1672515782136, "s": "BTCUSDT", "t": 12345, "p": "0.001",
    "q": "100", "T": 1672515782134, "m": True, "M": True,
}
SPOT_BOOK_TICKER = {
    "u": 400900217, "s": "BTCUSDT", "b": "25.35190000", "B": "31.21000000",
    "a": "25.36520000", "A": "40.66000000",
}
USDM_BOOK_TICKER = {
    "e": "bookTicker", "u": 400900217, "E": 1568014460893, "T": 1568014460891,
    "s": "BTCUSDT", "b": "25.35190000", "B": "31.21000000", "a": "25.36520000",
    "A": "40.66000000",
}
MINI_TICKER = {
    "e": "24hrMiniTicker", "E": 1672515782136, "s": "BTCUSDT", "c": "0.0025",
    "o": "0.0010", "h": "0.0025", "l": "0.0010", "v": "10000", "q": "18",
}
SPOT_TICKER = {
    "e": "24hrTicker", "E": 1672515782136, "s": "BTCUSDT", "p": "0.0015", "P": "250.00",
    "w": "0.0018", "x": "0.0009", "c": "0.0025", "Q": "10", "b": "0.0024", "B": "10",
    "a": "0.0026", "A": "100", "o": "0.0010", "h": "0.0025", "l": "0.0010",
    "v": "10000", "q": "18", "O": 0, "C": 86400000, "F": 0, "L": 18150, "n": 18151,
}
USDM_TICKER = {k: v for k, v in SPOT_TICKER.items() if k not in "xbBaA"}
MARK_PRICE = {
    "e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000",
    "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000,
}
KLINE = {
    "e": "kline", "E": 1672515782136, "s": "BTCUSDT",
    "k": {
        "t": 1672515780000, "T": 1672515839999, "s": "BTCUSDT", "i": "1m", "f": 100,
        "L": 200, "o": "0.0010", "c": "0.0020", "h": "0.0025", "l": "0.0015",
        "v": "1000", "n": 100, "x": False, "q": "1.0000", "V": "500", "Q": "0.500",
        "B": "123456",
    },
}
SPOT_DEPTH = {
    "e": "depthUpdate", "E": 1672515782136, "s": "BTCUSDT", "U": 157, "u": 160,
    "b": [["0.0024", "10"]], "a": [["0.0026", "100"]],
}
USDM_DEPTH = dict(SPOT_DEPTH, T=1672515782130, pu=149)


def norm(channel, market="spot", symbols=("BTCUSDT",), intervals=("1m",)):
    return make_normaliser(Stream(
        name="s", market=market, channel=channel, symbols=symbols, intervals=intervals,
    ))


def test_agg_trade():
    topic, data, major, minor, final = norm("aggTrade")(AGG_TRADE)
    assert topic == "aggTrade.BTCUSDT"
    assert data == {
        "symbol": "BTCUSDT", "agg_id": 12345, "price": "0.001", "qty": "100",
        "first_trade_id": 100, "last_trade_id": 105, "time": 1672515782134,
        "buyer_maker": True, "event_time": 1672515782136,
    }
    assert (major, minor, final) == (12345, 0, True)


def test_futures_agg_trade_has_no_ignore_field():
    event = {k: v for k, v in AGG_TRADE.items() if k != "M"}
    topic, data, major, _, _ = norm("aggTrade", "usdm")(event)
    assert (topic, data["agg_id"], major) == ("aggTrade.BTCUSDT", 12345, 12345)


def test_trade():
    topic, data, major, minor, final = norm("trade")(TRADE)
    assert topic == "trade.BTCUSDT"
    assert data == {
        "symbol": "BTCUSDT", "trade_id": 12345, "price": "0.001", "qty": "100",
        "time": 1672515782134, "buyer_maker": True, "event_time": 1672515782136,
    }
    assert (major, minor, final) == (12345, 0, True)


def test_spot_book_ticker_without_event_type_or_time():
    topic, data, major, minor, final = norm("bookTicker")(SPOT_BOOK_TICKER)
    assert topic == "bookTicker.BTCUSDT"
    assert data == {
        "symbol": "BTCUSDT", "update_id": 400900217, "bid_price": "25.35190000",
        "bid_qty": "31.21000000", "ask_price": "25.36520000", "ask_qty": "40.66000000",
    }
    assert (major, minor, final) == (400900217, 0, True)


def test_usdm_book_ticker_adds_times():
    _, data, major, _, _ = norm("bookTicker", "usdm")(USDM_BOOK_TICKER)
    assert data["event_time"] == 1568014460893
    assert data["transaction_time"] == 1568014460891
    assert major == 400900217


def test_mini_ticker():
    topic, data, major, minor, final = norm("miniTicker")(MINI_TICKER)
    assert topic == "miniTicker.BTCUSDT"
    assert data == {
        "symbol": "BTCUSDT", "event_time": 1672515782136, "close": "0.0025",
        "open": "0.0010", "high": "0.0025", "low": "0.0010", "volume": "10000",
        "quote_volume": "18",
    }
    assert (major, minor, final) == (1672515782136, 0, True)


def test_spot_ticker_names_every_field_and_extends_mini_ticker():
    _, mini, _, _, _ = norm("miniTicker")(MINI_TICKER)
    topic, data, major, _, _ = norm("ticker")(SPOT_TICKER)
    assert topic == "ticker.BTCUSDT"
    assert mini.items() <= data.items()
    assert len(data) == len(SPOT_TICKER) - 1   # every field except "e"
    assert data["prev_close_price"] == "0.0009"
    assert (data["bid_price"], data["ask_qty"]) == ("0.0024", "100")
    assert (data["first_trade_id"], data["last_trade_id"], data["trades"]) == (0, 18150, 18151)
    assert major == 1672515782136


def test_usdm_ticker_has_no_book_fields():
    _, data, _, _, _ = norm("ticker", "usdm")(USDM_TICKER)
    assert len(data) == len(USDM_TICKER) - 1
    assert "bid_price" not in data and "prev_close_price" not in data


def test_mark_price():
    topic, data, major, minor, final = norm("markPrice", "usdm")(MARK_PRICE)
    assert topic == "markPrice.BTCUSDT"
    assert data == {
        "symbol": "BTCUSDT", "event_time": 1562305380000, "mark_price": "11794.15000000",
        "index_price": "11784.62659091", "estimated_settle_price": "11784.25641265",
        "funding_rate": "0.00038167", "next_funding_time": 1562306400000,
    }
    assert (major, minor, final) == (1562305380000, 0, True)


def test_kline_open_and_closed():
    normalise = norm("kline")
    topic, data, major, minor, final = normalise(KLINE)
    assert topic == "kline.BTCUSDT.1m"
    assert data == {
        "symbol": "BTCUSDT", "interval": "1m", "open_time": 1672515780000,
        "close_time": 1672515839999, "open": "0.0010", "high": "0.0025", "low": "0.0015",
        "close": "0.0020", "volume": "1000", "quote_volume": "1.0000", "trades": 100,
        "closed": False, "event_time": 1672515782136, "first_trade_id": 100,
        "last_trade_id": 200, "taker_buy_volume": "500", "taker_buy_quote_volume": "0.500",
    }
    assert (major, minor, final) == (1672515780000, 1672515782136, False)
    closed = copy.deepcopy(KLINE)
    closed["k"]["x"] = True
    closed["E"] += 57_000
    _, data, major, minor, final = normalise(closed)
    assert data["closed"] is True
    assert (major, minor, final) == (1672515780000, 1672515839136, True)


def test_symbols_match_whatever_case_the_config_used():
    topic, data, _, _, _ = norm("aggTrade", symbols=("btcusdt",))(AGG_TRADE)
    assert (topic, data["symbol"]) == ("aggTrade.BTCUSDT", "BTCUSDT")


def test_kline_topic_per_symbol_and_interval():
    normalise = norm("kline", symbols=("BTCUSDT", "ETHUSDT"), intervals=("1m", "1h"))
    event = copy.deepcopy(KLINE)
    event["s"] = event["k"]["s"] = "ETHUSDT"
    event["k"]["i"] = "1h"
    assert normalise(event)[0] == "kline.ETHUSDT.1h"


def test_depth_diff_spot_and_usdm():
    topic, data, major, minor, final = norm("depth")(SPOT_DEPTH)
    assert topic == "depth.BTCUSDT"
    assert data == {
        "symbol": "BTCUSDT", "event_time": 1672515782136, "first_update_id": 157,
        "last_update_id": 160, "bids": [["0.0024", "10"]], "asks": [["0.0026", "100"]],
    }
    assert (major, minor, final) == (160, 0, True)
    _, data, _, _, _ = norm("depth", "usdm")(USDM_DEPTH)
    assert (data["prev_update_id"], data["transaction_time"]) == (149, 1672515782130)


def test_depth_frame_is_the_published_book():
    topic, data, major, minor, final = depth_frame(
        "BTCUSDT", 160, [["2", "1"]], [["3", "1"]], 1672515782136)
    assert topic == "depth.BTCUSDT"
    assert data == {"symbol": "BTCUSDT", "update_id": 160, "event_time": 1672515782136,
                    "bids": [["2", "1"]], "asks": [["3", "1"]]}
    assert (major, minor, final) == (160, 0, True)


CASES = [
    ("aggTrade", "spot", AGG_TRADE, "a"),
    ("trade", "spot", TRADE, "t"),
    ("bookTicker", "spot", SPOT_BOOK_TICKER, "u"),
    ("bookTicker", "usdm", USDM_BOOK_TICKER, "u"),
    ("miniTicker", "spot", MINI_TICKER, "E"),
    ("ticker", "spot", SPOT_TICKER, "E"),
    ("ticker", "usdm", USDM_TICKER, "E"),
    ("markPrice", "usdm", MARK_PRICE, "E"),
    ("kline", "spot", KLINE, "E"),
    ("depth", "spot", SPOT_DEPTH, "u"),
    ("depth", "usdm", USDM_DEPTH, "pu"),
]


@pytest.mark.parametrize("channel, market, event, _key", CASES)
def test_every_missing_field_is_malformed(channel, market, event, _key):
    normalise = norm(channel, market)
    for field in event:
        if field == "M":       # Binance's "ignore" field is not required
            continue
        broken = {k: v for k, v in event.items() if k != field}
        with pytest.raises(MalformedEvent):
            normalise(broken)


def test_missing_kline_field_is_malformed():
    normalise = norm("kline")
    for field in KLINE["k"]:
        if field in ("B", "s"):    # "ignore" and the duplicate symbol
            continue
        broken = copy.deepcopy(KLINE)
        del broken["k"][field]
        with pytest.raises(MalformedEvent):
            normalise(broken)


@pytest.mark.parametrize("channel, market, event, key", CASES)
def test_ordering_key_must_be_int64(channel, market, event, key):
    normalise = norm(channel, market)
    for bad in ("12", 1.5, -1, 1 << 63, None, True):
        with pytest.raises(MalformedEvent):
            normalise(dict(event, **{key: bad}))


@pytest.mark.parametrize("channel, market, event, _key", [c for c in CASES if "e" in c[2]])
def test_wrong_event_type_is_malformed(channel, market, event, _key):
    with pytest.raises(MalformedEvent, match="unexpected event type"):
        norm(channel, market)(dict(event, e="serverShutdown"))


@pytest.mark.parametrize("channel, market, event, _key", CASES)
def test_unsubscribed_symbol_is_malformed(channel, market, event, _key):
    with pytest.raises(MalformedEvent):
        norm(channel, market)(dict(event, s="DOGEUSDT"))


@pytest.mark.parametrize("not_a_dict", [None, [], "x", 5, {"stream": "x"}])
def test_non_event_is_malformed(not_a_dict):
    for channel, market, _event, _key in CASES:
        with pytest.raises(MalformedEvent):
            norm(channel, market)(not_a_dict)


def test_kline_checks_interval_and_closed_flag():
    normalise = norm("kline")
    other_interval = copy.deepcopy(KLINE)
    other_interval["k"]["i"] = "5m"
    with pytest.raises(MalformedEvent):
        normalise(other_interval)
    bad_closed = copy.deepcopy(KLINE)
    bad_closed["k"]["x"] = "false"
    with pytest.raises(MalformedEvent, match="k.x"):
        normalise(bad_closed)
    bad_open = copy.deepcopy(KLINE)
    bad_open["k"]["t"] = "1672515780000"
    with pytest.raises(MalformedEvent, match="k.t"):
        normalise(bad_open)


def test_depth_rejects_inverted_range_and_non_list_levels():
    normalise = norm("depth")
    with pytest.raises(MalformedEvent):
        normalise(dict(SPOT_DEPTH, U=161))
    with pytest.raises(MalformedEvent):
        normalise(dict(SPOT_DEPTH, b="0.0024"))


def test_unsupported_market_channel_is_a_config_error():
    with pytest.raises(ValueError):
        norm("markPrice", "spot")
    with pytest.raises(ValueError):
        norm("account")


@pytest.mark.parametrize("channel, market, event, _key", CASES)
def test_output_fits_the_frame_envelope(channel, market, event, _key):
    # The worker packs exactly this; a normalised event must survive the trip.
    topic, data, major, minor, final = norm(channel, market)(event)
    frame = encode_data(topic.encode(), major, minor, final, encode_body(topic, "s", 1, data))
    [(kind, got_topic, got_major, got_minor, got_final, body)] = list(iter_records(frame))
    assert kind == DATA
    assert (got_topic, got_major, got_minor, got_final) == (topic.encode(), major, minor, final)
    assert msgpack.unpackb(body)["data"] == data


# --- against the simulator: its stream parser, its routes, its payloads ----

SIM_CHANNELS = [
    (market, channel)
    for market in ("spot", "usdm")
    for channel in ("aggTrade", "trade", "bookTicker", "miniTicker", "ticker", "kline",
                    "markPrice", "depth")
    if not (market == "spot" and channel == "markPrice") and not (market == "usdm" and channel == "trade")
]


@pytest.mark.parametrize("market, channel", SIM_CHANNELS)
def test_simulator_events_normalise_on_our_routes(market, channel):
    from feedsup.sim.feeds import make_feed
    from feedsup.sim.market import SymbolMarket
    from feedsup.sim.options import DEFAULT_START_MS as T0
    from feedsup.sim.streams import deliverable, parse_stream
    from feedsup.sim.symbols import spec_for
    from feedsup.binance.streams import route, stream_names

    stream = Stream(name="s", market=market, channel=channel, symbols=("BTCUSDT",),
                    intervals=("1m",))
    (name,) = stream_names(stream)
    spec = parse_stream(name, market, frozenset({"BTCUSDT"}))
    assert deliverable(spec, market, route(market, channel).lstrip("/"))
    m = SymbolMarket(spec_for("BTCUSDT"), market, 3, T0, 20.0, 20.0, 20, 10_000)
    feed = make_feed(spec, T0, {"BTCUSDT": m})
    normalise = make_normaliser(stream)
    keys = []
    for step in range(1, 80):
        now = T0 + step * 1000
        m.advance(now)
        for event in feed.poll(now):
            topic, _data, major, minor, final = normalise(event)
            assert topic.split(".")[:2] == [channel, "BTCUSDT"]
            keys.append((major, minor))
    assert len(keys) >= 10
    assert keys == sorted(keys)   # the dedup key never goes backwards
