"""Account resync: the REST snapshot never blocks the reader, an event the
snapshot may already contain is always flagged ``backfill: true`` however
late its push arrives, and snapshots are ordered by exchange time.

The simulator cannot slow one REST call or delay the spot WebSocket API's
pushes, so two small loopback helpers do it here: ``RestGate`` forwards REST
to the simulator and holds chosen paths until released; ``DelayRelay``
forwards TCP and delays what the server sends by a settable time.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import types
import urllib.error
import urllib.request
from collections import deque
from decimal import Decimal
from typing import Any

import pytest

from feedsup.ipc import frames
from feedsup.supervisor.sequencer import is_newer
from feedsup.workers import account
from harness import wait_for
from test_account_e2e import (API_KEY, API_SECRET, KEY_ENV, SECRET_ENV, AccountCollector, account_stream,
                              frames_of, make_sim, order, rebuild_spot, rebuild_usdm, sim_spot_truth,
                              sim_usdm_truth)


class RestGate:
    """An HTTP forwarder to ``upstream`` that holds requests for ``hold``
    paths until ``release`` is set (or 30 s pass)."""

    def __init__(self, upstream: str, hold: set[str]) -> None:
        self.upstream = upstream
        self.hold = hold
        self.release = threading.Event()
        self.held = 0
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.forward(self)

            do_POST = do_PUT = do_DELETE = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, h: http.server.BaseHTTPRequestHandler) -> None:
        try:
            self._forward(h)
        except OSError:
            pass   # the worker went away mid-request (a restart, the test's end)

    def _forward(self, h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path.split("?")[0] in self.hold and not self.release.is_set():
            self.held += 1
            self.release.wait(30)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        headers = {k: h.headers[k] for k in ("X-MBX-APIKEY", "Content-Type") if h.headers.get(k)}
        req = urllib.request.Request(self.upstream + h.path, data=body or None, method=h.command,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, data, rheaders = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            status, data, rheaders = err.code, err.read(), err.headers
        h.send_response(status)
        for k in ("Content-Type", "X-MBX-USED-WEIGHT-1M", "Retry-After"):
            if rheaders.get(k):
                h.send_header(k, rheaders[k])
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class DelayRelay:
    """TCP relay to ``port``; bytes from the server reach the client
    ``delay`` seconds after they left it (in order). The client's bytes pass
    at once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.delay = 0.0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = threading.Event()
        self.socks: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            self.socks += [client, server]
            queue: deque[tuple[float, bytes]] = deque()
            ready = threading.Condition()
            self._spawn(self._pipe, client, server)
            self._spawn(self._read_delayed, server, queue, ready)
            self._spawn(self._write_delayed, client, queue, ready)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._shut(dst)

    def _read_delayed(self, src: socket.socket, queue: deque, ready: threading.Condition) -> None:
        try:
            while data := src.recv(65536):
                with ready:
                    queue.append((time.monotonic() + self.delay, data))
                    ready.notify()
        except OSError:
            pass
        with ready:
            queue.append((time.monotonic() + self.delay, b""))
            ready.notify()

    def _write_delayed(self, dst: socket.socket, queue: deque, ready: threading.Condition) -> None:
        while not self.closed.is_set():
            with ready:
                while not queue and not self.closed.is_set():
                    ready.wait(0.5)
                if not queue:
                    return
                due, data = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    ready.wait(wait)   # the simulated latency itself
                    continue
                queue.popleft()
            if not data:
                self._shut(dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for s in self.socks:
            self._shut(s)
            s.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.setenv(SECRET_ENV, API_SECRET)


@pytest.fixture
def closing():
    """Close what the test registers, newest first, even when it fails."""
    things: list[Any] = []
    try:
        yield things.append
    finally:
        for thing in reversed(things):
            thing.close()


@pytest.fixture
def sim(closing):
    server = make_sim()
    server.start()
    closing(types.SimpleNamespace(close=server.stop))
    return server


def deposit(sim, asset: str, delta: str, market: str = "spot") -> None:
    req = urllib.request.Request(sim.control_url + "/balance", method="POST",
                                 data=json.dumps({"market": market, "asset": asset, "delta": delta}).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def stats(fs, name: str) -> dict[str, Any]:
    return fs.stream(name).get("stats") or {}


def test_a_slow_snapshot_does_not_stop_the_reader(sim, closing, start_feedsup, env, timing):
    """The account REST call hangs; meanwhile pings go out every 0.5 s with a
    0.4 s pong deadline and an order fills. The connection lives on, its
    events are read, and they follow the snapshot as backfill."""
    gate = RestGate(sim.base_url, {"/api/v3/account"})
    closing(gate)
    via_gate = types.SimpleNamespace(ws_url=sim.ws_url, base_url=gate.url)
    fs, col = start_feedsup(via_gate, [account_stream("spot")], collect=AccountCollector,
                            connection={"ping_interval": 0.5, "ping_timeout": 0.4, "connect_timeout": 20})
    wait_for(lambda: gate.held, 15, "the snapshot's REST call to hang")
    pid = fs.wait_running("acct-spot")["pid"]
    msgs = stats(fs, "acct-spot").get("msgs", 0)
    placed = order(sim, "spot", "BUY", "0.01")
    wait_for(lambda: stats(fs, "acct-spot").get("msgs", 0) >= msgs + 3, 10,
             "the order's events to be read while the snapshot hangs")
    wait_for(lambda: stats(fs, "acct-spot").get("pings", 0) >= 8, 10, "8 pings while the snapshot hangs")
    row = fs.stream("acct-spot")
    assert (row["pid"], row["restarts"], row["state"]) == (pid, 0, "RUNNING"), row["last_reason"]
    assert frames_of(col, "account.snapshot") == []
    t0 = time.monotonic()
    gate.release.set()
    col.wait_count(1, 15, "account.snapshot")
    timing("spot: held snapshot released -> snapshot at the consumer", time.monotonic() - t0)
    wait_for(lambda: any(f["data"]["order_id"] == placed["orderId"] and f["data"]["order_status"] == "FILLED"
                         for f in frames_of(col, "account.executionReport")), 5, "the fill")
    account_frames = [f for f in list(col.frames) if f["topic"].startswith("account.")]
    assert account_frames[0]["topic"].startswith("account.snapshot.")
    assert all(f.get("backfill") for f in account_frames[1:]), "events read before the snapshot are replays"
    assert fs.stream("acct-spot")["pid"] == pid
    assert rebuild_spot(account_frames) == sim_spot_truth(sim)


def rebuild_balances_with_deltas(frames_: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Free balances kept from the snapshot and ``balanceUpdate`` deltas
    alone, by the documented rule: a backfill balanceUpdate whose
    clear_time is at or before the snapshot's update_time is already in it."""
    free: dict[str, Decimal] = {}
    update_time = None
    for f in frames_:
        kind, d = f["topic"].split(".")[1], f["data"]
        if kind == "snapshot":
            free = {b["asset"]: Decimal(b["free"]) for b in d["balances"]}
            update_time = d["update_time"]
        elif kind == "balanceUpdate":
            if f.get("backfill") and d["clear_time"] <= update_time:
                continue
            free[d["asset"]] = free.get(d["asset"], Decimal(0)) + Decimal(d["delta"])
    return free


def test_an_event_in_the_snapshot_that_arrives_after_it_is_backfill(sim, closing, start_feedsup, env):
    """A deposit lands while the snapshot is taken; its push (balanceUpdate,
    outboundAccountPosition) reaches us 1.5 s after the snapshot's answer.
    It must not come as a live event: applying its delta again would count
    the deposit twice. A later deposit is live."""
    gate = RestGate(sim.base_url, {"/api/v3/account"})
    closing(gate)
    relay = DelayRelay(int(sim.ws_url.rsplit(":", 1)[1]))
    closing(relay)
    via = types.SimpleNamespace(ws_url=relay.url, base_url=gate.url)
    fs, col = start_feedsup(via, [account_stream("spot")], collect=AccountCollector,
                            connection={"ping_interval": 5, "ping_timeout": 4})
    wait_for(lambda: gate.held, 15, "the snapshot's REST call to be held")
    relay.delay = 1.5
    deposit(sim, "BTC", "1.25")
    gate.release.set()
    col.wait_count(1, 15, "account.snapshot")
    wait_for(lambda: frames_of(col, "account.balanceUpdate"), 10, "the late balanceUpdate")
    relay.delay = 0.0
    deposit(sim, "BTC", "0.5")
    wait_for(lambda: len(frames_of(col, "account.balanceUpdate")) == 2, 10, "the second balanceUpdate")
    wait_for(lambda: len(frames_of(col, "account.outboundAccountPosition")) == 2, 10, "both positions")
    late, live = frames_of(col, "account.balanceUpdate")
    snapshot = frames_of(col, "account.snapshot")[0]["data"]
    assert late.get("backfill") is True, "an event the snapshot may contain is flagged backfill"
    assert not live.get("backfill"), "an event after the snapshot is live"
    assert late["data"]["clear_time"] <= snapshot["as_of"] < live["data"]["clear_time"]
    assert [f.get("backfill", False) for f in frames_of(col, "account.outboundAccountPosition")] == [True, False]
    truth = sim_spot_truth(sim)[0]
    account_frames = [f for f in list(col.frames) if f["topic"].startswith("account.")]
    assert rebuild_balances_with_deltas(account_frames)["BTC"] == truth["BTC"][0]
    assert rebuild_spot(account_frames)[0] == truth


def test_snapshots_are_ordered_by_exchange_time_not_the_wall_clock(monkeypatch):
    """The wall clock steps back an hour between two resyncs: the second
    snapshot must still be newer to the parent (else it is dropped)."""
    sent: list[bytes] = []
    rt = types.SimpleNamespace(name="acct", uplink=types.SimpleNamespace(send=sent.append))
    wall = iter([1_767_225_600_000_000_000, 1_767_225_600_000_000_000 - 3600 * 10**9])
    monkeypatch.setattr(time, "time_ns", lambda: next(wall))
    first = {"market": "spot", "update_time": 1, "balances": [], "open_orders": [],
             "time": 1_767_225_500_000, "as_of": 1_767_225_500_000}
    account.publish_snapshot(rt, first)
    account.publish_snapshot(rt, {**first, "time": first["time"] + 1000, "as_of": first["as_of"] + 1000})
    keys = [(major, minor, final) for record in sent
            for _, _, major, minor, final, _ in frames.iter_records(record)]
    assert len(keys) == 2
    assert is_newer(keys[0], *keys[1]), "the later snapshot is newer to the parent"
    assert keys[0][0] == first["time"], "keyed by the exchange's time"


def test_usdm_an_account_update_in_the_snapshot_that_arrives_after_it_is_backfill(sim, closing, start_feedsup,
                                                                                 env):
    """The same on USD-M: a deposit's ACCOUNT_UPDATE pushed late is backfill."""
    gate = RestGate(sim.base_url, {"/fapi/v2/account"})
    closing(gate)
    relay = DelayRelay(int(sim.ws_url.rsplit(":", 1)[1]))
    closing(relay)
    via = types.SimpleNamespace(ws_url=relay.url, base_url=gate.url)
    fs, col = start_feedsup(via, [account_stream("usdm")], collect=AccountCollector,
                            connection={"ping_interval": 5, "ping_timeout": 4, "listen_key_keepalive": 60})
    wait_for(lambda: gate.held, 15, "the snapshot's REST call to be held")
    relay.delay = 1.5
    deposit(sim, "USDT", "12.5", market="usdm")
    gate.release.set()
    col.wait_count(1, 15, "account.snapshot")
    wait_for(lambda: frames_of(col, "account.ACCOUNT_UPDATE"), 10, "the late ACCOUNT_UPDATE")
    relay.delay = 0.0
    deposit(sim, "USDT", "1.5", market="usdm")
    wait_for(lambda: len(frames_of(col, "account.ACCOUNT_UPDATE")) == 2, 10, "the second ACCOUNT_UPDATE")
    late, live = frames_of(col, "account.ACCOUNT_UPDATE")
    assert late.get("backfill") is True, "an event the snapshot may contain is flagged backfill"
    assert not live.get("backfill"), "an event after the snapshot is live"
    snapshot = frames_of(col, "account.snapshot")[0]["data"]
    assert late["data"]["transaction_time"] <= snapshot["as_of"] < live["data"]["transaction_time"]
    account_frames = [f for f in list(col.frames) if f["topic"].startswith("account.")]
    assert rebuild_usdm(account_frames) == sim_usdm_truth(sim)
