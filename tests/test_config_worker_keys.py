"""The two worker settings that were test-only environment variables
(``FEEDSUP_LISTEN_KEY_KEEPALIVE``, ``FEEDSUP_UPLINK_HWM``) are config keys:
defaults, ranges with keyed errors, per-stream overrides, and the worker
gets them through its launch spec, not its environment."""

from __future__ import annotations

import os

import pytest
import zmq

from feedsup.config import ConfigError, Connection, load_config
from feedsup.ipc.spec import WorkerSpec
from feedsup.workers.uplink import SNDHWM

PRICE = '[[stream]]\nname = "p"\nmarket = "spot"\nchannel = "aggTrade"\nsymbols = ["BTCUSDT"]\n'


def load(tmp_path, text: str):
    path = tmp_path / "feedsup.toml"
    path.write_text(text)
    return load_config(str(path))


def error(tmp_path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value


def test_defaults_are_the_former_constants(tmp_path):
    conn = load(tmp_path, PRICE).streams[0].connection
    assert conn.listen_key_keepalive == 1800.0      # Binance: a 60 min key, kept alive every 30 min
    assert conn.uplink_hwm == SNDHWM == 10_000


def test_set_globally_and_per_stream(tmp_path):
    config = load(tmp_path, "[connection]\nlisten_key_keepalive = 0.5\nuplink_hwm = 50\n" + PRICE
                  + "uplink_hwm = 7\nlisten_key_keepalive = 60\n"
                  + '[[stream]]\nname = "q"\nmarket = "spot"\nchannel = "trade"\nsymbols = ["BTCUSDT"]\n')
    own, inherited = config.streams
    assert (own.connection.uplink_hwm, own.connection.listen_key_keepalive) == (7, 60.0)
    assert (inherited.connection.uplink_hwm, inherited.connection.listen_key_keepalive) == (50, 0.5)


@pytest.mark.parametrize("text, key, reason", [
    ("[connection]\nlisten_key_keepalive = -3\n" + PRICE, "connection.listen_key_keepalive", "greater than 0"),
    ("[connection]\nlisten_key_keepalive = 'junk'\n" + PRICE, "connection.listen_key_keepalive",
     "must be a number"),
    ("[connection]\nlisten_key_keepalive = 3600\n" + PRICE, "connection.listen_key_keepalive", "at most 3000"),
    ("[connection]\nuplink_hwm = 0\n" + PRICE, "connection.uplink_hwm", "greater than 0"),
    ("[connection]\nuplink_hwm = 2.5\n" + PRICE, "connection.uplink_hwm", "must be an integer"),
    ("[connection]\nuplink_hwm = 2147483648\n" + PRICE, "connection.uplink_hwm", "at most"),
    (PRICE + "uplink_hwm = true\n", 'stream "p".uplink_hwm', "must be an integer"),
])
def test_bad_values_are_keyed_errors(tmp_path, text, key, reason):
    err = error(tmp_path, text)
    assert err.key == key and reason in err.reason, str(err)


def test_the_worker_gets_them_through_its_spec_not_its_environment(tmp_path):
    from feedsup.config import Endpoint, Stream
    from feedsup.workers.runtime import Runtime
    conn = Connection(uplink_hwm=50, listen_key_keepalive=0.25)
    stream = Stream(name="w", market="usdm", channel="aggTrade", symbols=("BTCUSDT",), connection=conn)
    spec = WorkerSpec(stream=stream, endpoint=Endpoint(ws_url="ws://127.0.0.1:1", rest_url="http://127.0.0.1:1"),
                      uplink=f"ipc://{tmp_path}/up", parent_pid=os.getpid(), instance=1)
    again = WorkerSpec.from_json(spec.to_json())
    assert again.stream.connection == conn
    rt = Runtime(again)
    try:
        assert rt.uplink.sock.getsockopt(zmq.SNDHWM) == 50
    finally:
        rt.uplink.close(linger_ms=0)
        rt.ctx.term()
