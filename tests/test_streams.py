import pytest

from feedsup.config import SPOT_DEFAULT, USDM_DEFAULT, Endpoint, Stream
from feedsup.binance.streams import route, stream_names, stream_url


def make(channel, market="spot", symbols=("BTCUSDT",), intervals=()):
    return Stream(name="s", market=market, channel=channel, symbols=symbols, intervals=intervals)


@pytest.mark.parametrize("channel, expected", [
    ("aggTrade", "btcusdt@aggTrade"),
    ("trade", "btcusdt@trade"),
    ("bookTicker", "btcusdt@bookTicker"),
    ("miniTicker", "btcusdt@miniTicker"),
    ("ticker", "btcusdt@ticker"),
    ("depth", "btcusdt@depth@100ms"),
])
def test_names_lowercase_symbol_and_channel_suffix(channel, expected):
    assert stream_names(make(channel)) == [expected]
    if channel != "trade":   # USD-M has no raw trade stream
        assert stream_names(make(channel, market="usdm")) == [expected]


def test_mark_price_is_one_second_and_usdm_only():
    assert stream_names(make("markPrice", market="usdm")) == ["btcusdt@markPrice@1s"]
    with pytest.raises(ValueError, match="markPrice"):
        stream_names(make("markPrice", market="spot"))


def test_kline_names_one_per_symbol_and_interval():
    stream = make("kline", symbols=("BTCUSDT", "ETHUSDT"), intervals=("1m", "1h"))
    assert stream_names(stream) == [
        "btcusdt@kline_1m", "btcusdt@kline_1h", "ethusdt@kline_1m", "ethusdt@kline_1h",
    ]


def test_account_has_no_market_stream():
    with pytest.raises(ValueError):
        stream_names(make("account"))


@pytest.mark.parametrize("channel, expected", [
    ("bookTicker", "/public"), ("depth", "/public"),
    ("aggTrade", "/market"), ("kline", "/market"),
    ("markPrice", "/market"), ("miniTicker", "/market"), ("ticker", "/market"),
])
def test_usdm_routes(channel, expected):
    assert route("usdm", channel) == expected


def test_spot_has_no_route():
    assert route("spot", "aggTrade") == ""
    assert route("spot", "depth") == ""


def test_usdm_has_no_trade_stream():
    with pytest.raises(ValueError):
        route("usdm", "trade")
    with pytest.raises(ValueError):
        stream_names(make("trade", market="usdm"))


def test_route_rejects_unknown_market_and_channel():
    with pytest.raises(ValueError):
        route("coinm", "aggTrade")
    with pytest.raises(ValueError):
        route("usdm", "account")


def test_spot_url_is_combined_form():
    stream = make("aggTrade", symbols=("BTCUSDT", "ETHUSDT"))
    assert stream_url(stream, SPOT_DEFAULT) == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
    )


def test_usdm_url_uses_the_channel_route():
    assert stream_url(make("depth", market="usdm"), USDM_DEFAULT) == (
        "wss://fstream.binance.com/public/stream?streams=btcusdt@depth@100ms"
    )
    assert stream_url(make("kline", market="usdm", intervals=("1m",)), USDM_DEFAULT) == (
        "wss://fstream.binance.com/market/stream?streams=btcusdt@kline_1m"
    )


def test_url_strips_trailing_slash_of_ws_url():
    local = Endpoint(ws_url="ws://127.0.0.1:8765/", rest_url="http://127.0.0.1:8765")
    assert stream_url(make("trade"), local) == "ws://127.0.0.1:8765/stream?streams=btcusdt@trade"


def test_url_needs_at_least_one_stream():
    with pytest.raises(ValueError, match="no symbols"):
        stream_url(make("trade", symbols=()), SPOT_DEFAULT)
    with pytest.raises(ValueError, match="intervals"):
        stream_url(make("kline", intervals=()), SPOT_DEFAULT)
