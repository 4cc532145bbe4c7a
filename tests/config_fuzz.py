"""Hypothesis strategies for TOML-ish config documents, shared by
tests/test_config_fuzz.py (short, fixed seed in CI) and bench/fuzz_config.py
(long run). The property: ``load_config`` returns a ``Config`` whose every
number is within its bounds, or raises ``ConfigError``; nothing else."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

from hypothesis import strategies as st

from feedsup.config import BOUNDS, Config, ConfigError, Connection, Restart, load_config

FEEDSUP_KEYS = ["pub", "control", "log_format", "metrics_port", "pub_hwm", "state_file",
                "curve_server_key_file", "curve_allowed_clients"]
CONNECTION_KEYS = [f.name for f in fields(Connection)]
RESTART_KEYS = [f.name for f in fields(Restart)]
STREAM_KEYS = ["name", "market", "channel", "symbols", "intervals", "depth_levels", "topic_prefix",
               "api_key_env", "api_secret_env", "key_file", "ed25519_key_file", *CONNECTION_KEYS]

numbers = st.one_of(
    st.integers(), st.integers(min_value=-10, max_value=10**6),
    st.integers(min_value=10**17, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, 1e-9, 1e300, 2**31, 2**63, -0.0, 0, 0.05, 0.1, 1, 20, 86400, 86399.9]),
)
texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "spot", "usdm", "kline", "aggTrade", "account", "depth", "1m", "1s", "BTCUSDT",
                     "btcusdt", "ws://[::1", "ws://127.0.0.1:1", "http://[zz]", "wss://h\u00e9st",
                     "tcp://127.0.0.1:*", "tcp://[::1]:99999", "ipc:///tmp/x", "ipc://", "tcp://h:\u0663",
                     "st\x00ate", "/dev/zero", ".", "usdm.", "K", "json", "logfmt", "~/x"]),
)
scalars = st.one_of(numbers, texts, st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(texts, inner, max_size=3)),
                      max_leaves=8)


def table(keys: list[str]) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.one_of(st.sampled_from(keys), texts), values, max_size=len(keys))


streams = st.lists(st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b", "c"]), texts),
     "market": st.one_of(st.sampled_from(["spot", "usdm"]), scalars),
     "channel": st.one_of(st.sampled_from(["aggTrade", "kline", "depth", "account", "bookTicker"]), scalars),
     "symbols": st.one_of(st.lists(st.sampled_from(["BTCUSDT", "ethusdt", "X"]), max_size=3), values)},
    optional={k: values for k in STREAM_KEYS[4:]}), max_size=3)

documents = st.fixed_dictionaries({}, optional={
    "feedsup": table(FEEDSUP_KEYS),
    "binance": st.dictionaries(st.sampled_from(["spot", "usdm", "coinm"]),
                               table(["ws_url", "rest_url", "ws_api_url"]), max_size=2),
    "connection": table(CONNECTION_KEYS),
    "restart": table(RESTART_KEYS),
    "stream": streams,
    "extra": values,
})


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # JSON escapes are TOML basic-string escapes, except for \u0000-ish surrogates
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def render(document: dict) -> str:
    """TOML text; may be invalid (duplicate keys, bad escapes): that is the point too."""
    lines: list[str] = []
    for section, body in document.items():
        if section == "stream" and isinstance(body, list):
            for item in body:
                lines.append("[[stream]]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in item.items()]
        elif section == "binance" and isinstance(body, dict):
            for market, keys in body.items():
                lines.append(f"[binance.{market}]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in keys.items()]
        elif isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{section} = {toml_value(body)}")
    return "\n".join(lines) + "\n"


raw_texts = st.one_of(
    st.text(alphabet=st.sampled_from(list("[]{}=\"'.,#\n \\ux0123456789abcdefnstream:/e+-_")), max_size=200),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


def check_one(path: Path, text: str) -> Config | ConfigError:
    """Load ``text`` from ``path``; fail (AssertionError) on anything but the contract."""
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        config = load_config(str(path))
    except ConfigError as exc:
        assert exc.key and exc.reason, exc
        return exc
    check_within_bounds(config)
    return config


def check_within_bounds(config: Config) -> None:
    """What the loader accepts, the runtime can run: every number in range."""
    tables = {"feedsup": config, "restart": config.restart, "connection": config.connection}
    for stream in config.streams:
        for (section, key), (low, high) in BOUNDS.items():
            obj = stream.connection if section == "connection" else tables[section]
            value = getattr(obj, key)
            assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
            assert value == 0 and key in ("stale_after", "universe_refresh") or low <= value <= high, (key, value)
        for text in (config.pub, config.control, config.state_file, stream.key_file):
            assert "\0" not in text


# Near-valid documents: a valid base with a few keys set to plausible or odd
# values, so many load and the "loaded means runnable" half gets exercised.
plausible = st.one_of(st.floats(min_value=0, max_value=1e6), st.integers(min_value=0, max_value=10**7),
                      numbers, texts)
_SETTABLE = ([("feedsup", k) for k in ("metrics_port", "pub_hwm", "log_format", "state_file")]
             + [("connection", k) for k in CONNECTION_KEYS] + [("restart", k) for k in RESTART_KEYS]
             + [("stream", k) for k in CONNECTION_KEYS + ["depth_levels", "intervals", "symbols"]])


@st.composite
def near_valid(draw: st.DrawFn) -> dict:
    channel = draw(st.sampled_from(["aggTrade", "kline", "depth", "bookTicker"]))
    stream: dict = {"name": "a", "market": draw(st.sampled_from(["spot", "usdm"])), "channel": channel,
                    "symbols": ["BTCUSDT"]}
    if channel == "kline":
        stream["intervals"] = ["1m"]
    document: dict = {"feedsup": {}, "connection": {}, "restart": {}, "stream": [stream]}
    for section, key in draw(st.lists(st.sampled_from(_SETTABLE), max_size=3, unique=True)):
        target = stream if section == "stream" else document[section]
        target[key] = draw(plausible)
    return document
