"""[sink.nats] and [feedsup] instance: defaults, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feedsup.config import ConfigError, load_config
from feedsup.sinks.config import NatsSink

STREAM = """
[[stream]]
name = "price"
market = "spot"
channel = "aggTrade"
symbols = ["BTCUSDT"]
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "feedsup.toml"
    path.write_text(text + STREAM)
    return load_config(str(path))


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value


def test_no_sink_by_default(tmp_path):
    config = load(tmp_path, "")
    assert config.sink is None and config.instance == ""


def test_defaults(tmp_path):
    config = load(tmp_path, '[feedsup]\ninstance = "a"\n[sink.nats]\nservers = ["nats://127.0.0.1:4222"]\n')
    assert config.instance == "a"
    assert config.sink == NatsSink(servers=("nats://127.0.0.1:4222",))
    assert config.sink.subject("kline.BTCUSDT.1m") == "feedsup.kline.BTCUSDT.1m"


def test_every_key(tmp_path):
    (tmp_path / "u.creds").write_text("x")
    config = load(tmp_path, """
[sink.nats]
servers = ["nats://a:4222", "tls://b:4222"]
stream = "MD"
subject_prefix = "md.binance"
replicas = 3
duplicate_window = 300
buffer = 5000
max_inflight = 200
ack_timeout = 2.5
creds_file = "u.creds"
""")
    s = config.sink
    assert (s.stream, s.subject_prefix, s.replicas, s.duplicate_window) == ("MD", "md.binance", 3, 300.0)
    assert (s.buffer, s.max_inflight, s.ack_timeout) == (5000, 200, 2.5)
    assert s.creds_file == str(tmp_path / "u.creds")


@pytest.mark.parametrize("table, key, reason", [
    ("[sink.nats]\nstream = 'X'", "sink.nats.servers", "required"),
    ("[sink.nats]\nservers = []", "sink.nats.servers", "must not be empty"),
    ("[sink.nats]\nservers = ['http://a:1']", "sink.nats.servers[0]", "must be a URL"),
    ("[sink.nats]\nservers = ['nats://a:1']\nreplicas = 7", "sink.nats.replicas", "between"),
    ("[sink.nats]\nservers = ['nats://a:1']\nsubject_prefix = 'a.*'", "sink.nats.subject_prefix", "tokens"),
    ("[sink.nats]\nservers = ['nats://a:1']\nstream = 'a.b'", "sink.nats.stream", "no dots"),
    ("[sink.nats]\nservers = ['nats://a:1']\nreplica = 3", "sink.nats.replica", "did you mean"),
    ("[sink.nats]\nservers = ['nats://a:1']\ncreds_file = 'nope'", "sink.nats.creds_file", "does not exist"),
    ("[sink.nats]\nservers = ['nats://a:1']\npassword_env = 'P'", "sink.nats.user", "required"),
    ("[sink.kafka]\nservers = ['x']", "sink.kafka", "unknown key"),
])
def test_errors_name_the_key(tmp_path, table, key, reason):
    err = error(tmp_path, table + "\n")
    assert err.key == key and reason in err.reason, str(err)


def test_config_without_sink_never_imports_nats(tmp_path):
    """A parent set up without [sink.nats] does not load nats-py."""
    path = tmp_path / "feedsup.toml"
    path.write_text(f'[feedsup]\npub = "ipc://{tmp_path}/pub"\ncontrol = "ipc://{tmp_path}/ctl"\n' + STREAM)
    code = (
        "import sys\n"
        "from feedsup.config import load_config\n"
        "from feedsup.supervisor.parent import Parent\n"
        f"p = Parent(load_config({str(path)!r}))\n"
        "assert p.sink is None and p.status()['sink'] is None\n"
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
