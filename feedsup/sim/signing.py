"""Signed-request checks: API key, HMAC-SHA256 signature, timestamp window."""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping
from urllib.parse import parse_qsl

from .rest import RestError, mandatory


def hmac_hex(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def strip_signature(total_params: str) -> tuple[str, str]:
    """Split Binance's ``totalParams`` into (signed payload, signature)."""
    kept, signature = [], ""
    for part in total_params.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature="):]
        elif part:
            kept.append(part)
    return "&".join(kept), signature


def check_api_key(given: str | None, expected: str) -> None:
    if not given:
        raise RestError(401, -2014, "API-key format invalid.")
    if not hmac.compare_digest(given, expected):
        raise RestError(401, -2015, "Invalid API-key, IP, or permissions for action.")


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


def verify_rest(total_params: str, api_key: str | None, key: str, secret: str, server_ms: int, wall_ms: int,
                window: int, query: str | None = None, body: str = "") -> dict[str, str]:
    """Check a signed REST request; returns its parameters.

    ``totalParams`` is the query string concatenated with the body (rest-api.md
    "SIGNED endpoint security"); the signature is hex, case-insensitive; "if a
    parameter is sent in both the query string and the request body, the query
    string parameter will be used".
    """
    check_api_key(api_key, key)
    payload, signature = strip_signature(total_params)
    if not signature:
        raise mandatory("signature")
    if not hmac.compare_digest(hmac_hex(secret, payload), signature.lower()):
        raise RestError(400, -1022, "Signature for this request is not valid.")
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
