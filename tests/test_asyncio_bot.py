"""examples/asyncio_bot.py (the README's asyncio bot) keeps its state across a
feedsup parent restart: seq going back marks the restart, the account state is
rebuilt from the next snapshot and matches the simulator's account."""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal

import pytest
import zmq
import zmq.asyncio

from feedsup.ipc.aio import AsyncSubscriber
from harness import REPO, Feedsup, write_config
from test_account_e2e import (API_KEY, API_SECRET, KEY_ENV, SECRET_ENV, account_stream, order, sim_spot_truth)

sys.path.insert(0, str(REPO / "examples"))
from asyncio_bot import BotState, rejoin  # noqa: E402


@pytest.mark.timeout(150)
@pytest.mark.parametrize("reconnect_ms", [100, 4000], ids=["back-at-once", "back-after-the-snapshot"])
def test_the_asyncio_bot_keeps_its_state_across_a_parent_restart(start_sim, tmp_path, monkeypatch, reconnect_ms):
    """``back-after-the-snapshot``: the bot's socket reconnects 4 s after the
    old parent is gone (ZeroMQ's default is 100 ms; a loaded host can be
    late too), when the new parent's snapshot has already gone out."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.setenv(SECRET_ENV, API_SECRET)
    sim = start_sim(speed=10, symbols=("BTCUSDT",), trade_rate=0.5, book_rate=0.5, api_key=API_KEY,
                    api_secret=API_SECRET)
    klines = {"name": "k", "market": "spot", "channel": "kline", "intervals": ["1m"], "symbols": ["BTCUSDT"]}
    config = write_config(tmp_path, sim, [klines, account_stream("spot")])
    fs = Feedsup(config, tmp_path, "first.log")
    started = [fs]
    prefixes = ["kline.", "account."]

    async def until(sub: AsyncSubscriber, state: BotState, done, timeout: float = 30) -> None:
        """Feed the bot's state until ``done()``."""
        async def loop() -> None:
            while not done():
                frame = await sub.recv(timeout=1)
                if frame is not None:
                    state.apply(frame)
                    await rejoin(sub, state, fs.control)
        await asyncio.wait_for(loop(), timeout)

    def balances(state: BotState) -> dict:
        return {a: (Decimal(f).normalize(), Decimal(lk).normalize()) for a, (f, lk) in state.balances.items()}

    async def scenario() -> BotState:
        state = BotState("acct-spot")
        ctx = zmq.asyncio.Context()
        ctx.setsockopt(zmq.RECONNECT_IVL, reconnect_ms)     # read by libzmq at connect time
        # Connected once the parent is up: a first connect that fails would
        # be retried only after reconnect_ms too.
        fs.wait_running("acct-spot")
        try:
            async with AsyncSubscriber(fs.pub, prefixes, ctx=ctx, on_gap=state.on_gap) as sub:
                # As the bot does: the latest values first (the snapshot may be out already), then live.
                state.apply_latest(await sub.catch_up(fs.control, prefixes))
                await until(sub, state, lambda: state.synced and state.closes)
                order(sim, "spot", "BUY", "0.01")
                truth = sim_spot_truth(sim)[0]
                await until(sub, state, lambda: balances(state) == truth)
                # The parent goes away (its workers with it) and a new one starts on the same endpoints.
                fs.close()
                second = Feedsup(config, tmp_path, "second.log")
                started.append(second)
                await until(sub, state, lambda: state.restarts == 1 and state.synced, 60)
                second.wait_running("acct-spot")
                if reconnect_ms > 1000:
                    # back late: the new parent's snapshot came through catch_up, not live
                    assert not any(g.restart and g.topic.startswith("account.snapshot.") for g in sub.gaps)
                order(sim, "spot", "SELL", "0.004")
                truth = sim_spot_truth(sim)[0]
                await until(sub, state, lambda: balances(state) == truth)
        finally:
            ctx.destroy(linger=0)
        return state

    try:
        state = asyncio.run(scenario())
    finally:
        for f in started:
            f.close()
    assert state.restarts == 1 and state.synced
    assert set(state.closes) == {"kline.BTCUSDT.1m"}
    assert state.open_orders == {}, "market orders fill at once: nothing stays open"
