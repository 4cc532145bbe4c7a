"""End to end: simulator user data -> real account workers -> parent -> SUB.

Orders are placed through the simulator's signed REST; the consumer state is
rebuilt from ``account.snapshot`` + events with the documented consumer rule
(feedsup/workers/account_normalise.py) and compared with the simulator's own
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
from harness import Collector, Feedsup, alive, wait_for, write_config

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


@pytest.fixture
def run_feedsup(tmp_path, creds_env):
    started: list[Any] = []

    def start(sim: SimServer, streams: list[dict[str, Any]], **config: Any) -> tuple[Feedsup, Collector]:
        fs = Feedsup(write_config(tmp_path, sim, streams, **config), tmp_path)
        started.append(fs)
        col = Collector(fs.pub, ("account.",))
        started.append(col)
        return fs, col

    try:
        yield start
    finally:
        for thing in reversed(started):
            thing.close()


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
        d, topic = f["data"], f["topic"]
        if topic == "account.snapshot":
            balances = {b["asset"]: (dec(b["free"]), dec(b["locked"])) for b in d["balances"]}
            orders = {o["order_id"]: (o["order_status"], dec(o["cumulative_filled_quantity"]))
                      for o in d["open_orders"]}
        elif topic == "account.outboundAccountPosition":
            balances.update({b["asset"]: (dec(b["free"]), dec(b["locked"])) for b in d["balances"]})
        elif topic == "account.executionReport":
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
    return [f for f in list(col.frames) if f["topic"] == topic]


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
    assert col.frames[0]["topic"] == "account.snapshot", "the snapshot precedes every event"
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
