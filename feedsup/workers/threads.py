"""A worker's helper threads: one owner starts them all and joins them all.

Every thread beside the reading one (ticker, watchdog, backfill, depth
snapshots, account snapshot, listenKey keepalive) is started through the
runtime's ``Threads``, with the ``stop`` event that ends it. On the way out
the runtime stops and joins them in one place, within one bounded wait, so
a thread stuck in a REST call cannot hold the exit up (they are daemons:
what is still running then ends with the process).

Timing loops take their clock (``clock=time.monotonic``) and wait on their
``stop`` (``Waiter``: ``threading.Event``'s ``wait``/``set``/``is_set``), so
a test hands them a fake clock whose waits return at once (see
tests/test_worker_threads.py), as the supervisor's policy is tested.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

log = logging.getLogger("feedsup.worker")

Clock = Callable[[], float]


class Waiter(Protocol):
    """What a thread's loop waits on: ``threading.Event`` or a test's fake."""

    def wait(self, timeout: float | None = None) -> bool: ...
    def set(self) -> None: ...
    def is_set(self) -> bool: ...


class Threads:
    """Starts, stops and joins a worker's helper threads."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._running: list[tuple[threading.Thread, Waiter | None]] = []
        self._outliving: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[], None], stop: Waiter | None = None, *,
              joined: bool = True) -> threading.Thread:
        """Run ``target`` on a daemon thread; ``stop`` (if any) ends it
        (``stop_all``). ``joined=False``: it runs until the process exits and
        is never joined (the watchdog, which bounds every other thread)."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        if joined:
            self._running.append((thread, stop))
        else:
            self._outliving.append(thread)
        thread.start()
        return thread

    def stop_all(self) -> None:
        for _, stop in self._running:
            if stop is not None:
                stop.set()

    def join(self, timeout: float | None, only: threading.Thread | None = None) -> list[str]:
        """Join every joined thread (or ``only`` that one) within ``timeout``
        seconds in all (None: however long it takes); return the names of
        those still running."""
        deadline = None if timeout is None else self.clock() + timeout
        late = []
        for entry in list(self._running):
            thread = entry[0]
            if only is not None and thread is not only:
                continue
            thread.join(None if deadline is None else max(0.0, deadline - self.clock()))
            if thread.is_alive():
                late.append(thread.name)
            else:
                self._running.remove(entry)
        return late

    def names(self) -> list[str]:
        """The threads running now, joined or not."""
        return [t.name for t, _ in self._running if t.is_alive()] + \
            [t.name for t in self._outliving if t.is_alive()]
