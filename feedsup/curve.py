"""ZeroMQ CURVE on the PUB and control sockets: keys, allow-list, ZAP handler.

With ``[feedsup] curve_server_key_file`` set, both sockets are CURVE servers:
traffic is encrypted, and a ZAP handler (pyzmq's ``ThreadAuthenticator``)
lets in only clients whose public key is in ``curve_allowed_clients``; every
refusal is counted (``feedsup status``: ``curve_refused``; metrics:
``feedsup_curve_refused_total``).

Keys are ZeroMQ certificate files as ``zmq.auth`` writes them: ``NAME.key``
holds the public key, ``NAME.key_secret`` both keys and must be private
(owner only, like an ssh key). Make a pair with::

    python -m feedsup.curve server      # server.key, server.key_secret
    python -m feedsup.curve alice       # a client's pair; prints its public key

Clients (``Subscriber``, ``request``, and so ``feedsup status/tail/restart``)
take ``CurveKeys``; without one they read ``FEEDSUP_CURVE_SERVER_KEY`` (the
server's public key, Z85 or a certificate file) and
``FEEDSUP_CURVE_CLIENT_KEY_FILE`` (the client's ``.key_secret``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import zmq
from zmq.utils import z85

ZAP_DOMAIN = b"feedsup"
# Z85 encodes a 32-byte key in 40 characters.
_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
MAX_CERT_BYTES = 64 << 10
ENV_SERVER_KEY = "FEEDSUP_CURVE_SERVER_KEY"
ENV_CLIENT_KEY_FILE = "FEEDSUP_CURVE_CLIENT_KEY_FILE"


class CurveKeyError(ValueError):
    """A key or certificate that cannot be used (the message names it, never a secret)."""


def is_z85_key(text: str) -> bool:
    if not _Z85_KEY.fullmatch(text):
        return False
    try:
        return len(z85.decode(text)) == 32
    except Exception:
        return False


def parse_certificate(raw: bytes, name: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a ZeroMQ certificate (ZPL text)."""
    public = secret = None
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        value = value.strip().strip("'\"")
        if sep and key.strip() == "public-key":
            public = value
        elif sep and key.strip() == "secret-key":
            secret = value
    if public is None or not is_z85_key(public):
        raise CurveKeyError(f"{name}: no valid public-key (a ZeroMQ certificate, see python -m feedsup.curve)")
    if secret is not None and not is_z85_key(secret):
        raise CurveKeyError(f"{name}: the secret-key is not a Z85 CURVE key")
    return public.encode(), secret.encode() if secret is not None else None


def public_key_of(secret: bytes) -> bytes:
    return zmq.curve_public(secret)


@dataclass(frozen=True)
class CurveKeys:
    """What a client needs: the server's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes = field(repr=False)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client; call before connect()."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    @classmethod
    def load(cls, server_key: str, client_key_file: str) -> CurveKeys:
        """``server_key``: Z85 text or a certificate file; ``client_key_file``: a ``.key_secret``."""
        if is_z85_key(server_key):
            server_public = server_key.encode()
        else:
            server_public, _ = parse_certificate(_read(server_key), server_key)
        public, secret = parse_certificate(_read(client_key_file), client_key_file)
        if secret is None:
            raise CurveKeyError(f"{client_key_file}: holds no secret-key (use the .key_secret file)")
        return cls(server_public, public, secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CurveKeys | None:
        server, client = environ.get(ENV_SERVER_KEY, ""), environ.get(ENV_CLIENT_KEY_FILE, "")
        if not server and not client:
            return None
        if not (server and client):
            raise CurveKeyError(f"set both {ENV_SERVER_KEY} and {ENV_CLIENT_KEY_FILE}, or neither")
        return cls.load(server, client)


def _read(path: str) -> bytes:
    from feedsup.config import read_regular_file

    try:
        return read_regular_file(path, MAX_CERT_BYTES)
    except OSError as exc:
        raise CurveKeyError(f"{path}: {exc.strerror or exc}") from None


# --- server side -------------------------------------------------------------------

class Gatekeeper:
    """The allow-list, as a ZAP credentials provider that counts refusals."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(k.encode() if isinstance(k, str) else k for k in allowed)
        self._lock = threading.Lock()
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        with self._lock:    # the authenticator's thread writes, status() reads
            self.refused += 1
        return False


def start_authenticator(ctx: zmq.Context, allowed: Iterable[str]) -> tuple[object, Gatekeeper]:
    """Start the ZAP handler for ``ctx``; start it before binding CURVE sockets,
    since libzmq lets every client in while no handler is running."""
    from zmq.auth.thread import ThreadAuthenticator

    gate = Gatekeeper(allowed)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain=ZAP_DOMAIN.decode(), credentials_provider=gate)
    return auth, gate


def serve(sock: zmq.Socket, public: bytes, secret: bytes) -> None:
    """Make ``sock`` a CURVE server authenticated by the ZAP handler; before bind()."""
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.zap_domain = ZAP_DOMAIN


# --- key generation ----------------------------------------------------------------

def generate(folder: str, name: str) -> tuple[str, str, str]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600, never
    overwritten); return both paths and the public key."""
    public, secret = zmq.curve_keypair()
    public_path = os.path.join(folder, f"{name}.key")
    secret_path = os.path.join(folder, f"{name}.key_secret")
    body = f"# feedsup CURVE certificate\nmetadata\ncurve\n    public-key = \"{public.decode()}\"\n"
    _write(secret_path, body + f"    secret-key = \"{secret.decode()}\"\n", 0o600)
    _write(public_path, body, 0o644)
    return public_path, secret_path, public.decode()


def _write(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)     # whatever the umask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feedsup.curve",
                                     description="Make a ZeroMQ CURVE key pair for feedsup.")
    parser.add_argument("name", help="file name stem: NAME.key and NAME.key_secret")
    parser.add_argument("--dir", default=".", help="folder to write into (default: .)")
    args = parser.parse_args(argv)
    try:
        public_path, secret_path, public = generate(args.dir, args.name)
    except FileExistsError as exc:
        print(f"feedsup.curve: {exc.filename} exists; not overwriting a key", file=sys.stderr)
        return 1
    print(f"public key  {public}\npublic      {public_path}\nsecret      {secret_path} (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
