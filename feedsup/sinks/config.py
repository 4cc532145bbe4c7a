"""``[sink.nats]``: parsed into a frozen dataclass, errors name file and key.

Kept apart from ``feedsup/config.py`` (which only calls ``load_sinks``), so
the sink's keys live with the sink. Nothing here imports nats.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from feedsup import config as cfg

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_NATS_KEYS = (
    "servers", "stream", "subject_prefix", "replicas", "duplicate_window", "buffer",
    "max_inflight", "ack_timeout", "creds_file", "nkey_seed_file", "user", "password_env",
    "token_env", "tls_ca_file", "tls_cert_file", "tls_key_file",
)


@dataclass(frozen=True)
class NatsSink:
    """Where and how frames go to JetStream (see README "NATS JetStream")."""

    servers: tuple[str, ...]
    stream: str = "FEEDSUP"
    subject_prefix: str = "feedsup"
    replicas: int = 1               # when feedsup creates the stream
    duplicate_window: float = 120.0  # seconds: how long Nats-Msg-Id dedup remembers
    buffer: int = 100_000           # frames waiting for an ack; past it: counted loss + gap notice
    max_inflight: int = 1000        # publishes awaiting ack, all topics together
    ack_timeout: float = 5.0        # no ack within this: resend (same Nats-Msg-Id)
    creds_file: str = ""            # NATS .creds (JWT + nkey seed)
    nkey_seed_file: str = ""
    user: str = ""
    password_env: str = ""          # env var holding the password for ``user``
    token_env: str = ""             # env var holding an auth token
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    def subject(self, topic: str) -> str:
        return f"{self.subject_prefix}.{topic}"


def load_sinks(raw: object, at: "cfg._At", config_path: str) -> NatsSink | None:
    """The ``[sink]`` table; only ``nats`` is known. None when absent."""
    table = cfg._Table(raw, at, ("nats",))
    if not table.has("nats"):
        return None
    return _load_nats(table.raw["nats"], at.dot("nats"), config_path)


def _servers(value: object, at: "cfg._At") -> tuple[str, ...]:
    items = cfg._array(cfg._non_empty)(value, at)
    if not items:
        at.fail("must list at least one server")
    for i, url in enumerate(items):
        parts = urlsplit(url)
        if parts.scheme not in NATS_SCHEMES or not parts.hostname:
            at.index(i).fail(f'must be a URL like "nats://host:4222" (scheme one of {", ".join(NATS_SCHEMES)})')
    return items


def _prefix(value: object, at: "cfg._At") -> str:
    text = cfg._non_empty(value, at)
    if not all(_SUBJECT_TOKEN.fullmatch(t) for t in text.split(".")):
        at.fail("must be dot-separated tokens of letters, digits, _ and - (no wildcards, no spaces)")
    return text


def _stream(value: object, at: "cfg._At") -> str:
    text = cfg._non_empty(value, at)
    if not _STREAM_NAME.fullmatch(text):
        at.fail("must be letters, digits, _ and - (JetStream stream names have no dots or spaces)")
    return text


def _file(config_path: str) -> "cfg.Converter[str]":
    beside = cfg._path_beside(config_path)

    def convert(value: object, at: "cfg._At") -> str:
        path = beside(value, at)
        if not os.path.isfile(path):
            at.fail(f"file {path} does not exist")
        return path
    return convert


def _load_nats(raw: object, at: "cfg._At", config_path: str) -> NatsSink:
    table = cfg._Table(raw, at, _NATS_KEYS)
    d = NatsSink(servers=())
    path = _file(config_path)
    sink = NatsSink(
        servers=table.require("servers", _servers),
        stream=table.get("stream", _stream, d.stream),
        subject_prefix=table.get("subject_prefix", _prefix, d.subject_prefix),
        replicas=table.get("replicas", cfg._int_range(1, 5), d.replicas),
        duplicate_window=table.get("duplicate_window", cfg._positive, d.duplicate_window),
        buffer=table.get("buffer", cfg._positive_int, d.buffer),
        max_inflight=table.get("max_inflight", cfg._int_range(1, 4000), d.max_inflight),
        ack_timeout=table.get("ack_timeout", cfg._positive, d.ack_timeout),
        creds_file=table.get("creds_file", path, ""),
        nkey_seed_file=table.get("nkey_seed_file", path, ""),
        user=table.get("user", cfg._non_empty, ""),
        password_env=table.get("password_env", cfg._env_name, ""),
        token_env=table.get("token_env", cfg._env_name, ""),
        tls_ca_file=table.get("tls_ca_file", path, ""),
        tls_cert_file=table.get("tls_cert_file", path, ""),
        tls_key_file=table.get("tls_key_file", path, ""),
    )
    if bool(sink.tls_cert_file) != bool(sink.tls_key_file):
        at.dot("tls_key_file" if sink.tls_cert_file else "tls_cert_file").fail(
            "tls_cert_file and tls_key_file go together")
    if sink.password_env and not sink.user:
        at.dot("user").fail("required with password_env")
    return sink
