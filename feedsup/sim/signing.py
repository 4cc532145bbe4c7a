"""Signed-request checks: API key, signature (HMAC-SHA256 or Ed25519), timestamp window.

Binance's API key types (faqs/api_key_types.md): an HMAC key signs with a
shared secret, hex digest, case-insensitive; an Ed25519 key is registered as
a public key and signs with its private key, base64, case-sensitive
(rest-api.md "SIGNED Endpoint security"). The API key names the type: a
signature of any other form, or over other bytes, is 400 -1022.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import parse_qsl, unquote_plus

from .rest import RestError, mandatory

if TYPE_CHECKING:
    from .options import SimOptions

HMAC, ED25519 = "hmac", "ed25519"
BAD_SIGNATURE = (400, -1022, "Signature for this request is not valid.")


def hmac_hex(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def load_ed25519_public_key(pem: str) -> Any:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo, as Binance's API
    management page takes it); ValueError naming what is wrong, never the text."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise ValueError("Ed25519 keys need the 'cryptography' package: "
                         "pip install -e \".[ed25519]\"") from None
    if "PRIVATE KEY" in pem:
        raise ValueError("the Ed25519 public key given holds a private key: register the public key "
                         "(openssl pkey -in key.pem -pubout)")
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise ValueError("the Ed25519 public key given is not a PEM public key "
                         "(-----BEGIN PUBLIC KEY----- ...)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"the Ed25519 public key given holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def ed25519_valid(public_key: Any, payload: str, signature: str) -> bool:
    """Whether ``signature`` is base64 of ``public_key``'s signature over ``payload``."""
    from cryptography.exceptions import InvalidSignature
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):   # not base64 (ValueError: not even ASCII)
        return False
    if len(raw) != 64:
        return False
    try:
        public_key.verify(raw, payload.encode())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class ApiKeys:
    """The API keys of the simulated account, each of one type."""

    hmac_secrets: Mapping[str, str] = field(default_factory=dict)   # API key -> secret
    ed25519: Mapping[str, Any] = field(default_factory=dict)        # API key -> public key

    @classmethod
    def from_options(cls, options: "SimOptions") -> "ApiKeys":
        """ValueError on a registration Binance would refuse (never quoting key text)."""
        hmac_secrets = {options.api_key: options.api_secret}
        if not options.ed25519_public_key:
            return cls(hmac_secrets)
        if not options.ed25519_api_key:
            raise ValueError("an Ed25519 public key needs its API key (ed25519_api_key)")
        if options.ed25519_api_key == options.api_key:
            raise ValueError("the Ed25519 API key must differ from the HMAC API key: each key is one type")
        return cls(hmac_secrets, {options.ed25519_api_key: load_ed25519_public_key(options.ed25519_public_key)})

    def check_api_key(self, given: str | None) -> str:
        """The type of a known API key (USER_STREAM requests need no more)."""
        if not given:
            raise RestError(401, -2014, "API-key format invalid.")
        for key, kind in [(k, HMAC) for k in self.hmac_secrets] + [(k, ED25519) for k in self.ed25519]:
            if hmac.compare_digest(given.encode(), key.encode()):
                return kind
        raise RestError(401, -2015, "Invalid API-key, IP, or permissions for action.")

    def verify(self, api_key: str | None, payload: str, signature: Any) -> None:
        """-2014/-2015 for the key, -1022 unless ``signature`` is the key's own over ``payload``."""
        kind = self.check_api_key(api_key)
        assert api_key is not None
        if not isinstance(signature, str):
            ok = False
        elif kind == HMAC:
            ok = hmac.compare_digest(hmac_hex(self.hmac_secrets[api_key], payload).encode(),
                                     signature.lower().encode())
        else:
            ok = ed25519_valid(self.ed25519[api_key], payload, signature)
        if not ok:
            raise RestError(*BAD_SIGNATURE)


def strip_signature(total_params: str) -> tuple[str, str]:
    """Split Binance's ``totalParams`` into (signed payload, signature)."""
    kept, signature = [], ""
    for part in total_params.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature="):]
        elif part:
            kept.append(part)
    return "&".join(kept), signature


def check_timestamp(params: Mapping[str, str], server_ms: int, wall_ms: int, default_window: int) -> None:
    """Binance's rule, against simulated time or (for convenience) wall time."""
    text = params.get("timestamp")
    if not text:
        raise mandatory("timestamp")
    try:
        ts = int(text)
    except ValueError:
        raise RestError(400, -1100, "Illegal characters found in parameter 'timestamp'.") from None
    window = recv_window(params.get("recvWindow"), default_window)
    if not any(ts < now + 1000 and now - ts <= window for now in (server_ms, wall_ms)):
        raise RestError(400, -1021, "Timestamp for this request is outside of the recvWindow.")


def recv_window(text: str | None, default: int) -> float:
    """rest-api.md "Timing security": milliseconds with up to three decimals, at most 60000."""
    if not text:
        return float(default)
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or len(frac) > 3 or (frac and not frac.isdigit()):
        raise RestError(400, -1100, "Illegal characters found in parameter 'recvWindow'; "
                                    "legal range is '^[0-9]{1,5}(\\.[0-9]{1,3})?$'.")
    value = float(text)
    if value > 60_000:
        raise RestError(400, -1131, "recvWindow must be less than 60000")
    return value


def verify_rest(total_params: str, api_key: str | None, keys: ApiKeys, server_ms: int, wall_ms: int,
                window: int, query: str | None = None, body: str = "") -> dict[str, str]:
    """Check a signed REST request; returns its parameters.

    ``totalParams`` is the query string concatenated with the body (rest-api.md
    "SIGNED endpoint security"), as sent, without ``&signature=``; the
    signature's value is URL-decoded (base64 holds + / =, which clients
    percent-encode); "if a parameter is sent in both the query string and
    the request body, the query string parameter will be used".
    """
    keys.check_api_key(api_key)
    payload, signature = strip_signature(total_params)
    if not signature:
        raise mandatory("signature")
    keys.verify(api_key, payload, unquote_plus(signature))
    if query is None:
        params = dict(parse_qsl(payload, keep_blank_values=True))
    else:
        params = dict(parse_qsl(body, keep_blank_values=True))
        params.update(parse_qsl(query, keep_blank_values=True))
        params.pop("signature", None)
    check_timestamp(params, server_ms, wall_ms, window)
    return params


def ws_api_payload(params: Mapping[str, object]) -> str:
    """WebSocket API: every param but the signature, sorted by name, key=value&..."""
    def text(v: object) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)
    return "&".join(f"{k}={text(v)}" for k, v in sorted(params.items()) if k != "signature")
