"""The workers' helper threads on a fake clock: the ticker (liveness pings,
native pings, the pong deadline) and the listenKey keepalive take their clock
and their waits as arguments, so their timing is checked here in
milliseconds, as the supervisor's policy is; and one owner (``Threads``)
starts, stops and joins them, promptly."""

from __future__ import annotations

import math
import threading
import time

from feedsup.procs import wait_for
from feedsup.workers.account_usdm import KEEPALIVE_RETRY, Keepalive
from feedsup.workers.keepalive import Pinger, Ticker
from feedsup.workers.runtime import ConnectionEnded
from feedsup.workers.threads import Threads


class FakeTime:
    """A clock and a stop event in one: ``wait(t)`` moves the clock on by
    ``t`` at once, and the event sets itself when the clock reaches
    ``until`` (the end of the test's scenario)."""

    def __init__(self, until: float = math.inf) -> None:
        self.now = 0.0
        self.until = until
        self.waits: list[float] = []
        self._set = False

    def __call__(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "a loop on a fake clock must never wait without a bound"
        self.waits.append(timeout)
        if not self._set:
            self.now += timeout
            if self.now >= self.until:
                self._set = True
        return self._set

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


# -- the ticker ---------------------------------------------------------------------

class Wire:
    """What a ticker did, with the fake time of each act."""

    def __init__(self, clock: FakeTime, pong: bool = True) -> None:
        self.clock = clock
        self.pong = pong
        self.lives: list[float] = []
        self.pings: list[tuple[float, bytes]] = []
        self.timeouts: list[float] = []
        self.pinger: Pinger | None = None

    def ticker(self, interval: float, pinger: Pinger, connected: bool = True) -> Ticker:
        self.pinger = pinger
        return Ticker(interval, pinger, live=lambda now: self.lives.append(now), ping=self._ping,
                      timed_out=self._timed_out, connected=lambda: connected, stop=self.clock,
                      clock=self.clock)

    def _ping(self, payload: bytes) -> None:
        self.pings.append((self.clock.now, payload))
        if self.pong:
            self.pinger.on_pong(payload)

    def _timed_out(self) -> None:
        self.timeouts.append(self.clock.now)
        self.clock.set()         # as Runtime.end does: the connection is over


def test_ticker_sends_a_liveness_ping_every_interval_before_any_connection():
    clock = FakeTime(until=5.5)
    wire = Wire(clock)
    started = time.monotonic()
    wire.ticker(1.0, Pinger(20, 10), connected=False).run()
    assert wire.lives == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert wire.pings == [] and wire.timeouts == []
    assert time.monotonic() - started < 0.5        # fake time: no real waiting


def test_ticker_pings_the_exchange_at_its_own_period_beside_liveness():
    clock = FakeTime(until=60.5)
    wire = Wire(clock)
    pinger = Pinger(20, 10)
    pinger.start(0.0)
    wire.ticker(1.0, pinger).run()
    assert [t for t, _ in wire.pings] == [20.0, 40.0, 60.0]
    assert [p for _, p in wire.pings] == [b"1", b"2", b"3"]
    assert wire.lives == [float(s) for s in range(61)]
    assert wire.timeouts == []
    # It sleeps until the next thing due, never in a busy loop.
    assert all(w > 0 for w in clock.waits) and len(clock.waits) <= 62


def test_ticker_ends_the_connection_when_the_pong_is_late_exactly_at_the_bound():
    clock = FakeTime(until=1e6)
    wire = Wire(clock, pong=False)
    pinger = Pinger(5, 4)
    pinger.start(0.0)
    wire.ticker(1.0, pinger).run()
    assert [t for t, _ in wire.pings] == [5.0]
    assert wire.timeouts == [9.0]              # interval + timeout after the last pong (connect)
    assert clock.now == 9.0                    # and it stopped there


def test_ticker_stops_promptly_when_asked():
    stop = threading.Event()
    lives: list[float] = []
    ticker = Ticker(3600.0, Pinger(3600, 1800), live=lives.append, ping=lambda p: None,
                    timed_out=lambda: None, connected=lambda: False, stop=stop)
    threads = Threads()
    threads.start("ticker", ticker.run, stop)
    wait_for(lambda: lives, 2.0, "the first liveness ping, sent at once")
    started = time.monotonic()
    threads.stop_all()
    assert threads.join(2.0) == []
    assert time.monotonic() - started < 0.5


# -- the listenKey keepalive ----------------------------------------------------------

class Exchange:
    """A listenKey PUT endpoint: answers from a script, noting the fake time."""

    def __init__(self, clock: FakeTime, script: dict[int, ConnectionEnded] | None = None) -> None:
        self.clock = clock
        self.script = script or {}
        self.puts: list[float] = []
        self.ended: list[str] = []
        self.counts: list[int] = []

    def put(self) -> None:
        self.puts.append(self.clock.now)
        failure = self.script.get(len(self.puts))
        if failure is not None:
            raise failure

    def keepalive(self, interval: float = 1800.0) -> Keepalive:
        return Keepalive(self.put, self.ended.append, self.counts.append, interval, self.clock)


def test_keepalive_puts_every_interval():
    clock = FakeTime(until=6000)
    exchange = Exchange(clock)
    exchange.keepalive().run()
    assert exchange.puts == [1800.0, 3600.0, 5400.0]
    assert exchange.counts == [1, 2, 3] and exchange.ended == []


def test_keepalive_retries_sooner_after_a_failure_that_passes():
    clock = FakeTime(until=6000)
    exchange = Exchange(clock, {1: ConnectionEnded("PUT /fapi/v1/listenKey: HTTP 503"),
                                2: ConnectionEnded("connect failed: ConnectionRefusedError")})
    exchange.keepalive().run()
    assert exchange.puts == [1800.0, 1800.0 + KEEPALIVE_RETRY, 1800.0 + 2 * KEEPALIVE_RETRY,
                             3600.0 + 2 * KEEPALIVE_RETRY, 5400.0 + 2 * KEEPALIVE_RETRY]
    assert exchange.counts == [1, 2, 3] and exchange.ended == []


def test_keepalive_never_retries_slower_than_its_interval():
    clock = FakeTime(until=3)
    exchange = Exchange(clock, {1: ConnectionEnded("HTTP 503")})
    exchange.keepalive(interval=0.5).run()
    assert exchange.puts == [0.5, 1.0, 1.5, 2.0, 2.5]


def test_keepalive_ends_the_connection_when_the_key_is_gone_or_refused():
    for failure in (ConnectionEnded('PUT /fapi/v1/listenKey: HTTP 400 {"code":-1125}'),
                    ConnectionEnded("PUT /fapi/v1/listenKey: HTTP 401", fatal=True)):
        clock = FakeTime(until=1e6)
        exchange = Exchange(clock, {2: failure})
        exchange.keepalive().run()             # returns by itself: nothing stopped it
        assert exchange.puts == [1800.0, 3600.0] and clock.now == 3600.0
        assert exchange.ended == [f"listenKey keepalive failed: {failure.reason}"]
        assert exchange.counts == [1]


def test_keepalive_stops_promptly_when_asked():
    stop = threading.Event()
    puts: list[float] = []
    keepalive = Keepalive(lambda: puts.append(1), lambda reason: None, lambda n: None, 1800.0, stop)
    threads = Threads()
    thread = threads.start("listenkey", keepalive.run, stop)
    assert thread.is_alive()
    started = time.monotonic()
    threads.stop_all()
    assert threads.join(2.0, only=thread) == []
    assert time.monotonic() - started < 0.5 and puts == []


# -- the owner ------------------------------------------------------------------------

def test_the_owner_joins_within_one_bound_and_names_the_threads_still_running():
    release = threading.Event()
    threads = Threads()
    quick, stuck = threading.Event(), threading.Event()
    threads.start("quick", quick.wait, quick)
    threads.start("stuck", release.wait, stuck)          # its stop does not reach what it waits on
    watchdog = threads.start("watchdog", release.wait, joined=False)
    started = time.monotonic()
    threads.stop_all()
    assert threads.join(0.2) == ["stuck"]
    assert time.monotonic() - started < 1.0
    assert sorted(threads.names()) == ["stuck", "watchdog"]
    release.set()
    assert threads.join(2.0) == []
    watchdog.join(2.0)
    assert threads.names() == []

