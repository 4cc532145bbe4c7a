"""An asyncio bot on feedsup: klines and account events, state kept across a
feedsup parent restart.

    python examples/asyncio_bot.py tcp://127.0.0.1:7780 tcp://127.0.0.1:7781 acct

A parent restart shows as a new ``epoch`` on every topic, seq starting
again at 1: a ``Gap`` with ``restart=True``. Klines need nothing (a closed
kline is the same kline whoever sends it). The account state is distrusted
from that moment and rebuilt from the restarted parent's ``account.snapshot``,
which its worker publishes before any account event. That snapshot may have
gone out before this socket reconnected (PUB drops what an absent subscriber
would have got), so the bot asks for the new parent's latest account frames
with ``catch_up`` and otherwise takes the snapshot live; events before the
snapshot are ignored (the snapshot holds their effect).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from feedsup.ipc.aio import AsyncSubscriber
from feedsup.ipc.client import Gap

DONE = {"FILLED", "CANCELED", "REJECTED", "EXPIRED", "EXPIRED_IN_MATCH"}


class BotState:
    """What the bot knows; ``apply`` one frame at a time (pure: no I/O)."""

    def __init__(self, account_stream: str) -> None:
        self.account_stream = account_stream
        self.closes: dict[str, str] = {}                 # kline topic -> last closed close price
        self.balances: dict[str, tuple[str, str]] = {}   # asset -> (free, locked)
        self.open_orders: dict[int, dict[str, Any]] = {}
        self.synced = False                              # account state valid (a snapshot since (re)start)
        self.restarts = 0
        self.rejoin_due = False                          # a restart seen: ask the new parent's latest values
        self._restarted: set[str] = set()                # topics seen restarting in this generation

    def on_gap(self, gap: Gap) -> None:
        # One parent restart shows once per topic, each when its topic's
        # first new frame comes (the new snapshot comes before the new
        # events). The first of them starts a new generation; a topic's
        # restart counts again only once it has restarted in this one.
        if not gap.restart:
            return
        if not self._restarted or gap.topic in self._restarted:
            self._restarted = set()
            self.synced = False                          # wait for the new parent's snapshot
            self.restarts += 1
            self.rejoin_due = True
        self._restarted.add(gap.topic)

    def apply(self, frame: dict[str, Any]) -> None:
        topic, data = frame["topic"], frame["data"]
        if data is None:                                 # a gap notice: data on the topic was lost
            return
        if topic.startswith("kline."):
            if data["closed"]:
                self.closes[topic] = data["close"]
            return
        if frame["stream"] != self.account_stream:
            return
        if topic.startswith("account.snapshot."):
            self.balances = {b["asset"]: (b["free"], b["locked"]) for b in data["balances"]}
            self.open_orders = {o["order_id"]: o for o in data["open_orders"]}
            self.synced = True
        elif not self.synced:
            return                                       # before the snapshot: it holds this event's effect
        elif topic.startswith("account.outboundAccountPosition."):
            self.balances.update({b["asset"]: (b["free"], b["locked"]) for b in data["balances"]})
        elif topic.startswith("account.executionReport."):
            if data["order_status"] in DONE:
                self.open_orders.pop(data["order_id"], None)
            else:
                self.open_orders[data["order_id"]] = data

    def apply_latest(self, frames: list[dict[str, Any]]) -> None:
        """``catch_up``'s latest frame of each topic: the snapshot first, as
        the parent published it before the events."""
        for frame in sorted(frames, key=lambda f: not f["topic"].startswith("account.snapshot.")):
            self.apply(frame)


async def rejoin(sub: AsyncSubscriber, state: BotState, control: str) -> None:
    """After a parent restart: the new parent's latest account frames (its
    snapshot may be among them), then live with no hole."""
    if state.rejoin_due:
        state.rejoin_due = False
        state.apply_latest(await sub.catch_up(control, ["account."]))


async def run(pub: str, control: str, account_stream: str) -> None:
    state = BotState(account_stream)
    prefixes = ["kline.", "account."]
    async with AsyncSubscriber(pub, prefixes, on_gap=state.on_gap) as sub:
        state.apply_latest(await sub.catch_up(control, prefixes))   # latest values first, then live
        async for frame in sub:
            state.apply(frame)
            await rejoin(sub, state, control)
            # ... the bot's decisions go here; await, never block the loop.


if __name__ == "__main__":
    asyncio.run(run(*sys.argv[1:4]))
