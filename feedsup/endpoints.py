"""Default endpoints in a private folder, and ipc sockets only the owner opens.

Without CURVE, file permissions are the access control: the default PUB and
control sockets are ipc sockets in ``$XDG_RUNTIME_DIR/feedsup`` (a per-user
tmpfs, 0700 by the login manager) or else ``/tmp/feedsup-<uid>``, a folder
we create 0700 and refuse to use if another user owns it or can enter it.
Every ipc socket the parent binds is made 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

import zmq

# sun_path holds 107 bytes: leave room for "/feedsup/pub".
_MAX_RUNTIME_BASE = 90


def runtime_dir(environ: Mapping[str, str] = os.environ, uid: int | None = None) -> str:
    """The private folder of the default endpoints."""
    base = environ.get("XDG_RUNTIME_DIR", "")
    if base.startswith("/") and len(base.encode()) <= _MAX_RUNTIME_BASE:
        return os.path.join(base, "feedsup")
    return f"/tmp/feedsup-{os.geteuid() if uid is None else uid}"


def default_pub(environ: Mapping[str, str] = os.environ) -> str:
    return f"ipc://{runtime_dir(environ)}/pub"


def default_control(environ: Mapping[str, str] = os.environ) -> str:
    return f"ipc://{runtime_dir(environ)}/ctl"


def folder_problem(mode: int, owner: int, user: int) -> str | None:
    """Why a folder with ``mode``/``owner`` is not private to ``user``; None if it is."""
    if not stat.S_ISDIR(mode):
        return "is not a folder"
    if owner != user:
        return f"is owned by uid {owner}, not by the user running feedsup (uid {user})"
    if mode & 0o077:
        return f"is open to group or others (mode {stat.S_IMODE(mode):04o}); fix: chmod 700"
    return None


def check_private_folder(path: str) -> str | None:
    """Why ``path`` (if it exists) cannot hold our sockets; None if fine or absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    return folder_problem(info.st_mode, info.st_uid, os.geteuid())


def ensure_private_folder(path: str) -> None:
    """Create ``path`` 0700, or check an existing one; raises ``PermissionError``."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    problem = check_private_folder(path)
    if problem:
        raise PermissionError(f"{path} {problem}")


def ipc_path(endpoint: str) -> str | None:
    """The file of an ipc endpoint; None for tcp and abstract (@name) sockets."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    return None if path.startswith("@") else path


def bind_private(sock: zmq.Socket, endpoint: str) -> None:
    """Bind; an ipc socket file is created 0600 (umask during bind, then chmod),
    in a private folder when it is the default runtime folder."""
    path = ipc_path(endpoint)
    if path is None:
        sock.bind(endpoint)
        return
    if os.path.dirname(path) == runtime_dir():
        ensure_private_folder(os.path.dirname(path))
    old = os.umask(0o177)   # libzmq binds in this thread: the file is born 0600
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
