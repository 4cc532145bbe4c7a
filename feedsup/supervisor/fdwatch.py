"""The I/O around ``fdguard``: count the parent's descriptors, close and
reopen its TCP endpoints.

The count must follow a flood promptly but cost nothing per message: a
ZeroMQ socket monitor on each TCP-bound socket reports every accepted and
every dropped connection (its socket sits in the parent's poller, so an
accept wakes the loop), and ``/proc/self/fd`` is listed once a second
(five times a second near or above the marks) to correct the estimate:
connections closed by an unbind, and descriptors opened elsewhere, raise no
event. ipc endpoints are not watched: they are 0600 in a private folder,
so only the owner can flood them.

While an endpoint is closed, a ``Sentinel`` holds its port: it accepts and
closes at once, so the parent sees how fast connections are still attempted
(``fdguard`` reopens only once that is slow) at a cost of one descriptor.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import struct
import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import zmq

from feedsup import logs
from feedsup.supervisor import fdguard
from feedsup.supervisor.fdguard import Change

log = logging.getLogger("feedsup.relay")   # the relay runs the guard (relay.py)

SCAN_PERIOD_S = 1.0
SCAN_PERIOD_NEAR_S = 0.2
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
# The monitor's sender is a PAIR whose send blocks libzmq's I/O thread when
# the pipe is full; a deep receive queue means it never fills while the loop
# runs (events are a few bytes, and between two reads there are at most as
# many accepts as free descriptors, plus the disconnects).
MONITOR_RCVHWM = 100_000
EVENTS_PER_CALL = 10_000
_EVENT = struct.Struct("=HI")   # monitor event v1, first frame: event, value
_RESET = struct.pack("ii", 1, 0)    # SO_LINGER on, 0 s: close() sends RST
# The sentinel's accept queue, and the most it accepts and closes per scan.
SENTINEL_BACKLOG = 1024
SENTINEL_DRAIN = 1024
# What /proc/sys/fs/nr_open defaults to: the real ceiling of an unlimited soft limit.
NR_OPEN_DEFAULT = 1 << 20


def count_open_fds(limit: int = 0) -> int:
    """Descriptors open in this process (the listing's own not counted):
    ``limit`` when none is left to list them; 0 without /proc, which leaves
    the guard to the monitors' counts."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError as exc:
        return limit if exc.errno in (errno.EMFILE, errno.ENFILE) else 0


def fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        return soft
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return NR_OPEN_DEFAULT


class Sentinel:
    """Holds a TCP port while libzmq does not listen on it: every connection
    is accepted and closed at once, and counted as a refused attempt."""

    def __init__(self, endpoint: str) -> None:
        self.address = tcp_address(endpoint)
        self.sock: socket.socket | None = None

    def open(self) -> bool:
        """Listen, if not yet; False while the port is not free (libzmq
        closes its listener in its own thread, a moment after the unbind)."""
        if self.sock is not None or self.address is None:
            return self.sock is not None
        family, addr = self.address
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:             # EMFILE: try again at the next tick
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as libzmq does
            sock.setblocking(False)
            sock.bind(addr)
            sock.listen(SENTINEL_BACKLOG)
        except OSError:
            sock.close()
            return False
        self.sock = sock
        return True

    def drain(self) -> int:
        """Accept and close what is queued (at most SENTINEL_DRAIN); how many."""
        if self.sock is None:
            return 0
        n = 0
        for n in range(SENTINEL_DRAIN):
            try:
                conn, _ = self.sock.accept()
            except OSError:         # EAGAIN: none left; EMFILE: counted at the next scan
                return n
            try:
                # A reset, not a FIN: a flood must not leave the host a
                # TIME_WAIT socket per attempt (the kernel's table is shared).
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
            conn.close()
        return n + 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def tcp_address(endpoint: str) -> tuple[int, tuple[Any, ...]] | None:
    """(family, address) of a ``tcp://`` endpoint as ZMQ_LAST_ENDPOINT gives
    it (numeric host); None for anything else."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, (host, int(port))
    return (socket.AF_INET, ("", int(port))) if host == "*" else None


class FdWatch:
    """Watches the parent's descriptors; closes ``sockets``' TCP endpoints
    while they run short (``fdguard``), and reopens them."""

    def __init__(self, ctx: zmq.Context, sockets: Sequence[zmq.Socket],
                 guard: fdguard.FdGuard | None = None, limit: int | None = None,
                 exclusive: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext) -> None:
        self.guard = guard or fdguard.FdGuard()
        # Held while an endpoint is closed or opened: a socket another thread
        # drives (the relay's proxy) is handed to this one meanwhile.
        self._exclusive = exclusive
        self.limit = fd_limit() if limit is None else limit
        self._tcp: list[tuple[zmq.Socket, str]] = []
        self.monitors: list[zmq.Socket] = []
        for sock in sockets:
            endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if endpoint.startswith("tcp://"):
                addr = f"inproc://feedsup-fdwatch-{id(self)}-{len(self._tcp)}"
                sock.monitor(addr, EVENTS)
                mon = ctx.socket(zmq.PAIR)
                mon.setsockopt(zmq.RCVHWM, MONITOR_RCVHWM)
                mon.setsockopt(zmq.LINGER, 0)
                mon.connect(addr)
                self._tcp.append((sock, endpoint))
                self.monitors.append(mon)
        self._bound = {endpoint for _, endpoint in self._tcp}
        self._sentinels = [Sentinel(endpoint) for _, endpoint in self._tcp]
        self._scanned = count_open_fds(self.limit)
        self._delta = 0                 # accepted minus dropped since the scan
        self._next_scan = 0.0

    @property
    def open(self) -> int:
        return self._scanned + self._delta

    def on_events(self, now: float, streams: int) -> None:
        """Read the monitors' events (a monitor socket polled readable)."""
        for mon in self.monitors:
            for _ in range(EVENTS_PER_CALL):
                try:
                    head, _endpoint = mon.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ValueError:      # not two frames: not an event of ours
                    continue
                event = _EVENT.unpack_from(head)[0] if len(head) >= _EVENT.size else 0
                if event == zmq.EVENT_ACCEPTED:
                    self._delta += 1
                elif event == zmq.EVENT_DISCONNECTED:
                    self._delta -= 1
        self._decide(now, streams)

    def tick(self, now: float, streams: int) -> None:
        """Housekeeping: rescan when due, and decide."""
        if self.guard.refusing:
            for sentinel in self._sentinels:
                sentinel.open()     # until it gets the port: cheap, and only while refusing
        if now < self._next_scan:
            return
        self._scanned, self._delta = count_open_fds(self.limit), 0
        near = self.guard.refusing or self.open >= fdguard.marks(self.limit, streams).low
        self._next_scan = now + (SCAN_PERIOD_NEAR_S if near else SCAN_PERIOD_S)
        self._decide(now, streams, sum(sentinel.drain() for sentinel in self._sentinels))

    def _decide(self, now: float, streams: int, attempts: int = 0) -> None:
        if not self._tcp:
            return
        change = self.guard.decide(self.open, self.limit, streams, now, attempts)
        if change is None:
            return
        with self._exclusive():
            if change is Change.REFUSE:
                self._refuse(now)
            else:
                self._accept(now)

    def _refuse(self, now: float) -> None:
        for sock, endpoint in self._tcp:
            if endpoint in self._bound:
                self._bound.discard(endpoint)
                try:
                    sock.unbind(endpoint)   # closes its connections too: their descriptors come back
                except zmq.ZMQError as exc:     # never expected; never worth the parent
                    logs.event(log, "tcp unbind failed", logging.WARNING, endpoint=endpoint, error=str(exc))
        self._next_scan = now           # count what the unbind gave back
        logs.event(log, "tcp refusing", logging.WARNING, endpoints=",".join(e for _, e in self._tcp),
                   open_fds=self.open, limit=self.limit, closures=self.guard.closures,
                   hold_s=self.guard.hold, reason=self.guard.reason)

    def _accept(self, now: float) -> None:
        for sentinel in self._sentinels:
            sentinel.close()
        for sock, endpoint in self._tcp:
            if endpoint in self._bound:
                continue
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:     # the port taken meanwhile: try again after a hold
                self.guard.retry_later(now)
                logs.event(log, "tcp rebind failed", logging.WARNING, endpoint=endpoint, error=str(exc))
                return
            self._bound.add(endpoint)
        logs.event(log, "tcp accepting", open_fds=self.open, limit=self.limit, refused=self.guard.refused)

    def status(self) -> dict[str, Any]:
        return {"fds": {"open": self.open, "limit": self.limit},
                "tcp_refusing": self.guard.reason if self.guard.refusing else None,
                "tcp_closures": self.guard.closures, "tcp_refused": self.guard.refused}

    def close(self) -> None:
        for sentinel in self._sentinels:
            sentinel.close()
        for (sock, _), mon in zip(self._tcp, self.monitors):
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            mon.close(linger=0)
        self.monitors = []


def status_of(watch: FdWatch | None) -> dict[str, Any]:
    """The status fields, also before the parent's sockets are bound."""
    if watch is None:
        return {"fds": None, "tcp_refusing": None, "tcp_closures": 0, "tcp_refused": 0}
    return watch.status()
