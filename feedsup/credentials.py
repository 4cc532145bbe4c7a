"""API credentials for account streams: loading, checking, signing.

Secrets come from environment variables named in the config
(``api_key_env``/``api_secret_env``) or from a key file, optionally with an
Ed25519 private key file for signing instead of an HMAC secret. A file
holding secrets must belong to the user running feedsup and must not be
readable by group or others, like ssh's private keys.

Key file format (TOML, values quoted)::

    api_key = "..."
    api_secret = "..."      # HMAC secret; omit when ed25519_key_file is set

Secrets never appear in ``repr``/``str`` or in any error message: errors name
the variable or file, never a value. The worker loads credentials itself,
so they never travel on a command line or over IPC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from feedsup.config_model import ConfigError, Stream

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILE_KEYS = ("api_key", "api_secret")
# Binance keys are ASCII letters and digits; anything with whitespace or
# control characters is a copy-paste accident worth a clear error.
_PRINTABLE = re.compile(r"[!-~]+")
_MAX_SECRET_FILE = 64 * 1024


@dataclass(frozen=True, repr=False)
class Credentials:
    """An API key and the means to sign with it. Never prints its values."""

    api_key: str = field(repr=False)
    api_secret: str = field(default="", repr=False)  # HMAC-SHA256; "" with Ed25519
    ed25519_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    source: str = ""  # where they came from, e.g. "env BINANCE_API_KEY/BINANCE_API_SECRET"

    @property
    def method(self) -> str:
        """``"ed25519"`` or ``"hmac"``: how ``sign`` signs."""
        return "ed25519" if self.ed25519_key is not None else "hmac"

    def sign(self, payload: str) -> str:
        """Binance's ``signature`` for ``payload`` (the query string or the
        sorted ``key=value&...`` of a WebSocket API request): hex HMAC-SHA256,
        or base64 Ed25519. URL-encoding the result is the caller's job."""
        data = payload.encode()
        if self.ed25519_key is not None:
            return base64.b64encode(self.ed25519_key.sign(data)).decode()
        return hmac.new(self.api_secret.encode(), data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"Credentials(method={self.method}, source={self.source!r}, secrets hidden)"

    __str__ = __repr__


def load_credentials(stream: Stream, environ: Mapping[str, str] = os.environ) -> Credentials:
    """Read the credentials ``stream`` names; raise ``ConfigError`` if they
    are missing, malformed or too exposed. Never retried: a human must act."""
    at = f'stream "{stream.name}"'
    if stream.channel != "account":
        raise ConfigError("config", f"{at}.channel", "only account streams have credentials")
    api_key, api_secret, source = _key_and_secret(stream, environ, at)
    ed25519_key = None
    if stream.ed25519_key_file:
        ed25519_key = _load_ed25519(stream.ed25519_key_file)
        source += f" + ed25519_key_file {stream.ed25519_key_file}"
    elif not api_secret:
        raise ConfigError("config", f"{at}.api_secret_env",
                          "no HMAC secret and no ed25519_key_file: nothing to sign with")
    return Credentials(api_key=api_key, api_secret=api_secret,
                       ed25519_key=ed25519_key, source=source)


def _key_and_secret(stream: Stream, environ: Mapping[str, str],
                    at: str) -> tuple[str, str, str]:
    """API key, HMAC secret ("" when signing with Ed25519) and their source."""
    if stream.key_file:
        api_key, api_secret = _from_key_file(stream.key_file, bool(stream.ed25519_key_file))
        return api_key, api_secret, f"key_file {stream.key_file}"
    if not stream.api_key_env:
        raise ConfigError("config", f"{at}.api_key_env",
                          "an account stream needs api_key_env/api_secret_env or key_file")
    api_key = _from_env(environ, stream.api_key_env, f"{at}.api_key_env")
    api_secret = ""
    if stream.api_secret_env:
        api_secret = _from_env(environ, stream.api_secret_env, f"{at}.api_secret_env")
    source = "env " + "/".join(filter(None, (stream.api_key_env, stream.api_secret_env)))
    return api_key, api_secret, source


# --- environment --------------------------------------------------------------

def _from_env(environ: Mapping[str, str], name: str, key: str) -> str:
    if name not in environ:
        raise ConfigError("environment", key, f"environment variable {name} is not set")
    problem = secret_value_problem(environ[name])
    if problem:
        raise ConfigError("environment", key, f"environment variable {name} {problem}")
    return environ[name].strip()


def secret_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be a key or secret, without quoting it; None if fine."""
    value = value.strip()  # a trailing newline from `cat` or an env file is harmless
    if not value:
        return "is empty"
    if not _PRINTABLE.fullmatch(value):
        return "contains spaces, control or non-ASCII characters"
    return None


# --- files ----------------------------------------------------------------------

def private_file_problem(mode: int, owner: int, user: int, path: str) -> str | None:
    """Why a file with ``mode``/``owner`` may not hold secrets for ``user``.

    Pure, so the rules are testable without root or chown. None if fine."""
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if owner != user:
        return (f"is owned by uid {owner}, not by the user running feedsup (uid {user}); "
                f"fix: chown {user} {path}")
    if mode & 0o077:
        return (f"is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"fix: chmod 600 {path}")
    return None


def read_private_file(path: str, key: str) -> bytes:
    """Read a secrets file after checking owner and mode on the open file
    (fstat, so the file checked is the file read; symlinks are followed, as
    secret mounts use them). Opened non-blocking: a FIFO would otherwise
    hang us in open() until some writer came."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(path, key, "file not found") from None
    except OSError as e:
        raise ConfigError(path, key, f"cannot open: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        problem = private_file_problem(info.st_mode, info.st_uid, os.geteuid(), path)
        if problem:
            raise ConfigError(path, key, f"refused: {problem}")
        if info.st_size > _MAX_SECRET_FILE:
            raise ConfigError(path, key, f"too large for a key file ({info.st_size} bytes)")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(_MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)


def _from_key_file(path: str, ed25519: bool) -> tuple[str, str]:
    raw = read_private_file(path, "key_file")
    table = _parse_key_file(raw, path)
    # Unknown key names are not echoed: a pasted secret may sit in a key's place.
    unknown = [k for k in table if k not in KEY_FILE_KEYS]
    if unknown:
        raise ConfigError(path, "(keys)", f"{len(unknown)} unknown key(s); "
                          f"allowed: {', '.join(KEY_FILE_KEYS)}")
    api_key = _key_file_value(table, "api_key", path)
    if ed25519:
        if "api_secret" in table:
            raise ConfigError(path, "api_secret", "must not be set with ed25519_key_file: "
                              "sign with one or the other")
        return api_key, ""
    return api_key, _key_file_value(table, "api_secret", path)


def _parse_key_file(raw: bytes, path: str) -> dict[str, object]:
    try:
        return tomllib.loads(raw.decode())
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        # Only the location: the parser's message may quote the line's content.
        where = re.search(r"\(at (line \d+)", str(e))
        location = where.group(1) if where else "(file)"
        raise ConfigError(path, location, 'not valid TOML; expected lines like '
                          'api_key = "..." with quoted values') from None


def _key_file_value(table: Mapping[str, object], name: str, path: str) -> str:
    if name not in table:
        raise ConfigError(path, name, "required")
    value = table[name]
    if not isinstance(value, str):
        raise ConfigError(path, name, "must be a quoted string")
    problem = secret_value_problem(value)
    if problem:
        raise ConfigError(path, name, problem)
    return value.strip()


def _load_ed25519(path: str) -> Ed25519PrivateKey:
    key = "ed25519_key_file"
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise ConfigError(path, key, "Ed25519 signing needs the 'cryptography' package: "
                          "pip install cryptography, or use an HMAC secret") from None
    pem = read_private_file(path, key)
    try:
        private_key = load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(path, key, "is encrypted; feedsup needs an unencrypted PEM "
                          "private key (protect it with chmod 600 instead)") from None
    except ValueError:
        raise ConfigError(path, key, "is not a PEM private key") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ConfigError(path, key, f"holds a {type(private_key).__name__}, "
                          "not an Ed25519 private key")
    return private_key
