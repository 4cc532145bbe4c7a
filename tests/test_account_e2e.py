"""End to end: simulator user data -> real account workers -> parent -> SUB.

Orders are placed through the simulator's signed REST; the consumer state is
rebuilt from ``account.snapshot`` + events with the documented consumer rule
(feedsup/binance/account_normalise.py) and compared with the simulator's own
account, field for field.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from feedsup.sim import SimOptions, SimServer
from feedsup.ipc.client import ControlError, Subscriber
from harness import Collector, Feedsup, alive, wait_for

API_KEY = "e2e-account-key-4f1c"
API_SECRET = "e2e-account-secret-9b7d2e"
KEY_ENV, SECRET_ENV = "FEEDSUP_E2E_API_KEY", "FEEDSUP_E2E_API_SECRET"
OPEN = ("NEW", "PARTIALLY_FILLED")


def account_stream(market: str, name: str | None = None) -> dict[str, Any]:
    return {"name": name or f"acct-{market}", "market": market, "channel": "account",
            "api_key_env": KEY_ENV, "api_secret_env": SECRET_ENV}


@pytest.fixture
def creds_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.setenv(SECRET_ENV, API_SECRET)


def make_sim(**overrides: Any) -> SimServer:
    options = dict(speed=10, symbols=("BTCUSDT",), trade_rate=0.5, book_rate=0.5,
                   api_key=API_KEY, api_secret=API_SECRET, ping_interval=1, pong_timeout=3)
    options.update(overrides)
    return SimServer(SimOptions(**options))


class AccountCollector(Collector):
    """Every account frame from the first snapshot on, as a consumer that
    joins at any time gets them: ``catch_up`` (the parent's last snapshot,
    then live with no hole). A plain SUB started with feedsup may connect
    after a fast worker has already published its snapshot."""

    def __init__(self, fs: Feedsup) -> None:
        self.control = fs.control
        super().__init__(fs.pub, ("account.",))

    def _run(self, endpoint: str, topics: tuple[str, ...]) -> None:
        self.sub = Subscriber(endpoint, topics)
        try:
            deadline = time.monotonic() + 15
            while not self._stop.is_set():
                try:
                    self.frames += self.sub.catch_up(self.control, ("account.snapshot",), timeout=1)
                    break
                except ControlError:       # the parent is not serving yet
                    if time.monotonic() > deadline:
                        raise
            self._ready.set()
            while not self._stop.is_set():
                frame = self.sub.recv(timeout=0.05)
                if frame is not None:
                    self.frames.append(frame)
        finally:
            self._ready.set()
            self.sub.close()


@pytest.fixture
def run_feedsup(start_feedsup, creds_env):
    def start(sim: SimServer, streams: list[dict[str, Any]], **config: Any) -> tuple[Feedsup, Collector]:
        return start_feedsup(sim, streams, collect=AccountCollector, **config)
    return start


# -- the simulator's signed REST, as a trading client would use it ----------------------

def signed(sim: SimServer, method: str, path: str, **params: Any) -> Any:
    params["timestamp"] = int(time.time() * 1000)
    query = urlencode(params)
    query += "&signature=" + hmac.new(API_SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{sim.base_url}{path}?{query}", method=method,
                                 headers={"X-MBX-APIKEY": API_KEY})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            import json
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{method} {path}: HTTP {err.code} {err.read()!r}") from None


def order(sim: SimServer, market: str, side: str, qty: str, price: str | None = None) -> dict[str, Any]:
    path = "/api/v3/order" if market == "spot" else "/fapi/v1/order"
    params: dict[str, Any] = {"symbol": "BTCUSDT", "side": side, "quantity": qty,
                              "type": "LIMIT" if price else "MARKET"}
    if price:
        params.update(price=price, timeInForce="GTC")
    return signed(sim, "POST", path, **params)


def mid_price(sim: SimServer) -> Decimal:
    def read(core):
        m = core.hub.market("spot", "BTCUSDT")
        return Decimal(m.center).scaleb(-m.price_decimals)
    return sim.call(read)


# -- consumer state: the documented rule ---------------------------------------------

def dec(text: str) -> Decimal:
    return Decimal(text).normalize()


def rebuild_spot(frames: list[dict[str, Any]]) -> tuple[dict, dict]:
    """Replace state with each snapshot, then apply every later event in order."""
    balances: dict[str, tuple] = {}
    orders: dict[int, tuple] = {}
    for f in frames:
        d, topic = f["data"], kind(f)
        if topic == "snapshot":
            balances = {b["asset"]: (dec(b["free"]), dec(b["locked"])) for b in d["balances"]}
            orders = {o["order_id"]: (o["order_status"], dec(o["cumulative_filled_quantity"]))
                      for o in d["open_orders"]}
        elif topic == "outboundAccountPosition":
            balances.update({b["asset"]: (dec(b["free"]), dec(b["locked"])) for b in d["balances"]})
        elif topic == "executionReport":
            if d["order_status"] in OPEN:
                orders[d["order_id"]] = (d["order_status"], dec(d["cumulative_filled_quantity"]))
            else:
                orders.pop(d["order_id"], None)
    return balances, orders


def sim_spot_truth(sim: SimServer) -> tuple[dict, dict]:
    def read(core):
        acct = core.userdata.spot
        balances = {a: (v[0].normalize(), v[1].normalize()) for a, v in acct.balances.items()}
        orders = {o.order_id: (o.status, o.filled.normalize()) for o in acct.open_orders(None)}
        return balances, orders
    return sim.call(read)


def frames_of(col: Collector, topic: str) -> list[dict[str, Any]]:
    """Frames of ``account.<event>``, published as ``account.<event>.<stream>``."""
    return [f for f in list(col.frames) if f["topic"].startswith(topic + ".")]


def kind(frame: dict[str, Any]) -> str:
    assert frame["topic"] == f"account.{frame['topic'].split('.')[1]}.{frame['stream']}"
    return frame["topic"].split(".")[1]


def wait_order_event(col: Collector, topic: str, order_id: int, status: str, timeout: float = 10) -> None:
    def seen():
        return any(f["data"]["order_id"] == order_id and f["data"]["order_status"] == status
                   for f in frames_of(col, topic))
    wait_for(seen, timeout, f"{topic} {order_id} {status}")


# -- spot -------------------------------------------------------------------------------

@pytest.fixture
def spot_sim():
    sim = make_sim()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def test_spot_orders_arrive_as_events_and_snapshot_comes_first(spot_sim, run_feedsup, timing):
    t0 = time.monotonic()
    fs, col = run_feedsup(spot_sim, [account_stream("spot")])
    col.wait_count(1, 15, "account.snapshot")
    timing("spot account: start -> snapshot at the consumer", time.monotonic() - t0)
    fs.wait_running("acct-spot")
    t1 = time.monotonic()
    placed = order(spot_sim, "spot", "BUY", "0.01")
    wait_order_event(col, "account.executionReport", placed["orderId"], "FILLED")
    timing("spot order placed -> FILLED executionReport at the consumer", time.monotonic() - t1)
    report = next(f["data"] for f in frames_of(col, "account.executionReport")
                  if f["data"]["order_status"] == "FILLED")
    assert report["symbol"] == "BTCUSDT" and report["side"] == "BUY"
    assert isinstance(report["cumulative_filled_quantity"], str)
    assert dec(report["cumulative_filled_quantity"]) == Decimal("0.01")
    col.wait_count(1, 5, "account.outboundAccountPosition")
    assert kind(col.frames[0]) == "snapshot", "the snapshot precedes every event"
    assert rebuild_spot(list(col.frames)) == sim_spot_truth(spot_sim)
    seqs = [f["seq"] for f in frames_of(col, "account.executionReport")]
    assert seqs == list(range(1, len(seqs) + 1)), "NEW and TRADE share E: neither is suppressed"


def test_spot_state_is_exact_after_sigkill_and_an_outage_with_fills(spot_sim, run_feedsup, timing):
    fs, col = run_feedsup(spot_sim, [account_stream("spot")])
    col.wait_count(1, 15, "account.snapshot")
    old = fs.wait_running("acct-spot")["pid"]
    first = order(spot_sim, "spot", "BUY", "0.02")
    wait_order_event(col, "account.executionReport", first["orderId"], "FILLED")
    # Outage: the exchange refuses connections while orders fill.
    spot_sim.inject("refuse", duration=30)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), 5, "the killed worker to go")
    mid = mid_price(spot_sim)
    order(spot_sim, "spot", "BUY", "0.03")
    resting = order(spot_sim, "spot", "SELL", "0.01", price=str((mid * 2).quantize(Decimal("0.01"))))
    order(spot_sim, "spot", "SELL", "0.005")
    snapshots = len(frames_of(col, "account.snapshot"))
    t0 = time.monotonic()
    spot_sim.clear_faults()
    col.wait_count(snapshots + 1, 15, "account.snapshot")
    timing("spot outage over -> resync snapshot at the consumer", time.monotonic() - t0)
    snap = frames_of(col, "account.snapshot")[-1]["data"]
    assert [o["order_id"] for o in snap["open_orders"]] == [resting["orderId"]]
    live = order(spot_sim, "spot", "BUY", "0.04")
    wait_order_event(col, "account.executionReport", live["orderId"], "FILLED")
    wait_for(lambda: rebuild_spot(list(col.frames)) == sim_spot_truth(spot_sim), 5,
             "consumer state == simulator state")
    assert fs.stream("acct-spot")["pid"] != old


# -- USD-M ------------------------------------------------------------------------------

# Half a simulated hour per wall second; a listenKey lives one simulated
# hour, so two wall seconds: eight keepalives (every 0.25 s) per lifetime.
# A shorter lifetime (one wall second at speed 3600) expired whenever a
# loaded machine held the keepalive thread back for a second.
FAST = dict(speed=1800, listen_key_validity=3600.0, trade_rate=0.001, book_rate=0.001)
FAST_KEEPALIVE = {"listen_key_keepalive": 0.25}    # [connection] key: seconds between listenKey PUTs


@pytest.fixture
def usdm_sim():
    sim = make_sim(**FAST)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def rebuild_usdm(frames: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    balances: dict[str, Decimal] = {}
    positions: dict[str, tuple] = {}
    orders: dict[int, tuple] = {}
    for f in frames:
        d, topic = f["data"], kind(f)
        if topic == "snapshot":
            balances = {b["asset"]: dec(b["wallet_balance"]) for b in d["balances"]}
            positions = {p["symbol"]: (dec(p["position_amount"]), dec(p["entry_price"]))
                         for p in d["positions"]}
            orders = {o["order_id"]: (o["order_status"], dec(o["cumulative_filled_quantity"]))
                      for o in d["open_orders"]}
        elif topic == "ACCOUNT_UPDATE":
            balances.update({b["asset"]: dec(b["wallet_balance"]) for b in d["balances"]})
            positions.update({p["symbol"]: (dec(p["position_amount"]), dec(p["entry_price"]))
                              for p in d["positions"]})
        elif topic == "ORDER_TRADE_UPDATE":
            if d["order_status"] in OPEN:
                orders[d["order_id"]] = (d["order_status"], dec(d["cumulative_filled_quantity"]))
            else:
                orders.pop(d["order_id"], None)
    return balances, {s: p for s, p in positions.items() if p[0] != 0}, orders


def sim_usdm_truth(sim: SimServer) -> tuple[dict, dict, dict]:
    def read(core):
        acct = core.userdata.futures_account
        from feedsup.sim.userdata import d8     # the simulator's own 8-decimal rendering
        positions = {s: (v[0].normalize(), Decimal(d8(v[1])).normalize())
                     for s, v in acct.positions.items() if v[0] != 0}
        return ({a: v[0].normalize() for a, v in acct.balances.items()}, positions,
                {o.order_id: (o.status, o.filled.normalize()) for o in acct.open_orders(None)})
    return sim.call(read)


def sim_hours(sim: SimServer) -> float:
    return sim.call(lambda core: core.hub.advance()) / 3_600_000


def listen_keys(sim: SimServer) -> list[str]:
    return sim.call(lambda core: list(core.userdata.futures.keys))


def test_usdm_listen_key_is_kept_alive_for_simulated_hours(usdm_sim, run_feedsup, timing):
    fs, col = run_feedsup(usdm_sim, [account_stream("usdm")], connection=FAST_KEEPALIVE)
    col.wait_count(1, 15, "account.snapshot")
    pid = fs.wait_running("acct-usdm")["pid"]
    keys, start = listen_keys(usdm_sim), sim_hours(usdm_sim)
    t0 = time.monotonic()
    wait_for(lambda: sim_hours(usdm_sim) >= start + 4, 30, "four simulated hours")
    timing("usdm: four simulated hours (validity one hour) on one listenKey", time.monotonic() - t0)
    row = fs.stream("acct-usdm")
    assert (row["pid"], row["restarts"], row["state"]) == (pid, 0, "RUNNING")
    assert listen_keys(usdm_sim) == keys, "the same key, never expired"
    assert row["stats"]["keepalives"] >= 8
    placed = order(usdm_sim, "usdm", "BUY", "0.01")
    wait_order_event(col, "account.ORDER_TRADE_UPDATE", placed["orderId"], "FILLED")
    wait_for(lambda: rebuild_usdm(list(col.frames)) == sim_usdm_truth(usdm_sim), 5, "state == simulator")


@pytest.mark.parametrize("how, reason", [
    ("expired", "listenKeyExpired"),     # the exchange expires it and says so
    ("vanished", "-1125"),               # it silently disappears; the keepalive finds out
    ("deleted", "listenKey deleted"),    # another client deletes it; the stream closes
])
def test_usdm_lost_listen_key_is_recovered(usdm_sim, run_feedsup, timing, how, reason):
    fs, col = run_feedsup(usdm_sim, [account_stream("usdm")], connection=FAST_KEEPALIVE)
    col.wait_count(1, 15, "account.snapshot")
    old = fs.wait_running("acct-usdm")["pid"]
    t0 = time.monotonic()
    if how == "expired":
        usdm_sim.inject("expire_listen_key")
    elif how == "vanished":
        usdm_sim.call(lambda core: core.userdata.futures.keys.clear())
    else:
        signed(usdm_sim, "DELETE", "/fapi/v1/listenKey")
    order(usdm_sim, "usdm", "BUY", "0.02")      # fills while no key is valid
    col.wait_count(2, 15, "account.snapshot")
    timing(f"usdm listenKey {how} -> new key, resync snapshot", time.monotonic() - t0)
    row = fs.wait_running("acct-usdm")
    assert row["pid"] != old and row["restarts"] == 1
    assert reason in row["last_reason"]
    placed = order(usdm_sim, "usdm", "SELL", "0.01")
    wait_order_event(col, "account.ORDER_TRADE_UPDATE", placed["orderId"], "FILLED")
    wait_for(lambda: rebuild_usdm(list(col.frames)) == sim_usdm_truth(usdm_sim), 5, "state == simulator")


def test_usdm_state_is_exact_after_sigkill_and_an_outage_with_fills(usdm_sim, run_feedsup, timing):
    fs, col = run_feedsup(usdm_sim, [account_stream("usdm")], connection=FAST_KEEPALIVE)
    col.wait_count(1, 15, "account.snapshot")
    old = fs.wait_running("acct-usdm")["pid"]
    usdm_sim.inject("refuse", duration=30)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), 5, "the killed worker to go")
    mid = mid_price(usdm_sim)
    order(usdm_sim, "usdm", "BUY", "0.05")
    resting = order(usdm_sim, "usdm", "BUY", "0.01", price=str((mid / 2).quantize(Decimal("0.01"))))
    order(usdm_sim, "usdm", "SELL", "0.02")
    t0 = time.monotonic()
    usdm_sim.clear_faults()
    col.wait_count(2, 15, "account.snapshot")
    timing("usdm outage over -> resync snapshot", time.monotonic() - t0)
    snap = frames_of(col, "account.snapshot")[-1]["data"]
    assert [o["order_id"] for o in snap["open_orders"]] == [resting["orderId"]]
    live = order(usdm_sim, "usdm", "SELL", "0.01")
    wait_order_event(col, "account.ORDER_TRADE_UPDATE", live["orderId"], "FILLED")
    wait_for(lambda: rebuild_usdm(list(col.frames)) == sim_usdm_truth(usdm_sim), 5, "state == simulator")


def test_usdm_listen_key_is_deleted_on_sigterm(usdm_sim, run_feedsup):
    fs, col = run_feedsup(usdm_sim, [account_stream("usdm")], connection=FAST_KEEPALIVE)
    col.wait_count(1, 15, "account.snapshot")
    fs.wait_running("acct-usdm")
    assert len(listen_keys(usdm_sim)) == 1
    fs.proc.send_signal(signal.SIGTERM)
    assert fs.proc.wait(timeout=10) == 0
    assert listen_keys(usdm_sim) == [], "the worker deleted its listenKey on the way out"


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_rotation_hands_over_without_losing_or_repeating_events(market, run_feedsup, timing):
    """make-before-break at max_age: the successor subscribes and publishes its
    snapshot while the old worker still streams; events in the overlap reach
    the consumer once, and the state stays exact."""
    sim = make_sim()
    sim.start()
    try:
        fs, col = run_feedsup(sim, [{**account_stream(market), "max_age": 1.5}], connection=FAST_KEEPALIVE)
        col.wait_count(1, 15, "account.snapshot")
        first = fs.wait_running(f"acct-{market}")["pid"]
        placed = []
        t0 = time.monotonic()

        def trade_until_rotated() -> bool:
            placed.append(order(sim, market, "BUY", "0.001")["orderId"])
            row = fs.stream(f"acct-{market}")
            return row["rotations"] >= 2 and row["state"] == "RUNNING"
        wait_for(trade_until_rotated, 20, "two rotations while trading", poll=0.05)
        timing(f"{market}: two max_age rotations while trading", time.monotonic() - t0)
        row = fs.stream(f"acct-{market}")
        assert row["pid"] != first and row["restarts"] == 0, row["last_reason"]
        topic = "account.executionReport" if market == "spot" else "account.ORDER_TRADE_UPDATE"
        wait_order_event(col, topic, placed[-1], "FILLED")
        live = [(f["data"]["order_id"], f["data"]["execution_type"]) for f in frames_of(col, topic)
                if not f.get("backfill")]
        assert sorted(live) == sorted(set(live)), "no live event twice (replays may repeat)"
        fills = {f["data"]["order_id"] for f in frames_of(col, topic) if f["data"]["execution_type"] == "TRADE"}
        assert fills == set(placed), "every fill reaches the consumer"
        truth, rebuild = (sim_spot_truth, rebuild_spot) if market == "spot" else (sim_usdm_truth, rebuild_usdm)
        wait_for(lambda: rebuild(list(col.frames)) == truth(sim), 5, "state == simulator")
    finally:
        sim.stop()


def test_spot_and_usdm_accounts_side_by_side_keep_their_own_topics(usdm_sim, run_feedsup):
    """Both snapshots are published at about the same time: on one shared
    topic the parent would drop the one keyed a millisecond earlier."""
    fs, col = run_feedsup(usdm_sim, [account_stream("spot"), account_stream("usdm")], connection=FAST_KEEPALIVE)
    wait_for(lambda: {f["stream"] for f in frames_of(col, "account.snapshot")} == {"acct-spot", "acct-usdm"},
             15, "both snapshots")
    spot = order(usdm_sim, "spot", "BUY", "0.01")
    usdm = order(usdm_sim, "usdm", "BUY", "0.01")
    wait_order_event(col, "account.executionReport", spot["orderId"], "FILLED")
    wait_order_event(col, "account.ORDER_TRADE_UPDATE", usdm["orderId"], "FILLED")
    def of_stream(name: str) -> list[dict[str, Any]]:
        return [f for f in list(col.frames) if f["stream"] == name]
    assert rebuild_spot(of_stream("acct-spot")) == sim_spot_truth(usdm_sim)
    assert rebuild_usdm(of_stream("acct-usdm")) == sim_usdm_truth(usdm_sim)
