"""Clients we did not write, against the simulator, with only their URLs changed:
python-binance (REST, streams, user data), the official binance-sdk-spot (REST,
streams, WebSocket API with its defaults) and ccxt / ccxt.pro (markets, order
book, balance, orders, trades).

They are test-only dependencies (setup.cfg extras ``conformance`` and ``test``);
a missing one skips its tests. The simulator runs at speed 1: these clients
sign with their own clock (plus an offset measured once), as against Binance.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, Iterator

import pytest

from feedsup.sim import SimOptions, SimServer

KEY, SECRET = "conformance-key", "conformance-secret"


@pytest.fixture(scope="module")
def csim() -> Iterator[SimServer]:
    server = SimServer(SimOptions(speed=1.0, trade_rate=20.0, book_rate=20.0, api_key=KEY, api_secret=SECRET))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(coro: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- python-binance -----------------------------------------------------------------------------------


def python_binance_client(sim: SimServer) -> Any:
    client_mod = pytest.importorskip("binance.client")

    class SimClient(client_mod.Client):   # the URLs are class attributes
        API_URL = sim.base_url + "/api"
        FUTURES_URL = sim.base_url + "/fapi"
        MARGIN_API_URL = sim.base_url + "/sapi"
    return SimClient(KEY, SECRET)


def test_python_binance_rest(csim):
    exceptions = pytest.importorskip("binance.exceptions")
    c = python_binance_client(csim)
    info = c.get_symbol_info("BTCUSDT")
    assert {f["filterType"] for f in info["filters"]} >= {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"}
    assert c.get_order_book(symbol="BTCUSDT", limit=5)["bids"]
    assert c.get_klines(symbol="BTCUSDT", interval="1m", limit=2)
    assert c.get_aggregate_trades(symbol="BTCUSDT", limit=3)
    assert c.get_avg_price(symbol="BTCUSDT")["mins"] == 5
    assert {t["symbol"] for t in c.get_all_tickers()} == {"BTCUSDT", "ETHUSDT"}
    bought = c.order_market_buy(symbol="BTCUSDT", quantity="0.001")
    assert bought["status"] == "FILLED" and bought["fills"]
    resting = c.order_limit_buy(symbol="BTCUSDT", quantity="0.001", price="80000.00")
    assert c.get_order(symbol="BTCUSDT", orderId=resting["orderId"])["status"] == "NEW"
    assert [o["orderId"] for o in c.get_open_orders(symbol="BTCUSDT")] == [resting["orderId"]]
    cancelled = c.cancel_order(symbol="BTCUSDT", orderId=resting["orderId"])
    assert cancelled["origClientOrderId"] == resting["clientOrderId"] and cancelled["status"] == "CANCELED"
    assert bought["orderId"] in {t["orderId"] for t in c.get_my_trades(symbol="BTCUSDT")}
    assert c.create_test_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.001") == {}
    with pytest.raises(exceptions.BinanceAPIException) as rounding_bug:
        c.order_limit_buy(symbol="BTCUSDT", quantity="0.0000123", price="80000.005")
    assert rounding_bug.value.code == -1013
    with pytest.raises(exceptions.BinanceAPIException) as too_small:
        c.order_limit_buy(symbol="BTCUSDT", quantity="0.00001", price="80000.00")
    assert (too_small.value.code, too_small.value.message) == (-1013, "Filter failure: NOTIONAL")
    # USD-M
    assert c.futures_order_book(symbol="BTCUSDT", limit=5)["bids"]
    ack = c.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010")
    assert ack["status"] == "NEW"                                         # ACK by default
    assert c.futures_get_order(symbol="BTCUSDT", orderId=ack["orderId"])["status"] == "FILLED"
    limit = c.futures_create_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                                   quantity="0.010", price="80000.00")
    assert c.futures_cancel_order(symbol="BTCUSDT", orderId=limit["orderId"])["status"] == "CANCELED"
    assert Decimal(c.futures_position_information(symbol="BTCUSDT")[0]["positionAmt"]) >= Decimal("0.010")
    assert c.futures_leverage_bracket(symbol="BTCUSDT")["brackets"]
    assert c.futures_account()["assets"]


def test_python_binance_streams_and_user_data(csim):
    binance = pytest.importorskip("binance")

    class SimAsyncClient(binance.AsyncClient):
        API_URL = csim.base_url + "/api"
        FUTURES_URL = csim.base_url + "/fapi"
        WS_API_URL = csim.ws_api_url

    async def scenario() -> None:
        client = await SimAsyncClient.create(KEY, SECRET)
        # Not a protocol setting: its read loop polls for shutdown every TIMEOUT
        # seconds (10), which would make close_connection() take that long.
        client.ws_api.TIMEOUT = 0.2
        try:
            bsm = binance.BinanceSocketManager(client)
            bsm.STREAM_URL = csim.ws_url + "/"
            bsm.FSTREAM_URL = csim.ws_url + "/usdm/"
            async with bsm.trade_socket("BTCUSDT") as s:
                assert (await s.recv())["e"] == "trade"
            async with bsm.multiplex_socket(["btcusdt@aggTrade", "ethusdt@aggTrade"]) as s:
                assert (await s.recv())["data"]["e"] == "aggTrade"
            async with bsm.miniticker_socket() as s:     # !miniTicker@arr@1000ms
                assert (await s.recv())[0]["e"] == "24hrMiniTicker"
            async with bsm.kline_futures_socket("BTCUSDT") as s:     # continuousKline
                assert (await s.recv())["e"] == "continuous_kline"
            async with bsm.user_socket() as s:           # WebSocket API userDataStream.subscribe.signature
                await client.create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.001")
                event = await s.recv()
                assert event["e"] == "executionReport" and event["x"] == "NEW"
            async with bsm.futures_user_socket() as s:   # listenKey on the legacy path
                await client.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010")
                assert (await s.recv())["e"] == "ORDER_TRADE_UPDATE"
        finally:
            await client.close_connection()
    run(scenario())


# -- binance-sdk-spot (official) -------------------------------------------------------------------------


def test_binance_sdk_spot_rest_streams_and_websocket_api(csim):
    spot = pytest.importorskip("binance_sdk_spot.spot")
    config = pytest.importorskip("binance_common.configuration")

    client = spot.Spot(
        config_rest_api=config.ConfigurationRestAPI(api_key=KEY, api_secret=SECRET, base_path=csim.base_url),
        config_ws_api=config.ConfigurationWebSocketAPI(api_key=KEY, api_secret=SECRET, stream_url=csim.ws_api_url),
        config_ws_streams=config.ConfigurationWebSocketStreams(stream_url=csim.ws_url))
    assert client.rest_api.depth(symbol="BTCUSDT", limit=5).data().bids
    placed = client.rest_api.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=0.001).data()
    assert placed.status == "FILLED"

    async def scenario() -> None:
        conn = await client.websocket_api.create_connection()
        try:
            pong = await conn.ping()
            assert pong.rate_limits and pong.rate_limits[0].rateLimitType == "REQUEST_WEIGHT"
            assert (await conn.time()).data().result.server_time > 0
            assert (await conn.depth(symbol="BTCUSDT", limit=5)).data().result.bids
            assert (await conn.account_status()).data().result.balances
            events: list[Any] = []
            sub = await conn.user_data_stream_subscribe_signature()
            assert sub.response.data().result.subscription_id == 0
            sub.stream.on("message", events.append)
            order = await conn.order_place(symbol="BTCUSDT", side="SELL", type="MARKET", quantity=0.001)
            assert order.data().result.status == "FILLED"
            assert {r.rateLimitType for r in order.rate_limits} == {"REQUEST_WEIGHT", "ORDERS"}
            for _ in range(200):
                if len(events) >= 2:
                    break
                await asyncio.sleep(0.01)
            assert len(events) >= 2
        finally:
            await conn.close_connection(close_session=True)
        streams = await client.websocket_streams.create_connection()
        try:
            got: list[Any] = []
            trades = await streams.trade(symbol="btcusdt")
            trades.on("message", got.append)
            for _ in range(300):
                if got:
                    break
                await asyncio.sleep(0.01)
            assert got and got[0].s == "BTCUSDT"
        finally:
            await streams.close_connection(close_session=True)
    run(scenario())


# -- ccxt, ccxt.pro --------------------------------------------------------------------------------------


def _sim_urls(urls: dict[str, Any], sim: SimServer) -> dict[str, Any]:
    hosts = {"https://api.binance.com": sim.base_url, "https://fapi.binance.com": sim.base_url,
             "https://dapi.binance.com": sim.base_url, "https://eapi.binance.com": sim.base_url,
             "https://papi.binance.com": sim.base_url,
             # /host/<name>: the simulator's streams for that Binance host (ccxt.pro tells
             # spot from futures by "/stream" in the URL).
             "wss://stream.binance.com:9443": sim.ws_url + "/host/stream.binance.com",
             "wss://fstream.binance.com": sim.ws_url + "/host/fstream.binance.com",
             "wss://ws-api.binance.com:443": sim.ws_url,
             # never contacted here (no COIN-M markets, no futures WebSocket API calls), but
             # kept on loopback all the same: the simulator answers 404.
             "wss://dstream.binance.com": sim.ws_url + "/host/dstream.binance.com",
             "wss://ws-fapi.binance.com": sim.ws_url + "/host/ws-fapi.binance.com",
             "wss://ws-dapi.binance.com": sim.ws_url + "/host/ws-dapi.binance.com",
             "wss://nbstream.binance.com": sim.ws_url + "/host/nbstream.binance.com"}

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, str):
            for real, local in hosts.items():
                value = value.replace(real, local)
        return value
    return swap(urls)


def test_ccxt_markets_book_balance_orders_trades(csim):
    ccxt = pytest.importorskip("ccxt")
    ex = ccxt.binance({"apiKey": KEY, "secret": SECRET})
    ex.urls["api"] = _sim_urls(ex.urls["api"], csim)
    markets = ex.load_markets()
    assert {"BTC/USDT", "ETH/USDT", "BTC/USDT:USDT"} <= set(markets)
    assert markets["BTC/USDT"]["precision"]["price"] == 0.01
    book = ex.fetch_order_book("BTC/USDT", limit=5)
    assert book["bids"][0][0] < book["asks"][0][0]
    assert ex.fetch_balance()["USDT"]["free"] > 0
    filled = ex.create_order("BTC/USDT", "market", "buy", 0.002)
    assert filled["status"] == "closed" and filled["filled"] == 0.002
    resting = ex.create_order("BTC/USDT", "limit", "buy", 0.001, 80000)
    assert [o["id"] for o in ex.fetch_open_orders("BTC/USDT")] == [resting["id"]]
    assert ex.cancel_order(resting["id"], "BTC/USDT")["status"] == "canceled"
    assert filled["id"] in {t["order"] for t in ex.fetch_my_trades("BTC/USDT")}
    assert ex.fetch_trades("BTC/USDT", limit=5) and ex.fetch_ohlcv("BTC/USDT", "1m", limit=2)
    with pytest.raises(ccxt.ExchangeError, match="Filter failure: NOTIONAL"):
        ex.create_order("BTC/USDT", "limit", "buy", 0.00001, 80000)
    future = ex.create_order("BTC/USDT:USDT", "market", "buy", 0.01)
    assert future["filled"] == 0.01
    positions = ex.fetch_positions(["BTC/USDT:USDT"])
    assert positions and positions[0]["contracts"] >= 0.01


def test_ccxt_pro_order_book_and_trades(csim):
    ccxtpro = pytest.importorskip("ccxt.pro")

    async def scenario() -> None:
        ex = ccxtpro.binance({"apiKey": KEY, "secret": SECRET})
        ex.urls["api"] = _sim_urls(ex.urls["api"], csim)
        try:
            book = await ex.watch_order_book("BTC/USDT")       # REST snapshot + diff stream, synced
            assert book["bids"] and book["asks"] and book["bids"][0][0] < book["asks"][0][0]
            trades = await ex.watch_trades("BTC/USDT")
            assert trades and trades[0]["symbol"] == "BTC/USDT"
            futures_book = await ex.watch_order_book("BTC/USDT:USDT")
            assert futures_book["bids"][0][0] < futures_book["asks"][0][0]
        finally:
            await ex.close()
    run(scenario())
