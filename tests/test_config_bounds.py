"""Every bad config is a ConfigError naming its key (exit 78), never a
traceback or a hang; what load_config accepts, ``feedsup run`` can run."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest

from feedsup.config import BOUNDS, ConfigError, MAX_CONFIG_BYTES, load_config
from harness import REPO

PRICE = '[[stream]]\nname = "p"\nmarket = "spot"\nchannel = "aggTrade"\nsymbols = ["BTCUSDT"]\n'


def error(tmp_path, text: str) -> ConfigError:
    path = tmp_path / "feedsup.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    return caught.value


CASES = [
    # parser and converters that used to raise something else
    ("a = " + "[" * 5000 + "]" * 5000 + "\n" + PRICE, "(file)", "nested too deeply"),
    ("x = " + "{ a = " * 3000 + "1" + " }" * 3000 + "\n" + PRICE, "(file)", "nested too deeply"),
    ("[binance.spot]\nws_url = 'ws://[::1'\n" + PRICE, "binance.spot.ws_url", "malformed URL"),
    ("[binance.spot]\nrest_url = 'http://[zz]:80'\n" + PRICE, "binance.spot.rest_url", "malformed URL"),
    ("[connection]\nconnect_timeout = " + "9" * 400 + "\n" + PRICE, "connection.connect_timeout",
     "must be at most"),
    ("[restart]\nbudget_window = 5e-324\n" + PRICE, "restart.budget_window", "must be at least"),
    ("[restart]\nintensity = " + "9" * 400 + "\n" + PRICE, "restart.intensity", "must be at most"),
    ("[feedsup]\npub = 'tcp://127.0.0.1:" + "9" * 5000 + "'\n" + PRICE, "feedsup.pub", "port must be"),
    ("[feedsup]\npub = 'tcp://127.0.0.1:\u0663'\n" + PRICE, "feedsup.pub", "port must be"),
    # accepted by check, then crashed or looped in run
    ("[feedsup]\npub_hwm = 2147483648\n" + PRICE, "feedsup.pub_hwm", "must be at most"),
    ('[feedsup]\nstate_file = "st\\u0000ate"\n' + PRICE, "feedsup.state_file", "NUL"),
    ('[feedsup]\ncontrol = "ipc:///tmp/a\\u0000b"\n' + PRICE, "feedsup.control", "NUL"),
    ("[connection]\nconnect_timeout = 1e300\n" + PRICE, "connection.connect_timeout", "must be at most"),
    ("[connection]\nliveness_interval = 1e-9\n" + PRICE, "connection.liveness_interval",
     "must be at least"),
    ("[connection]\nping_interval = 1e9\nping_timeout = 1e8\n" + PRICE, "connection.ping_interval",
     "must be at most"),
    ("[restart]\nstop_timeout = 1e12\n" + PRICE, "restart.stop_timeout", "must be at most"),
    ("[restart]\nbackoff_initial = 1e-300\n" + PRICE, "restart.backoff_initial", "must be at least"),
    ("[binance.spot]\nws_url = 'wss://h\u00e9st'\n" + PRICE, "binance.spot.ws_url", "ASCII"),
]


@pytest.mark.parametrize("text, key, reason", CASES, ids=[f"{c[1]}:{c[2]}:{i}" for i, c in enumerate(CASES)])
def test_bad_value_is_a_keyed_config_error(tmp_path, text, key, reason):
    err = error(tmp_path, text)
    assert err.key == key and reason in err.reason, str(err)


def test_every_bound_is_enforced_at_both_ends(tmp_path):
    for (section, key), (low, high) in BOUNDS.items():
        integer = isinstance(low, int) and isinstance(high, int)
        for bad in ((low - 1 if integer else low / 2), (high + 1 if integer else high * 2)):
            err = error(tmp_path, f"[{section}]\n{key} = {bad!r}\n" + PRICE)
            assert err.key == f"{section}.{key}", str(err)
            assert re.search(r"at least|at most|greater than 0|below 86400", err.reason), str(err)
        ok = f"[{section}]\n{key} = {low!r}\n" + PRICE
        if key not in ("ping_interval", "liveness_timeout", "backoff_max", "budget_window"):  # cross-field
            (tmp_path / "feedsup.toml").write_text(ok)
            load_config(str(tmp_path / "feedsup.toml"))


def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        load_config(str(fifo))     # opening a FIFO for reading blocks without O_NONBLOCK
    assert caught.value.key == "(file)" and "not a regular file" in caught.value.reason


def test_dev_zero_is_refused():
    with pytest.raises(ConfigError) as caught:
        load_config("/dev/zero")
    assert "not a regular file" in caught.value.reason


def test_an_oversized_file_is_refused(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text(PRICE + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "larger than" in caught.value.reason


def test_state_file_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "state")
    err = error(tmp_path, '[feedsup]\nstate_file = "state"\n' + PRICE)
    assert err.key == "feedsup.state_file" and "not a regular file" in err.reason
    assert stat.S_ISFIFO(os.stat(tmp_path / "state").st_mode)


@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_exits_78_with_the_key_and_no_traceback(tmp_path, command):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n" + PRICE)
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", command, "-c", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stderr
    assert "Traceback" not in out.stderr and "nested too deeply" in out.stderr
