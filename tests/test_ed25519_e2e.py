"""Ed25519 end to end: a real ``feedsup sim`` that registered an Ed25519 public
key, a real ``feedsup run`` whose account streams sign with the private key
(``ed25519_key_file``), a consumer on its PUB socket.

The simulator has no HMAC secret for that API key, so a snapshot and live
events reaching the consumer mean it verified Ed25519 signatures: the spot
WebSocket API subscription, the REST snapshots of both markets. A different
private key under the same API key ends the stream FATAL with Binance's
-1022 in its status, once, with no key material in logs or status.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import types
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from harness import REPO, Collector, Feedsup, tied, wait_for
from feedsup.procs import read_line
from test_account_e2e import AccountCollector, frames_of
from test_secrets import cli, spawns, wait_fatal

ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
from cryptography.hazmat.primitives import serialization  # noqa: E402

ED_KEY = "e2e-ed25519-api-key-6e0b"
KEY_ENV = "FEEDSUP_E2E_ED25519_API_KEY"
PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}


def private_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def write_private(path: Path, key: Any) -> str:
    """A private key file as an operator keeps one: mode 0600 from creation."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    assert os.stat(path).st_mode & 0o777 == 0o600
    return str(path)


def key_material(*keys: Any) -> list[str]:
    """Every form of the keys a leak could take: PEM bodies, raw bytes in base64 and hex."""
    out = [ED_KEY]
    for key in keys:
        for pem in (private_pem(key), public_pem(key)):
            out += [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        out += [base64.b64encode(raw).decode(), raw.hex()]
    return out


@pytest.fixture
def keys(tmp_path):
    registered, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    return types.SimpleNamespace(registered=registered, other=other,
                                 good_file=write_private(tmp_path / "ed25519.pem", registered),
                                 wrong_file=write_private(tmp_path / "other.pem", other))


@pytest.fixture
def cli_sim(tmp_path, keys):
    """``feedsup sim`` as a process, the Ed25519 public key registered from a file."""
    pub = tmp_path / "ed25519.pub.pem"
    pub.write_bytes(public_pem(keys.registered))
    proc = subprocess.Popen(tied([sys.executable, "-m", "feedsup.cli", "sim", "--speed", "10", "--symbols",
                                  "BTCUSDT", "--trade-rate", "4", "--book-rate", "0.5", "--ping-interval", "1",
                                  "--pong-timeout", "3", "--ed25519-api-key", ED_KEY,
                                  "--ed25519-public-key", str(pub)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        line = read_line(proc, 30)
        if not line:   # it exited before serving: say why
            proc.wait(10)
            raise AssertionError(f"feedsup sim exited {proc.returncode}: {proc.stderr.read().decode()}")
        urls = json.loads(line)
        yield types.SimpleNamespace(ws_url=urls["ws_url"], base_url=urls["rest_url"], proc=proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def feedsup(start_feedsup, monkeypatch):
    monkeypatch.setenv(KEY_ENV, ED_KEY)
    return start_feedsup


def account(name: str, market: str, key_file: str) -> dict[str, Any]:
    return {"name": name, "market": market, "channel": "account", "api_key_env": KEY_ENV,
            "ed25519_key_file": key_file}


def ed_order(sim: Any, key: Any, path: str) -> dict[str, Any]:
    """A market order signed as a Binance client signs with an Ed25519 key."""
    query = urlencode({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010",
                       "timestamp": int(time.time() * 1000)})
    query += "&signature=" + quote(base64.b64encode(key.sign(query.encode())).decode(), safe="")
    req = urllib.request.Request(f"{sim.base_url}{path}?{query}", method="POST",
                                 headers={"X-MBX-APIKEY": ED_KEY})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def wait_filled(col: Collector, topic: str, order_id: int) -> dict[str, Any]:
    def filled() -> dict[str, Any] | None:
        return next((f["data"] for f in frames_of(col, topic)
                     if f["data"]["order_id"] == order_id and f["data"]["order_status"] == "FILLED"), None)
    return wait_for(filled, 15, f"{topic} {order_id} FILLED")


def test_accounts_signed_with_ed25519_get_snapshot_and_events(cli_sim, keys, feedsup, timing):
    t0 = time.monotonic()
    fs, col = feedsup(cli_sim, [account("ed-spot", "spot", keys.good_file),
                                account("ed-usdm", "usdm", keys.good_file)], collect=AccountCollector)
    col.wait_count(2, 20, "account.snapshot")
    timing("ed25519 accounts: start -> both snapshots at the consumer", time.monotonic() - t0)
    snapshots = {f["stream"]: f["data"] for f in frames_of(col, "account.snapshot")}
    assert set(snapshots) == {"ed-spot", "ed-usdm"}
    assert any(b["asset"] == "USDT" for b in snapshots["ed-spot"]["balances"])
    for name in ("ed-spot", "ed-usdm"):
        fs.wait_running(name)
    spot = ed_order(cli_sim, keys.registered, "/api/v3/order")
    report = wait_filled(col, "account.executionReport", spot["orderId"])
    assert Decimal(report["cumulative_filled_quantity"]) == Decimal("0.01")
    usdm = ed_order(cli_sim, keys.registered, "/fapi/v1/order")
    update = wait_filled(col, "account.ORDER_TRADE_UPDATE", usdm["orderId"])
    assert Decimal(update["cumulative_filled_quantity"]) == Decimal("0.01")
    assert "ed25519 signature" in fs.log()     # the spot worker subscribed with Ed25519
    for name in ("ed-spot", "ed-usdm"):
        assert fs.stream(name)["restarts"] == 0
    for secret in key_material(keys.registered):
        assert secret not in fs.log()


def test_a_wrong_ed25519_key_is_fatal_once_with_the_reason(cli_sim, keys, feedsup, timing):
    t0 = time.monotonic()
    fs, col = feedsup(cli_sim, [PRICE, account("bad-spot", "spot", keys.wrong_file),
                                account("bad-usdm", "usdm", keys.wrong_file)],
                      collect=lambda fs: Collector(fs.pub, ("",)))
    rows = {name: wait_fatal(fs, name) for name in ("bad-spot", "bad-usdm")}
    timing("wrong ed25519 key -> FATAL (both markets)", time.monotonic() - t0)
    for name, row in rows.items():
        reason = row["last_reason"]
        assert "credentials rejected, signature not valid" in reason and "-1022" in reason, (name, reason)
    col.wait_more(10, 8, "aggTrade.")      # time passes, the parent runs on: nobody tries again
    for name in rows:
        assert spawns(fs, name) == 1, f"{name} spawned more than once"
        assert fs.stream(name)["restarts"] == 0
    assert fs.stream("price")["state"] == "RUNNING"
    places = {"log": fs.log(), "status --json": cli("status", "--json", "--control", fs.control),
              "status": cli("status", "--control", fs.control), "frames": repr(list(col.frames))}
    assert "bad-usdm" in places["status"] and "-1022" in places["status --json"]
    for where, text in places.items():
        for secret in key_material(keys.registered, keys.other):
            assert secret not in text, f"key material leaked into {where}"


def test_only_wrong_key_streams_exit_1(cli_sim, keys, feedsup):
    """README "Exit codes of feedsup run": 1 once every stream is FATAL."""
    fs, _ = feedsup(cli_sim, [account("bad-spot", "spot", keys.wrong_file),
                              account("bad-usdm", "usdm", keys.wrong_file)],
                    collect=lambda fs: Collector(fs.pub, ("",)))
    assert fs.proc.wait(timeout=30) == 1
    log = fs.log()
    for name in ("bad-spot", "bad-usdm"):
        assert any(f"stream={name}" in line and "-1022" in line for line in log.splitlines()), name
    for secret in key_material(keys.registered, keys.other):
        assert secret not in log
