"""load_config: the example loads; every mistake names its exact key and why."""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from feedsup import endpoints
from feedsup.binance.streams import KLINE_INTERVALS
from feedsup.config import (
    ANY_PORT, CHANNELS_BY_MARKET, Config, ConfigError, Connection, Restart, SPOT_DEFAULT,
    USDM_DEFAULT, load_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "feedsup.toml"

PRICE = """
[[stream]]
name = "price"
market = "spot"
channel = "aggTrade"
symbols = ["BTCUSDT", "ETHUSDT"]
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "feedsup.toml"
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str):
    return load_config(write(tmp_path, text))


def error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == path
    assert str(caught.value) == f"{path}: {caught.value.key}: {caught.value.reason}"
    return caught.value


def stream(**keys: object) -> str:
    """One [[stream]] table; defaults to a valid spot aggTrade stream."""
    base: dict[str, object] = {"name": "s", "market": "spot", "channel": "aggTrade",
                               "symbols": ["BTCUSDT"]}
    base.update(keys)
    lines = ["[[stream]]"]
    for key, value in base.items():
        if value is not None:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


# --- what loads ---------------------------------------------------------------

def test_example_config_loads_with_its_streams():
    config = load_config(str(EXAMPLE))
    names = [s.name for s in config.streams]
    assert names == ["price", "kline", "book"]
    price, kline, book = config.streams
    assert price.symbols == ("BTCUSDT", "ETHUSDT") and price.channel == "aggTrade"
    assert kline.intervals == ("1m",)
    assert book.connection.stale_after == 30
    assert config.spot == SPOT_DEFAULT and config.usdm == USDM_DEFAULT
    assert config.connection == Connection() and config.restart == Restart()


def test_example_shows_every_key_with_its_default():
    text = EXAMPLE.read_text()
    keys = [f.name for dataclass in (Connection, Restart) for f in fields(dataclass)]
    keys += ["pub", "control", "log_format", "metrics_port", "pub_hwm", "state_file",
             "curve_server_key_file", "curve_allowed_clients", "ws_url", "rest_url", "ws_api_url",
             "shard", "universe_refresh"]
    for key in keys:
        # "#key = " marks a key whose default cannot be written literally (or
        # which is off by default); the "# key = " stream examples are
        # uncommented by the next test, these are not.
        assert re.search(rf"(?m)^#?{key} = ", text), f"{key} missing from the example"
    config = load_config(str(EXAMPLE))
    default = Config(path=config.path, streams=config.streams)
    assert config == default


def test_example_commented_streams_load_when_uncommented(tmp_path):
    text = re.sub(r"(?m)^# (?=\[\[stream\]\]|\w+ = )", "", EXAMPLE.read_text())
    config = load(tmp_path, text)
    by_name = {s.name: s for s in config.streams}
    assert by_name["mark"].market == "usdm" and by_name["mark"].connection.ping_interval == 60
    spot_account = by_name["spot-account"]
    assert spot_account.api_key_env == "BINANCE_API_KEY"
    assert spot_account.connection.stale_after == 0 and spot_account.symbols == ()
    futures_account = by_name["futures-account"]
    assert futures_account.key_file == str(tmp_path / "binance-futures.key")


def test_minimal_config_gets_defaults(tmp_path):
    config = load(tmp_path, PRICE)
    assert config.pub == endpoints.default_pub() and config.control == endpoints.default_control()
    assert config.pub.startswith("ipc://")
    assert config.streams[0].connection == Connection()
    assert config.streams[0].depth_levels == 10


def test_nice_lowers_one_stream_s_priority(tmp_path):
    config = load(tmp_path, stream(name="bulk", nice=10) + stream(name="fast", symbols=["ETHUSDT"]))
    assert [s.nice for s in config.streams] == [10, 0]


def test_metrics_port_any_asks_for_a_free_port(tmp_path):
    assert load(tmp_path, '[feedsup]\nmetrics_port = "any"\n' + PRICE).metrics_port == ANY_PORT
    assert load(tmp_path, "[feedsup]\nmetrics_port = 9108\n" + PRICE).metrics_port == 9108


def test_lower_case_symbols_are_normalised(tmp_path):
    config = load(tmp_path, stream(symbols=["btcusdt", "1000shibUSDT"]))
    assert config.streams[0].symbols == ("BTCUSDT", "1000SHIBUSDT")


def test_futures_delivery_symbol_is_accepted(tmp_path):
    config = load(tmp_path, stream(market="usdm", symbols=["BTCUSDT_250627"]))
    assert config.streams[0].symbols == ("BTCUSDT_250627",)


def test_integers_are_accepted_for_durations(tmp_path):
    config = load(tmp_path, "[connection]\nping_interval = 30\nping_timeout = 7.5\n" + PRICE)
    assert config.connection.ping_interval == 30.0 and config.connection.ping_timeout == 7.5


def test_stream_override_merges_over_global_connection(tmp_path):
    text = "[connection]\nstale_after = 5\nconnect_timeout = 4\n" + stream(stale_after=0)
    connection = load(tmp_path, text).streams[0].connection
    assert connection.stale_after == 0       # the stream's own value
    assert connection.connect_timeout == 4   # inherited from [connection]
    assert connection.ping_interval == 20    # the default


def test_account_stream_forces_stale_after_zero(tmp_path):
    text = "[connection]\nstale_after = 10\n" + stream(
        channel="account", symbols=None, api_key_env="K", api_secret_env="S")
    account = load(tmp_path, text).streams[0]
    assert account.connection.stale_after == 0
    assert account.symbols == ()


def test_key_file_is_resolved_beside_the_config(tmp_path):
    text = stream(channel="account", symbols=None, key_file="secrets/binance.key")
    assert load(tmp_path, text).streams[0].key_file == str(tmp_path / "secrets" / "binance.key")


def test_key_file_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = stream(channel="account", symbols=None, key_file="~/binance.key")
    assert load(tmp_path, text).streams[0].key_file == str(tmp_path / "home" / "binance.key")


def test_kline_stream_with_1024_streams_is_accepted(tmp_path):
    symbols = [f"SYM{i}USDT" for i in range(64)]
    config = load(tmp_path, stream(channel="kline", symbols=symbols,
                                   intervals=list(KLINE_INTERVALS)))
    assert len(config.streams[0].symbols) * len(config.streams[0].intervals) == 1024


def test_connect_budget_may_exceed_binance_limit_against_loopback_only(tmp_path):
    text = ("[binance.spot]\nws_url = 'ws://127.0.0.1:9000'\n"
            "[restart]\nconnect_budget = 20\nbudget_window = 2\n" + PRICE)
    assert load(tmp_path, text).restart.connect_budget == 20
    account = stream(name="acct", channel="account", symbols=None, api_key_env="K",
                     api_secret_env="S")
    err = error(tmp_path, text + account)  # ws_api_url is still Binance's
    assert err.key == "restart.connect_budget"
    remote = text + stream(name="futures", market="usdm", topic_prefix="usdm.")  # usdm: Binance default URL
    err = error(tmp_path, remote)
    assert err.key == "restart.connect_budget" and "3000 connection attempts" in err.reason


def test_zmq_endpoints_accepted(tmp_path):
    text = ('[feedsup]\npub = "tcp://[::1]:*"\ncontrol = "ipc://@feedsup-ctl"\n' + PRICE)
    config = load(tmp_path, text)
    assert config.pub == "tcp://[::1]:*" and config.control == "ipc://@feedsup-ctl"


# --- file-level errors ------------------------------------------------------------

def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.file, caught.value.key) == (path, "(file)")
    assert "not found" in caught.value.reason


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, PRICE)
    os.chmod(path, 0)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


def test_unopenable_path_reports_the_os_reason(tmp_path):
    """Runs even as root: a path through a regular file cannot be opened."""
    path = write(tmp_path, PRICE) + "/nested.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "(file)"
    assert caught.value.reason == "cannot read: Not a directory"


def test_syntax_error_names_the_line(tmp_path):
    err = error(tmp_path, PRICE + "\n[restart]\nbackoff_max = = 3\n")
    assert err.key == "line 9, column 15"
    assert "TOML syntax error" in err.reason


def test_syntax_error_at_end_of_document(tmp_path):
    err = error(tmp_path, PRICE + 'x = "unterminated')
    assert err.key == "end of document" and "Unterminated string" in err.reason


def test_not_utf8(tmp_path):
    path = tmp_path / "feedsup.toml"
    path.write_bytes(b'[feedsup]\nlog_format = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(str(path))


# --- one key, one reason ------------------------------------------------------

CASES = [
    # unknown keys, in every table
    ("[feedsupp]\n" + PRICE, "feedsupp", 'unknown key (did you mean "feedsup"?)'),
    ("[feedsup]\nhwm = 5\n" + PRICE, "feedsup.hwm", "unknown key"),
    ("[binance.coinm]\n" + PRICE, "binance.coinm", "unknown key"),
    ("[binance.spot]\nwsurl = 'wss://x'\n" + PRICE, "binance.spot.wsurl",
     'did you mean "ws_url"?'),
    ("[binance.usdm]\nws_api_url = 'wss://x'\n" + PRICE, "binance.usdm.ws_api_url",
     "unknown key"),
    ("[connection]\nping_timout = 3\n" + PRICE, "connection.ping_timout",
     'did you mean "ping_timeout"?'),
    ("[restart]\nbackof_max = 3\n" + PRICE, "restart.backof_max", "unknown key"),
    (stream(interval=["1m"]), 'stream "s".interval', 'did you mean "intervals"?'),
    ('"odd.key" = 1\n' + PRICE, '"odd.key"', "unknown key"),
    # wrong types; bool is not a number
    ("[connection]\nping_interval = true\n" + PRICE, "connection.ping_interval",
     "must be a number, got a boolean"),
    ("[connection]\nping_timeout = '5'\n" + PRICE, "connection.ping_timeout",
     "must be a number, got a string"),
    ("[connection]\nping_timeout = nan\n" + PRICE, "connection.ping_timeout", "finite"),
    ("[connection]\nping_interval = inf\n" + PRICE, "connection.ping_interval", "finite"),
    ("[restart]\nintensity = 2.5\n" + PRICE, "restart.intensity",
     "must be an integer, got a float"),
    ("[restart]\nintensity = true\n" + PRICE, "restart.intensity",
     "must be an integer, got a boolean"),
    ("[feedsup]\nmetrics_port = false\n" + PRICE, "feedsup.metrics_port",
     "must be an integer, got a boolean"),
    ("[feedsup]\npub = 7780\n" + PRICE, "feedsup.pub", "must be a string, got an integer"),
    ("connection = 5\n" + PRICE, "connection", "must be a table, got an integer"),
    (stream(symbols="BTCUSDT"), 'stream "s".symbols', "must be an array, got a string"),
    (stream(symbols=[1]), 'stream "s".symbols[0]', "must be a string, got an integer"),
    (stream(name=7), "stream[0].name", "must be a string"),
    # zero / negative / out of range
    ("[connection]\nping_timeout = 0\n" + PRICE, "connection.ping_timeout",
     "must be greater than 0"),
    ("[connection]\nconnect_timeout = -1\n" + PRICE, "connection.connect_timeout",
     "must be greater than 0"),
    ("[connection]\nstale_after = -1\n" + PRICE, "connection.stale_after", "0 or greater"),
    ("[connection]\nmax_age = 86400\n" + PRICE, "connection.max_age", "24 h"),
    ("[restart]\nbackoff_initial = 0\n" + PRICE, "restart.backoff_initial",
     "greater than 0"),
    ("[restart]\nintensity = 0\n" + PRICE, "restart.intensity", "greater than 0"),
    ("[feedsup]\npub_hwm = 0\n" + PRICE, "feedsup.pub_hwm", "greater than 0"),
    ("[feedsup]\nmetrics_port = 70000\n" + PRICE, "feedsup.metrics_port",
     "between 0 and 65535"),
    ("[feedsup]\nmetrics_port = 'auto'\n" + PRICE, "feedsup.metrics_port",
     'must be a port number or "any", got "auto"'),
    ("[feedsup]\nlog_format = 'xml'\n" + PRICE, "feedsup.log_format",
     'unknown value "xml"; expected one of: logfmt, json'),
    # cross-field rules
    ("[connection]\nping_interval = 10\nping_timeout = 10\n" + PRICE,
     "connection.ping_timeout", "websocket-client requires ping_interval > ping_timeout"),
    ("[connection]\nping_timeout = 25\n" + PRICE, "connection.ping_timeout",
     "must be less than ping_interval (20)"),
    ("[connection]\nping_interval = 5\n" + PRICE, "connection.ping_interval",
     "must be greater than ping_timeout (10)"),
    ("[connection]\nliveness_timeout = 1\n" + PRICE, "connection.liveness_timeout",
     "must be greater than liveness_interval (1)"),
    ("[connection]\nliveness_interval = 6\n" + PRICE, "connection.liveness_interval",
     "must be less than liveness_timeout (5)"),
    (stream(ping_timeout=30), 'stream "s".ping_timeout', "less than ping_interval (20)"),
    ("[connection]\nping_timeout = 2\n" + stream(ping_interval=2),
     'stream "s".ping_interval', "greater than ping_timeout (2)"),
    (stream(liveness_timeout=0.5), 'stream "s".liveness_timeout',
     "greater than liveness_interval"),
    ("[restart]\nbackoff_initial = 5\nbackoff_max = 2\n" + PRICE, "restart.backoff_max",
     "at least backoff_initial (5)"),
    ("[restart]\nconnect_budget = 301\n" + PRICE, "restart.connect_budget",
     "Binance allows 300 per 5 minutes"),
    ("[restart]\nconnect_budget = 200\nbudget_window = 100\n" + PRICE,
     "restart.connect_budget", "up to 600 connection attempts in 300 s"),
    ("[restart]\nconnect_budget = 1\n" + PRICE + stream(name="t", symbols=["BNBUSDT"]),
     "restart.connect_budget", "2 streams need 2 connections"),
    # URLs and endpoints
    ("[binance.spot]\nws_url = 'https://stream.binance.com'\n" + PRICE,
     "binance.spot.ws_url", "must start with ws:// or wss://"),
    ("[binance.spot]\nws_url = 'wss://'\n" + PRICE, "binance.spot.ws_url", "no host"),
    ("[binance.spot]\nws_url = 'wss://host:99999'\n" + PRICE, "binance.spot.ws_url",
     "invalid port"),
    ("[binance.spot]\nws_url = 'wss://host:9443?x=1'\n" + PRICE, "binance.spot.ws_url",
     "must not carry a query"),
    ("[binance.spot]\nws_url = 'wss://ho st'\n" + PRICE, "binance.spot.ws_url", "whitespace"),
    ("[binance.usdm]\nrest_url = 'wss://fapi.binance.com'\n" + PRICE,
     "binance.usdm.rest_url", "must start with http:// or https://"),
    ("[binance.spot]\nrest_url = 'api.binance.com'\n" + PRICE, "binance.spot.rest_url",
     "must start with http:// or https://"),
    ("[binance.spot]\nws_api_url = 'http://x'\n" + PRICE, "binance.spot.ws_api_url",
     "ws:// or wss://"),
    ("[feedsup]\npub = '127.0.0.1:7780'\n" + PRICE, "feedsup.pub",
     "expected tcp://host:port or ipc://path"),
    ("[feedsup]\npub = 'inproc://x'\n" + PRICE, "feedsup.pub", "expected tcp://host:port"),
    ("[feedsup]\npub = 'tcp://127.0.0.1'\n" + PRICE, "feedsup.pub",
     "expected tcp://host:port"),
    ("[feedsup]\npub = 'tcp://127.0.0.1:port'\n" + PRICE, "feedsup.pub",
     "port must be 0-65535 or *"),
    ("[feedsup]\npub = 'tcp://[::1:7780'\n" + PRICE, "feedsup.pub", "unbalanced ["),
    ("[feedsup]\ncontrol = 'ipc://'\n" + PRICE, "feedsup.control", "empty ipc path"),
    ("[feedsup]\ncontrol = 'ipc:///" + "x" * 120 + "'\n" + PRICE, "feedsup.control",
     "longer than 107 bytes"),
    ("[feedsup]\npub = 'ipc:///tmp/a'\ncontrol = 'ipc:///tmp/a'\n" + PRICE,
     "feedsup.control", "must differ from pub"),
    # streams: presence, names, markets, channels
    ("[feedsup]\n", "stream", "no streams configured"),
    ("stream = []\n", "stream", "no streams configured"),
    ("[stream]\nname = 'x'\n", "stream", "write [[stream]]"),
    (stream(name=None), "stream[0].name", "required"),
    (stream(name="bad name"), "stream[0].name", 'invalid stream name "bad name"'),
    (stream(name=""), "stream[0].name", "invalid stream name"),
    (PRICE + stream(name="other", symbols=["BNBUSDT"]) + stream(name="price"), "stream[2].name",
     'duplicate stream name "price" (also stream[0])'),
    (stream(market=None), 'stream "s".market', "required"),
    (stream(market="coinm"), 'stream "s".market', 'unknown value "coinm"'),
    (stream(channel="trades"), 'stream "s".channel', 'unknown value "trades"'),
    (stream(channel="markPrice"), 'stream "s".channel',
     '"markPrice" is not available on market "spot"'),
    # symbols
    (stream(symbols=None), 'stream "s".symbols', "required"),
    (stream(symbols=[]), 'stream "s".symbols', "must not be empty"),
    (stream(symbols=["BTCUSDT", "BTC-USDT"]), 'stream "s".symbols[1]',
     'invalid symbol "BTC-USDT"'),
    (stream(symbols=[""]), 'stream "s".symbols[0]', 'invalid symbol ""'),
    (stream(symbols=["B" * 21]), 'stream "s".symbols[0]', "2-20 upper-case"),
    (stream(symbols=[" BTCUSDT"]), 'stream "s".symbols[0]', "invalid symbol"),
    (stream(symbols=["BTCUSDT_250627"]), 'stream "s".symbols[0]', "invalid symbol"),
    (stream(symbols=["BTCUSDT", "btcusdt"]), 'stream "s".symbols[1]',
     'duplicate "BTCUSDT" (also at index 0)'),
    # intervals
    (stream(channel="kline"), 'stream "s".intervals', "required"),
    (stream(channel="kline", intervals=["1m", "2m"]), 'stream "s".intervals[1]',
     'unknown value "2m"'),
    (stream(channel="kline", intervals=["1M", "1m", "1m"]), 'stream "s".intervals[2]',
     "duplicate"),
    (stream(market="usdm", channel="kline", intervals=["1s"]), 'stream "s".intervals[0]',
     'unknown value "1s"'),
    (stream(intervals=["1m"]), 'stream "s".intervals', 'only valid for channel "kline"'),
    # depth_levels
    (stream(depth_levels=5), 'stream "s".depth_levels', 'only valid for channel "depth"'),
    (stream(channel="depth", depth_levels=0), 'stream "s".depth_levels', "between 1 and"),
    (stream(channel="depth", depth_levels=True), 'stream "s".depth_levels',
     "must be an integer"),
    # nice
    (stream(nice=-1), 'stream "s".nice', "between 0 and 19"),
    (stream(nice=20), 'stream "s".nice', "between 0 and 19"),
    (stream(nice="10"), 'stream "s".nice', "must be an integer"),
    # stream count per connection
    (stream(channel="kline", symbols=[f"S{i}USDT" for i in range(65)],
            intervals=list(KLINE_INTERVALS)),
     'stream "s".symbols', "65 symbols x 16 intervals = 1040 Binance streams"),
    (stream(market="usdm", symbols=[f"S{i}USDT" for i in range(201)]),
     'stream "s".symbols', "more than the 200 allowed on usdm"),
    # account streams
    (stream(channel="account", symbols=None), 'stream "s".api_key_env',
     "needs credentials"),
    (stream(channel="account", symbols=["BTCUSDT"], api_key_env="K", api_secret_env="S"),
     'stream "s".symbols', "an account stream takes no symbols"),
    (stream(channel="account", symbols=None, api_key_env="K"), 'stream "s".api_secret_env',
     "required with api_key_env"),
    (stream(channel="account", symbols=None, api_secret_env="S"), 'stream "s".api_key_env',
     "required with api_secret_env"),
    (stream(channel="account", symbols=None, api_key_env="K", key_file="k"),
     'stream "s".key_file', "not both"),
    (stream(channel="account", symbols=None, api_key_env="K", api_secret_env="S",
            ed25519_key_file="k.pem"), 'stream "s".ed25519_key_file', "not both"),
    (stream(channel="account", symbols=None, api_key_env="MY-KEY", api_secret_env="S"),
     'stream "s".api_key_env', "not a valid environment variable name"),
    (stream(channel="account", symbols=None, key_file=""), 'stream "s".key_file',
     "must not be empty"),
    (stream(channel="account", symbols=None, api_key_env="K", api_secret_env="S",
            stale_after=5), 'stream "s".stale_after', "must be 0 for an account stream"),
    ("[binance.spot]\nws_api_url = ''\n" + stream(channel="account", symbols=None,
                                                  api_key_env="K", api_secret_env="S"),
     "binance.spot.ws_api_url", 'required by account stream "s"'),
    (stream(api_key_env="K"), 'stream "s".api_key_env', 'only valid for channel "account"'),
    (stream(key_file="k"), 'stream "s".key_file', 'only valid for channel "account"'),
]


@pytest.mark.parametrize("text, key, reason", CASES, ids=[c[1] + ":" + c[2] for c in CASES])
def test_error_names_key_and_reason(tmp_path, text, key, reason):
    err = error(tmp_path, text)
    assert err.key == key
    assert reason in err.reason


def test_every_channel_loads_on_its_markets(tmp_path):
    for market, channels in CHANNELS_BY_MARKET.items():
        for channel in sorted(channels):
            extra = {"channel": channel, "market": market}
            if channel == "kline":
                extra["intervals"] = ["1m"]
            if channel == "account":
                extra.update(symbols=None, api_key_env="K", api_secret_env="S")
            config = load(tmp_path, stream(**extra))
            assert (config.streams[0].market, config.streams[0].channel) == (market, channel)


def test_unknown_key_wins_over_later_errors(tmp_path):
    """A misspelt key is reported as such, not as the missing key it hides."""
    err = error(tmp_path, stream(channel="kline", intervls=["1m"]))
    assert err.key == 'stream "s".intervls'


def test_usdm_has_no_trade_channel(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[stream]]\nname = "t"\nmarket = "usdm"\nchannel = "trade"\nsymbols = ["BTCUSDT"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert err.value.key.endswith("channel")
    assert "not available" in err.value.reason


def test_state_file_is_resolved_beside_the_config_and_its_folder_must_exist(tmp_path):
    path = tmp_path / "c.toml"
    stream = '[[stream]]\nname = "p"\nmarket = "spot"\nchannel = "aggTrade"\nsymbols = ["BTCUSDT"]\n'
    path.write_text('[feedsup]\nstate_file = "state"\n' + stream)
    assert load_config(str(path)).state_file == str(tmp_path / "state")
    path.write_text('[feedsup]\nstate_file = ""\n' + stream)
    assert load_config(str(path)).state_file == ""
    path.write_text('[feedsup]\nstate_file = "nowhere/state"\n' + stream)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert err.value.key == "feedsup.state_file" and "does not exist" in err.value.reason


def test_two_streams_on_one_topic_are_refused_with_the_fix(tmp_path):
    text = PRICE + stream(name="futures", market="usdm")
    err = error(tmp_path, text)
    assert err.key == 'stream "futures".topic_prefix'
    assert 'topic "aggTrade.BTCUSDT" is also published by stream' in err.reason and '"usdm."' in err.reason
    config = load(tmp_path, PRICE + stream(name="futures", market="usdm", topic_prefix="usdm."))
    assert config.streams[1].topic_prefix == "usdm."


@pytest.mark.parametrize("prefix", ["usdm", ".x.", "a b.", "usdm.."])
def test_topic_prefix_must_be_dot_terminated_words(tmp_path, prefix):
    err = error(tmp_path, PRICE + stream(name="f", market="usdm", topic_prefix=prefix))
    assert err.key == 'stream "f".topic_prefix' and "not a topic prefix" in err.reason
