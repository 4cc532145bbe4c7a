"""Ed25519 API keys in the simulator, as Binance documents them (rest-api.md
and web-socket-api.md "SIGNED Endpoint security"; faqs/api_key_types.md).

The account registers an Ed25519 *public* key under an API key of its own;
a request under that API key carries ``signature`` = base64 of the Ed25519
signature over exactly the payload an HMAC request signs (the query string
+ body for REST, the sorted ``key=value&...`` for the WebSocket API),
percent-encoded in a URL. Each API key is one type: anything else (a
tampered payload, another private key, an HMAC hex digest, not base64) is
400 -1022 "Signature for this request is not valid.".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from simhelpers import get, http

from feedsup.sim import SimOptions
from feedsup.sim.rest import RestError
from feedsup.sim.signing import ApiKeys, verify_rest, ws_api_payload

ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

HMAC_KEY, SECRET = "hmac-key-7d1", "hmac-secret-3c9"
ED_KEY = "ed25519-key-51a"
PRIVATE = ed25519.Ed25519PrivateKey.generate()
OTHER = ed25519.Ed25519PrivateKey.generate()     # a key the account never registered
PAYLOAD = "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&timestamp=1767225600000"
BAD_SIGNATURE = (400, -1022, "Signature for this request is not valid.")


def public_pem(private: Any) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def ed_sign(payload: str, private: Any = PRIVATE) -> str:
    return base64.b64encode(private.sign(payload.encode())).decode()


def hmac_sign(payload: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def options(**overrides: Any) -> SimOptions:
    base = dict(api_key=HMAC_KEY, api_secret=SECRET, ed25519_api_key=ED_KEY,
                ed25519_public_key=public_pem(PRIVATE))
    return SimOptions(**{**base, **overrides})


KEYS = ApiKeys.from_options(options())


def rejection(call: Any) -> tuple[int, int, str]:
    with pytest.raises(RestError) as err:
        call()
    return err.value.status, err.value.code, err.value.msg


# -- the pure check --------------------------------------------------------------------

def test_a_good_ed25519_signature_is_accepted():
    KEYS.verify(ED_KEY, PAYLOAD, ed_sign(PAYLOAD))


def test_hmac_keys_still_verify_alongside():
    KEYS.verify(HMAC_KEY, PAYLOAD, hmac_sign(PAYLOAD))
    KEYS.verify(HMAC_KEY, PAYLOAD, hmac_sign(PAYLOAD).upper())   # HMAC: case-insensitive


@pytest.mark.parametrize("case", ["tampered payload", "wrong private key", "hmac digest", "hmac digest, right secret",
                                  "not base64", "base64, wrong length", "case changed", "empty bytes"])
def test_a_bad_ed25519_signature_is_1022(case):
    signature = {
        "tampered payload": ed_sign(PAYLOAD.replace("0.01", "0.02")),
        "wrong private key": ed_sign(PAYLOAD, OTHER),
        "hmac digest": hmac_sign(PAYLOAD, "anything"),
        "hmac digest, right secret": hmac_sign(PAYLOAD),
        "not base64": "not base64 at all!",
        "base64, wrong length": base64.b64encode(b"x" * 48).decode(),
        # Ed25519 signatures are case-sensitive (rest-api.md "Signature Case Sensitivity").
        "case changed": ed_sign(PAYLOAD).swapcase(),
        "empty bytes": "====",
    }[case]
    assert rejection(lambda: KEYS.verify(ED_KEY, PAYLOAD, signature)) == BAD_SIGNATURE


def test_an_ed25519_signature_against_the_hmac_key_is_1022():
    assert rejection(lambda: KEYS.verify(HMAC_KEY, PAYLOAD, ed_sign(PAYLOAD))) == BAD_SIGNATURE


def test_api_keys_are_checked_before_signatures():
    assert KEYS.check_api_key(ED_KEY) == "ed25519" and KEYS.check_api_key(HMAC_KEY) == "hmac"
    assert rejection(lambda: KEYS.check_api_key("nobody"))[:2] == (401, -2015)
    assert rejection(lambda: KEYS.check_api_key(""))[:2] == (401, -2014)
    assert rejection(lambda: KEYS.verify("nobody", PAYLOAD, ed_sign(PAYLOAD)))[:2] == (401, -2015)


def test_rest_signature_is_percent_decoded_before_checking():
    """base64 holds + / =; a client URL-encodes the signature (rest-api.md
    Ed25519 example), the payload is the query string before it, as sent."""
    total = f"{PAYLOAD}&signature={quote(ed_sign(PAYLOAD), safe='')}"
    ms = 1767225600000
    params = verify_rest(total, ED_KEY, KEYS, ms, ms, 5000)
    assert params["symbol"] == "BTCUSDT" and "signature" not in params
    wrong = f"{PAYLOAD}&signature={quote(ed_sign(PAYLOAD, OTHER), safe='')}"
    assert rejection(lambda: verify_rest(wrong, ED_KEY, KEYS, ms, ms, 5000)) == BAD_SIGNATURE


def test_without_an_ed25519_key_registered_only_hmac_exists():
    keys = ApiKeys.from_options(SimOptions(api_key=HMAC_KEY, api_secret=SECRET))
    assert rejection(lambda: keys.verify(ED_KEY, PAYLOAD, ed_sign(PAYLOAD)))[:2] == (401, -2015)
    keys.verify(HMAC_KEY, PAYLOAD, hmac_sign(PAYLOAD))


@pytest.mark.parametrize("case,words", [
    ("same api key", "differ"),
    ("not pem", "PEM"),
    ("private key", "public key"),
    ("ec key", "Ed25519"),
    ("no api key", "ed25519_api_key"),
])
def test_a_bad_registration_is_refused_clearly(case, words):
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private_pem = PRIVATE.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    overrides = {"same api key": {"ed25519_api_key": HMAC_KEY}, "not pem": {"ed25519_public_key": "hello"},
                 "private key": {"ed25519_public_key": private_pem}, "ec key": {"ed25519_public_key": ec_pem},
                 "no api key": {"ed25519_api_key": ""}}[case]
    with pytest.raises(ValueError) as err:
        ApiKeys.from_options(options(**overrides))
    assert words in str(err.value)
    assert "PRIVATE KEY" not in str(err.value)   # never echoes key material


# -- every signed endpoint the simulator serves -------------------------------------------

@pytest.fixture
def esim(make_sim):
    return make_sim(speed=60.0, trade_rate=0.5, book_rate=0.5, api_key=HMAC_KEY, api_secret=SECRET,
                    ed25519_api_key=ED_KEY, ed25519_public_key=public_pem(PRIVATE))


def server_ms(sim: Any) -> int:
    return get(sim.base_url + "/api/v3/time").body["serverTime"]


def call(sim: Any, method: str, path: str, key: str = ED_KEY, how: str = "ed25519", in_body: bool = False,
         **params: Any) -> Any:
    """A signed REST call as a Binance client makes it: Ed25519 signatures
    base64 then URL-encoded, HMAC ones hex."""
    params["timestamp"] = server_ms(sim)
    query = urlencode(params)
    signature = {"ed25519": lambda: ed_sign(query), "other": lambda: ed_sign(query, OTHER),
                 "hmac": lambda: hmac_sign(query)}[how]()
    query += "&signature=" + quote(signature, safe="")
    headers = {"X-MBX-APIKEY": key}
    if in_body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return http(method, sim.base_url + path, data=query.encode(), headers=headers)
    return http(method, f"{sim.base_url}{path}?{query}", headers=headers)


# What feedsup signs (account snapshots) plus orders, on both markets.
SIGNED = [("GET", "/api/v3/account", {}), ("GET", "/api/v3/openOrders", {}),
          ("POST", "/api/v3/order/test", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}),
          ("GET", "/fapi/v2/account", {}), ("GET", "/fapi/v3/account", {}), ("GET", "/fapi/v1/openOrders", {}),
          ("GET", "/fapi/v2/positionRisk", {})]


@pytest.mark.parametrize("method,path,params", SIGNED, ids=[f"{m} {p}" for m, p, _ in SIGNED])
def test_every_signed_rest_endpoint_verifies_ed25519(esim, method, path, params):
    good = call(esim, method, path, **params)
    assert good.status == 200, good.body
    for how, key in (("other", ED_KEY), ("hmac", ED_KEY), ("ed25519", HMAC_KEY)):
        bad = call(esim, method, path, key=key, how=how, **params)
        assert (bad.status, bad.body) == (400, {"code": -1022, "msg": BAD_SIGNATURE[2]}), (how, key)


@pytest.mark.parametrize("market,path", [("spot", "/api/v3/order"), ("usdm", "/fapi/v1/order")])
def test_orders_signed_with_ed25519_in_the_body_are_placed(esim, market, path):
    placed = call(esim, "POST", path, in_body=True, symbol="BTCUSDT", side="BUY", type="MARKET",
                  quantity="0.010")
    # USD-M answers a market order NEW (its default newOrderRespType is ACK).
    assert placed.status == 200 and placed.body["status"] in ("FILLED", "NEW"), placed.body
    refused = call(esim, "POST", path, in_body=True, how="other", symbol="BTCUSDT", side="BUY",
                   type="MARKET", quantity="0.010")
    assert refused.body["code"] == -1022


def test_the_listen_key_takes_the_ed25519_api_key(esim):
    """USER_STREAM: API key only, whatever its type (no signature)."""
    for method in ("POST", "PUT", "DELETE"):
        got = http(method, esim.base_url + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": ED_KEY})
        assert got.status == 200, (method, got.body)
    unknown = http("POST", esim.base_url + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": "nobody"})
    assert unknown.body["code"] == -2015


def ws_subscribe(sim: Any, ws_factory: Any, key: str = ED_KEY, how: str = "ed25519") -> Any:
    ws = ws_factory(sim.ws_api_url)
    params: dict[str, Any] = {"apiKey": key, "recvWindow": 5000, "timestamp": server_ms(sim)}
    payload = ws_api_payload(params)
    params["signature"] = {"ed25519": lambda: ed_sign(payload), "other": lambda: ed_sign(payload, OTHER),
                           "hmac": lambda: hmac_sign(payload), "hmac-any": lambda: hmac_sign(payload, "x"),
                           "not base64": lambda: "%%%"}[how]()
    ws.send(json.dumps({"id": "sub", "method": "userDataStream.subscribe.signature", "params": params}))
    return json.loads(ws.recv())


def test_ws_api_subscribe_verifies_ed25519(esim, ws_factory):
    reply = ws_subscribe(esim, ws_factory)
    assert reply["status"] == 200 and reply["result"]["subscriptionId"] == 0, reply
    assert ws_subscribe(esim, ws_factory, key=HMAC_KEY, how="hmac")["status"] == 200


@pytest.mark.parametrize("key,how", [(ED_KEY, "other"), (ED_KEY, "hmac"), (ED_KEY, "hmac-any"),
                                     (ED_KEY, "not base64"), (HMAC_KEY, "ed25519")])
def test_ws_api_subscribe_with_a_bad_signature_is_1022(esim, ws_factory, key, how):
    reply = ws_subscribe(esim, ws_factory, key=key, how=how)
    assert reply["status"] == 400 and reply["error"] == {"code": -1022, "msg": BAD_SIGNATURE[2]}


# -- feedsup sim --ed25519-public-key ---------------------------------------------------------

def test_cli_refuses_a_private_key_as_the_public_one_without_echoing_it(tmp_path):
    pem = PRIVATE.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    path = tmp_path / "oops.pem"
    path.write_text(pem)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "feedsup.sim", "--ed25519-public-key", str(path)],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 2 and done.stdout == ""
    assert "holds a private key" in done.stderr
    assert not any(line in done.stderr for line in pem.splitlines()[1:-1])
