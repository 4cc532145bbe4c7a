"""AsyncSubscriber (issue 13): the blocking client's frames, gaps and
catch-up on asyncio sockets, without ever blocking the event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from feedsup.ipc.aio import AsyncSubscriber
from feedsup.ipc.client import SeqTracker
from harness import Collector, wait_for

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT", "ETHUSDT"]}
BOOK = {"name": "book", "market": "spot", "channel": "bookTicker", "symbols": ["BTCUSDT", "ETHUSDT"]}
TOPICS = {"aggTrade.BTCUSDT", "aggTrade.ETHUSDT", "bookTicker.BTCUSDT", "bookTicker.ETHUSDT"}


def test_seed_then_admit_skips_what_catch_up_delivered_and_then_checks_gaps():
    tracker = SeqTracker()
    tracker.seed([{"topic": "a", "seq": 5, "recv_ns": 50}])
    assert tracker.admit({"topic": "a", "seq": 4, "recv_ns": 40}) == (False, None)
    assert tracker.admit({"topic": "a", "seq": 5, "recv_ns": 50}) == (False, None)
    assert tracker.admit({"topic": "a", "seq": 6}) == (True, None)
    assert tracker.skip_upto == {}
    deliver, gap = tracker.admit({"topic": "a", "seq": 9})
    assert deliver and gap is not None and gap.missed == 2 and tracker.missed == 2
    deliver, gap = tracker.admit({"topic": "a", "seq": 1})
    assert deliver and gap is not None and gap.restart and tracker.missed == 2


def test_asyncio_client_receives_the_same_frames_as_the_blocking_client(start_sim, start_feedsup):
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4)
    fs, col = start_feedsup(sim, [PRICE, BOOK])
    col.wait_count(1, 20)

    async def collect() -> list[dict]:
        frames: list[dict] = []
        async with AsyncSubscriber(fs.pub) as sub:
            async for frame in sub:
                frames.append(frame)
                if len(frames) >= 300 and {f["topic"] for f in frames} >= TOPICS:
                    break
            assert sub.gaps == []
        return frames

    got = asyncio.run(asyncio.wait_for(collect(), 60))
    newest = {t: max(f["seq"] for f in got if f["topic"] == t) for t in TOPICS}
    wait_for(lambda: all(any(f["topic"] == t and f["seq"] >= s for f in list(col.frames))
                         for t, s in newest.items()), 20, "the blocking client to reach the same frames")
    assert col.sub is not None and col.sub.gaps == []
    blocking = {(f["topic"], f["seq"]): {k: v for k, v in f.items() if k != "_t"} for f in list(col.frames)}
    for frame in got:
        assert blocking[(frame["topic"], frame["seq"])] == frame


def test_async_catch_up_then_live_without_hole(start_sim, start_feedsup):
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4)
    fs, col = start_feedsup(sim, [PRICE, BOOK])
    col.wait_count(40, 20)
    prefixes = ("bookTicker.", "aggTrade.")

    async def run() -> tuple[list[dict], dict[str, int], list]:
        async with AsyncSubscriber(fs.pub, prefixes) as sub:
            snapshot = await sub.catch_up(fs.control, prefixes)
            first_live: dict[str, int] = {}
            while len(first_live) < len(TOPICS):
                frame = await sub.recv(timeout=20)
                assert frame is not None, "live frames must follow"
                first_live.setdefault(frame["topic"], frame["seq"])
            return snapshot, first_live, sub.gaps

    snapshot, first_live, gaps = asyncio.run(asyncio.wait_for(run(), 60))
    assert {f["topic"] for f in snapshot} == TOPICS
    assert first_live == {f["topic"]: f["seq"] + 1 for f in snapshot}, "live continues right after the snapshot"
    assert gaps == []


@pytest.mark.timeout(120)
def test_a_sleeping_handler_shows_counted_gaps_and_the_loop_keeps_running(start_sim, start_feedsup):
    """The handler awaits 50 ms per frame while ~2000 frames/s come: the
    SUB socket's small RCVHWM, the parent's PUB high-water mark and the
    kernel's buffers fill, the PUB drops the newest frames, and once the
    handler is fast again and reaches the hole, the client counts it. A
    second task on the same loop keeps ticking all the while."""
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=100)
    fs, fast = start_feedsup(sim, [PRICE], feedsup={"pub_hwm": 2000})
    fast.wait_count(1, 20, "aggTrade.")

    async def run() -> tuple[int, float, float]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        async with AsyncSubscriber(fs.pub, ("aggTrade.",), rcvhwm=10) as sub:
            await sub.recv(timeout=20)
            t0 = time.monotonic()
            # Only aggTrade topics are configured: the collector's frame count
            # is O(1), where counting by prefix would scan every frame per
            # frame here and stall the loop under test itself on a busy host.
            slow_until = len(fast.frames) + 8000     # far past every buffer on the way
            async for _ in sub:
                if len(fast.frames) < slow_until:
                    await asyncio.sleep(0.05)         # the slow handler
                elif sub.tracker.missed > 0:
                    break
            missed, elapsed = sub.tracker.missed, time.monotonic() - t0
            assert not any(g.restart for g in sub.gaps)
        stop.set()
        await tick_task
        longest = max(b - a for a, b in zip(ticks, ticks[1:]))
        return missed, longest, len(ticks) / elapsed

    missed, longest, rate = asyncio.run(asyncio.wait_for(run(), 100))
    assert missed > 0, "frames the slow handler could not take are counted"
    assert longest < 1.0, f"the loop stalled for {longest:.3f} s"
    assert rate > 10, f"the other task ticked only {rate:.1f}/s"
    assert fast.sub is not None and fast.sub.gaps == [], "a blocking subscriber that keeps up loses nothing"


def test_after_catch_up_a_restarted_parent_s_frame_at_the_snapshot_seq_is_delivered_not_skipped():
    """A topic that published nothing between catch_up and a parent restart
    (account snapshots: one per connect, seq 1): the new parent's seq 1 is a
    new frame and a restart, not the snapshot frame still in flight."""
    tracker = SeqTracker()
    snap = {"topic": "account.snapshot.a", "seq": 1, "epoch": 7, "recv_ns": 100}
    tracker.seed([snap])
    assert tracker.admit(dict(snap)) == (False, None), "the same frame, still in flight: skipped"
    deliver, gap = tracker.admit({"topic": "account.snapshot.a", "seq": 1, "epoch": 8, "recv_ns": 200})
    assert deliver and gap is not None and gap.restart


def test_draining_a_backlog_still_gives_other_tasks_their_turn():
    """Queued frames are taken without suspending; a handler that never
    awaits would then starve the loop for the whole backlog. Every
    YIELD_EVERY frames recv hands the loop a turn."""
    import msgpack
    import zmq
    import zmq.asyncio

    from feedsup.ipc import client
    assert client.AsyncSubscriber is AsyncSubscriber
    n = 5000

    async def run() -> tuple[int, int]:
        ctx = zmq.asyncio.Context()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.bind("inproc://backlog")
        ticks = 0
        try:
            async with AsyncSubscriber("inproc://backlog", ctx=ctx, rcvhwm=0) as sub:
                probe = 0
                while await sub.recv(timeout=0.01) is None:   # the subscription reached the PUB
                    probe += 1
                    await pub.send_multipart([b"t", msgpack.packb({"topic": "p", "seq": probe, "data": None})])
                for seq in range(1, n + 1):
                    await pub.send_multipart([b"t", msgpack.packb({"topic": "t", "seq": seq, "data": {}})])
                while sub.tracker.last.get("t") != 1:          # the backlog is queued
                    await sub.recv(timeout=5)

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        ticks += 1
                        await asyncio.sleep(0)

                task = asyncio.create_task(ticker())
                await asyncio.sleep(0)
                start = ticks
                taken = 1
                while taken < n:                               # a handler that never awaits
                    await sub.recv()
                    taken += 1
                task.cancel()
                return ticks - start, len(sub.gaps)
        finally:
            pub.close(linger=0)
            ctx.term()

    ticks, gaps = asyncio.run(asyncio.wait_for(run(), 30))
    assert gaps == 0
    assert ticks >= n // 64 // 2, f"the other task ran {ticks} times while {n} frames were drained"


def test_curve_keys_an_allowed_async_client_receives_and_catches_up_a_stranger_gets_nothing(start_sim, tmp_path):
    from feedsup import curve
    from feedsup.ipc.client import ControlError
    from harness import Feedsup, write_config
    from test_security import _curve_status, client, free_port

    folder = tmp_path / "keys"
    folder.mkdir()
    keys = {name: curve.generate(str(folder), name) for name in ("server", "alice", "mallory")}
    sim = start_sim(speed=1, symbols=("BTCUSDT",), trade_rate=20)
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, sim, [{**PRICE, "symbols": ["BTCUSDT"]}], feedsup={
        "pub": pub, "control": ctl, "curve_server_key_file": keys["server"][1],
        "curve_allowed_clients": [keys["alice"][2]]})
    fs = Feedsup(config, tmp_path)
    alice, mallory = client(keys, "alice"), client(keys, "mallory")

    async def run() -> None:
        async with AsyncSubscriber(pub, ["aggTrade."], curve=alice) as good, \
                AsyncSubscriber(pub, ["aggTrade."], curve=mallory) as bad:
            assert await good.recv(timeout=15) is not None, "an allowed client receives"
            snapshot = await good.catch_up(ctl, ["aggTrade."])
            assert [f["topic"] for f in snapshot] == ["aggTrade.BTCUSDT"]
            assert await bad.recv(timeout=2) is None, "an unknown key receives nothing"
            with pytest.raises(ControlError):
                await bad.catch_up(ctl, ["aggTrade."], timeout=1)

    try:
        wait_for(lambda: _curve_status(ctl, alice), 15, "status with an allowed key")
        asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        fs.close()


def test_after_catch_up_only_the_same_parent_s_frames_up_to_the_snapshot_are_skipped():
    """The snapshot's frame and earlier ones from the same parent (its epoch)
    were in flight; a restarted parent's frames, whatever their seq, are new."""
    tracker = SeqTracker()
    tracker.seed([{"topic": "t", "seq": 5, "epoch": 7}])
    assert tracker.admit({"topic": "t", "seq": 4, "epoch": 7}) == (False, None)
    assert tracker.admit({"topic": "t", "seq": 5, "epoch": 7}) == (False, None)
    deliver, gap = tracker.admit({"topic": "t", "seq": 1, "epoch": 8})
    assert deliver and gap is not None and gap.restart
    assert tracker.admit({"topic": "t", "seq": 2, "epoch": 8}) == (True, None)


def test_a_new_parent_epoch_is_a_restart_even_when_its_seq_looks_consecutive():
    tracker = SeqTracker()
    assert tracker.observe("t", 1, 7) is None
    assert tracker.observe("t", 2, 7) is None
    gap = tracker.observe("t", 3, 9)      # the new parent's third frame; its 1 and 2 were lost
    assert gap is not None and gap.restart
    assert tracker.observe("t", 4, 9) is None
