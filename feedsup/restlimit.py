"""One REST request-weight budget for the whole process tree.

Binance counts request weight per IP per clock minute (6000 spot, 2400
USD-M) and answers 429 + ``Retry-After`` past it, then 418 (a ban of minutes
to days) to a client that keeps sending. Every worker of one parent shares
the IP, so they share one budget: a small JSON state file per market and
REST URL, read and written under an exclusive ``fcntl`` lock. The file
outlives the parent (``budget_dir``), so a restarted parent honours a ban
the previous one met instead of escalating it.

``BudgetState`` + ``reserve`` + ``observe`` are the pure decision core (no
I/O; ``now`` is wall-clock seconds, because Binance's windows align to the
clock minute). ``SharedBudget`` is the thin file-and-lock shell around them.
Callers' deadlines are monotonic seconds: a stepped wall clock may shift a
window, but never makes a call give up early or wait forever.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import math
import os
import stat
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

WINDOW_S = 60.0
LIMITS = {"spot": 6000, "usdm": 2400}
# Stay well below the exchange's limit: other programs may share the IP, and
# the window boundary of Binance and ours can differ by clock skew.
SAFE_FRACTION = 0.8
# Retry-After is normally sent; when it is not, wait this long.
DEFAULT_RETRY_AFTER = {429: 60.0, 418: 120.0}


@dataclass
class BudgetState:
    window: int = -1            # clock minute the ``used`` figure belongs to
    used: int = 0               # weight used in that minute (ours, or the exchange's if higher)
    paused_until: float = 0.0   # nobody sends before this (429/418 Retry-After)
    banned: bool = False        # the pause comes from a 418 (IP ban)

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> "BudgetState":
        try:
            return cls(int(raw.get("window", -1)), int(raw.get("used", 0)),
                       float(raw.get("paused_until", 0.0)), bool(raw.get("banned", False)))
        except (TypeError, ValueError):
            return cls()    # a corrupt file must not stop REST for good


@dataclass(frozen=True)
class Grant:
    """``wait`` = 0: the weight is reserved, send now. Otherwise wait that
    long and ask again; ``why`` says what we are waiting for."""

    wait: float
    why: str = ""

    @property
    def granted(self) -> bool:
        return self.wait <= 0.0


def _roll(state: BudgetState, now: float) -> None:
    window = int(now // WINDOW_S)
    if window != state.window:
        state.window, state.used = window, 0


def reserve(state: BudgetState, weight: int, now: float, limit: int,
            fraction: float = SAFE_FRACTION) -> Grant:
    """Reserve ``weight`` in the current minute, or say how long to wait."""
    if now < state.paused_until:
        return Grant(state.paused_until - now, "banned (418)" if state.banned else "backing off (429)")
    state.banned = False
    _roll(state, now)
    cap = int(limit * fraction)
    if state.used + weight > cap and state.used > 0:
        # A request heavier than the whole cap still goes out alone in an
        # empty window; otherwise wait for the next minute.
        return Grant((state.window + 1) * WINDOW_S - now, f"weight {state.used}+{weight} > {cap}/min")
    state.used += weight
    return Grant(0.0)


def observe(state: BudgetState, now: float, status: int, used_weight: int | None,
            retry_after: float | None) -> None:
    """Fold one response into the state: the exchange's own count, and
    429/418 pauses, which then hold for every worker sharing the state."""
    _roll(state, now)
    if used_weight is not None and used_weight > state.used:
        state.used = used_weight       # other clients on the IP, or a clock skew
    if status in (418, 429):
        wait = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER[status]
        until = now + max(1.0, wait)
        if until > state.paused_until:
            state.paused_until = until
            state.banned = status == 418
        elif status == 418:
            state.banned = True


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    """A numeric header, case-insensitively; None when absent or not a number."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            try:
                return int(float(value))
            except (TypeError, ValueError):
                return None
    return None


class BudgetUnavailable(Exception):
    """No weight can be had before the caller's deadline (banned, backing off)."""


class SharedBudget:
    """The budget of one market, shared through ``path`` (or kept in memory
    when ``path`` is empty: a worker run outside a parent)."""

    def __init__(self, path: str, limit: int, fraction: float = SAFE_FRACTION,
                 clock: Callable[[], float] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.limit = limit
        self.fraction = fraction
        self.clock = clock or time.time          # windows and pauses (Binance's clock minute)
        self.monotonic = monotonic               # callers' deadlines
        self._memory = BudgetState()
        self._lock = threading.Lock()

    @classmethod
    def for_market(cls, rundir: str, market: str, fraction: float = SAFE_FRACTION,
                   rest_url: str = "") -> "SharedBudget":
        if not rundir:
            return cls("", LIMITS[market], fraction)
        return cls(os.path.join(rundir, budget_file(market, rest_url)), LIMITS[market], fraction)

    @classmethod
    def for_spec(cls, spec) -> "SharedBudget":
        """The budget of a worker's market and REST URL, in the directory the
        parent chose (``WorkerSpec.restdir``; its run directory if none)."""
        return cls.for_market(spec.restdir or spec.rundir, spec.stream.market,
                              rest_url=spec.endpoint.rest_url if spec.restdir else "")

    def acquire(self, weight: int, deadline: float, stop: threading.Event | None = None) -> None:
        """Block until ``weight`` is reserved; raise ``BudgetUnavailable`` if
        that cannot happen before ``deadline`` (monotonic seconds) or on ``stop``."""
        stop = stop or threading.Event()
        while True:
            now = self.clock()
            grant = self._update(lambda s: reserve(s, weight, now, self.limit, self.fraction))
            if grant.granted:
                return
            if self.monotonic() + grant.wait > deadline:
                raise BudgetUnavailable(f"REST weight unavailable for {math.ceil(grant.wait)} s: {grant.why}")
            if stop.wait(grant.wait):
                raise BudgetUnavailable("stopped")

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        now = self.clock()
        used = header_int(headers, "X-MBX-USED-WEIGHT-1M")
        retry = header_int(headers, "Retry-After")
        self._update(lambda s: observe(s, now, status, used, None if retry is None else float(retry)))

    def state(self) -> BudgetState:
        return self._update(lambda s: BudgetState(**asdict(s)))

    def _update(self, change: Callable[[BudgetState], object]):
        with self._lock:   # threads of one process; flock covers the processes
            if not self.path:
                return change(self._memory)
            # The lock lives in its own file and the state is replaced
            # atomically: a worker killed mid-write (SIGKILL, or the process
            # exiting under a daemon thread) must never leave an empty or
            # torn file, which would read as "no ban".
            lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    with open(self.path, "rb") as f:
                        raw = f.read(4096)
                except FileNotFoundError:
                    raw = b""
                try:
                    loaded = json.loads(raw) if raw else {}
                except ValueError:
                    loaded = {}
                state = BudgetState.from_dict(loaded if isinstance(loaded, dict) else {})
                result = change(state)
                data = json.dumps(asdict(state)).encode()
                if data != raw:
                    tmp = f"{self.path}.{os.getpid()}.tmp"
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    try:
                        os.write(fd, data)
                    finally:
                        os.close(fd)
                    os.replace(tmp, self.path)
                return result
            finally:
                os.close(lock)   # closing releases the lock


# -- where the budget lives ------------------------------------------------------------

def budget_file(market: str, rest_url: str = "") -> str:
    """File name of one market's budget; keyed by REST URL when it is kept
    where other parents (or other configs) may look."""
    if not rest_url:
        return f"restweight-{market}.json"
    key = hashlib.sha256(rest_url.rstrip("/").encode()).hexdigest()[:12]
    return f"restweight-{market}-{key}.json"


def budget_dir(state_file: str, rundir: str, rest_url: str) -> str:
    """A directory for the budget that outlives the parent.

    Beside ``[feedsup] state_file`` when one is set (like the watermarks);
    else a private per-user runtime directory, since the ban is the IP's
    and not the parent's. A loopback REST host (``feedsup sim``) without a
    state file keeps the parent's own run directory: simulators reuse ports,
    and a test's ban must not leak into another run.
    """
    if state_file:
        return os.path.dirname(os.path.abspath(state_file))
    host = urllib.parse.urlsplit(rest_url).hostname or ""
    if loopback_host(host):
        return rundir
    return user_runtime_dir() or rundir


def loopback_host(host: str) -> bool:
    """Is ``host`` this machine (a local simulator, not an exchange IP)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def user_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/feedsup`` or ``/tmp/feedsup-<uid>``, created 0700;
    "" when it exists but is not a private directory of ours (never follow
    someone else's symlink into a shared /tmp)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "feedsup") if base and os.path.isdir(base) else f"/tmp/feedsup-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return ""
    try:
        st = os.lstat(path)
    except OSError:
        return ""
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return ""
    return path
