"""The sink's I/O shell against a real nats-server (one node), no feedsup
parent: deduplication between two instances, per-topic order, the bounded
buffer while NATS is down (counted loss, gap notice, held watermarks), and
the resuming consumer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import msgpack
import pytest

from feedsup.ipc import frames
from feedsup.procs import wait_for
from feedsup.sinks.config import NatsSink

nats = pytest.importorskip("nats")

from feedsup.ipc.jetstream import JetStreamConsumer, subjects_for  # noqa: E402
from feedsup.sinks.cluster import NatsCluster  # noqa: E402
from natscluster import running_cluster  # noqa: E402
from feedsup.sinks.nats import NatsSinkThread  # noqa: E402


@pytest.fixture
def node():
    with running_cluster(1) as cluster:
        yield cluster


def frame(topic: str, i: int, seq: int) -> tuple:
    body = frames.encode_body(topic, "s", 1_000_000 * i, {"agg_id": i})
    return (topic.encode(), i, 0, True, frames.with_seq(body, seq, 1))


def stored(urls: list[str]) -> list[dict]:
    with JetStreamConsumer(urls) as consumer:
        out = []
        while (f := consumer.next(timeout=1.0)) is not None:
            out.append(f)
        return out


def sink(node: NatsCluster, source: str, **conf) -> NatsSinkThread:
    s = NatsSinkThread(NatsSink(servers=tuple(node.urls), ack_timeout=1.0, **conf), source, ["t.A", "t.B"])
    s.start()
    return s


def test_subject_filters_follow_topic_prefixes():
    assert subjects_for([""]) == ["feedsup.>"]
    assert subjects_for(["aggTrade."], "x") == ["x.aggTrade.>"]
    assert subjects_for(["kline.BTCUSDT"]) == ["feedsup.kline.BTCUSDT", "feedsup.kline.BTCUSDT.>"]


def test_two_instances_store_each_event_once_in_order(node):
    a, b = sink(node, "a"), sink(node, "b")
    try:
        wait_for(lambda: a.seed_marks(0) is not None and b.seed_marks(0) is not None, 10, "sinks seeded")
        # b lags a by 50 events on each topic, as an A/B pair with a slow line would
        for i in range(1, 301):
            a.offer([frame("t.A", i, i), frame("t.B", i, i)])
            if i > 50:
                b.offer([frame("t.A", i - 50, i), frame("t.B", i - 50, i)])
        for i in range(251, 301):
            b.offer([frame("t.A", i, i + 50), frame("t.B", i, i + 50)])
        wait_for(lambda: a.status()["pending"] == 0 and b.status()["pending"] == 0, 30, "all acked")
        got = stored(node.urls)
        for topic in ("t.A", "t.B"):
            ids = [f["data"]["agg_id"] for f in got if f["topic"] == topic]
            assert ids == list(range(1, 301))
        assert a.status()["duplicates"] + b.status()["duplicates"] == 600
        assert {f["source"] for f in got} <= {"a", "b"}
        assert a.status()["connected"] == node.urls[0]
    finally:
        a.stop()
        b.stop()


def test_nats_down_buffer_overflow_gap_notice_and_held_marks(node):
    s = sink(node, "a", buffer=20)
    try:
        wait_for(lambda: s.seed_marks(0) is not None, 10, "sink seeded")
        s.offer([frame("t.A", i, i) for i in range(1, 6)])
        wait_for(lambda: s.status()["acked"] == 5, 10, "first frames acked")
        node.kill(0)
        wait_for(lambda: s.status()["connected"] is None, 10, "sink sees NATS gone")
        s.offer([frame("t.A", i, i) for i in range(6, 41)])      # 20 wait, 15 dropped
        wait_for(lambda: s.status()["dropped"] == 15, 10, "overflow counted")
        # the parent may save no watermark past what JetStream acknowledged
        assert s.cap_marks({"t.A": (40, 0, True)}) == {"t.A": (5, 0, True)}
        node.start(0)
        wait_for(lambda: s.status()["acked"] >= 25, 30, "buffer drained after reconnect")
        s.offer([frame("t.A", 41, 41)])
        wait_for(lambda: s.status()["pending"] == 0, 30, "buffer drained after reconnect")
        got = stored(node.urls)
        ids = [f["data"]["agg_id"] if f["data"] else ("gap", f["gap"]["from_id"], f["gap"]["to_id"]) for f in got]
        assert ids == [*range(1, 26), ("gap", 26, 40), 41]
        gap = got[25]["gap"]
        assert gap["reason"].startswith("sink buffer full") and gap["from_ms"] == 26 and gap["to_ms"] == 40
        st = s.status()
        assert st["gaps"] == 1 and st["last_error"]
        assert s.cap_marks({"t.A": (41, 0, True)}) == {"t.A": (41, 0, True)}
    finally:
        s.stop()


def test_durable_consumer_resumes_after_its_last_ack(node):
    async def publish() -> None:
        nc = await nats.connect(node.urls)
        js = nc.jetstream()
        await js.add_stream(name="FEEDSUP", subjects=["feedsup.>"])
        for i in range(1, 21):
            await js.publish("feedsup.t.A", msgpack.packb({"topic": "t.A", "seq": i, "data": {"agg_id": i}}))
        await nc.close()
    asyncio.run(publish())
    seen = []
    first = JetStreamConsumer(node.urls, ["t."], durable="d", batch=8)
    seen += [first.next(2)["data"]["agg_id"] for _ in range(7)]
    first.close()                                  # clean: acks what it handed out
    # a second consumer process takes 5 frames and dies without acking the last
    code = ("import os\nfrom feedsup.ipc.jetstream import JetStreamConsumer\n"
            f"c = JetStreamConsumer({node.urls!r}, ['t.'], durable='d', batch=8)\n"
            "print([c.next(2)['data']['agg_id'] for _ in range(5)], flush=True)\nos._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    seen += json.loads(out.stdout)
    third = JetStreamConsumer(node.urls, ["t."], durable="d", batch=8)
    rest = []
    while (f := third.next(1.0)) is not None:
        rest.append(f)
    third.close()
    assert seen == list(range(1, 13))
    # the frame being processed at the "kill" comes again, flagged; nothing else twice
    assert [f["data"]["agg_id"] for f in rest] == list(range(12, 21))
    assert rest[0].get("redelivered") and not any(f.get("redelivered") for f in rest[1:])


def test_tail_nats_prints_stored_frames(node):
    s = sink(node, "host-a")
    try:
        wait_for(lambda: s.seed_marks(0) is not None, 10, "sink seeded")
        s.offer([frame("t.A", i, i) for i in range(1, 4)] + [frame("t.B", 9, 1)])
        wait_for(lambda: s.status()["acked"] == 4, 10, "acked")
    finally:
        s.stop()
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "tail", "--nats-servers", node.urls[0], "-n", "3",
                          "t.A"], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["t.A"] * 3
    assert "agg_id=1 " in lines[0] + " " and "js=1 source=host-a" in lines[0]


@pytest.fixture
def cluster3():
    with running_cluster(3) as cluster:
        yield cluster


def test_consumer_reopened_twice_without_reading_keeps_its_position(cluster3):
    """A durable re-created at its floor and closed again before reading must
    not fall back to the stream's start (on a cluster, a fresh consumer's ack
    floor reads 0)."""
    node = cluster3

    async def publish() -> None:
        nc = await nats.connect(node.urls)
        js = nc.jetstream()
        await js.add_stream(name="FEEDSUP", subjects=["feedsup.>"], num_replicas=3)
        for i in range(1, 31):
            await js.publish("feedsup.t.A", msgpack.packb({"topic": "t.A", "seq": i, "data": {"agg_id": i}}))
        await nc.close()
    asyncio.run(publish())
    first = JetStreamConsumer(node.urls, durable="p", batch=8)
    assert [first.next(2)["js_seq"] for _ in range(5)] == [1, 2, 3, 4, 5]
    first.close()
    JetStreamConsumer(node.urls, durable="p", batch=8).close()     # opened and closed, nothing read
    third = JetStreamConsumer(node.urls, durable="p", batch=8)
    assert third.next(2)["js_seq"] == 6
    third.close()


def test_consumer_waits_for_the_stream_to_be_created(node):
    import threading

    got: list = []
    async def create() -> None:
        nc = await nats.connect(node.urls)
        await nc.jetstream().add_stream(name="FEEDSUP", subjects=["feedsup.>"])
        await nc.close()
    # feedsup creates the stream on its first start: here, a second after the consumer
    later = threading.Timer(1.0, lambda: asyncio.run(create()))
    later.start()
    try:
        got.append(JetStreamConsumer(node.urls, durable="w", open_timeout=20))
    finally:
        later.join(25)
    assert got
    got[0].close()


def test_handoff_stays_bounded_when_the_sink_thread_is_not_pulling():
    s = NatsSinkThread(NatsSink(servers=("nats://127.0.0.1:1",), buffer=10), "a")     # never started
    for i in range(1000):
        s.offer([frame("t.A", 5 * i + j, 1) for j in range(5)] + [frame("t.B", i, 1)])
    assert len(s._handoff) <= 3                     # two real batches, then one summary
    with s._lock:
        s._pull()
    assert s.core.pending == 10 and s.core.dropped == 6000 - 10


def test_feedsup_publishes_on_pub_while_nats_is_unreachable(start_sim, tmp_path):
    """NATS down from the start: PUB is not held up (beyond the 5 s wait for
    what JetStream holds), and status shows the sink's trouble."""
    from feedsup.sinks.cluster import free_ports

    port = free_ports(1)[0]
    sim = start_sim(speed=60, trade_rate=10)
    streams = [{"name": "trades", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}]

    from tests.harness import Collector, Feedsup, write_config

    path = write_config(tmp_path, sim, streams)
    path.write_text(path.read_text() + f'[sink.nats]\nservers = ["nats://127.0.0.1:{port}"]\nbuffer = 50\n')
    fs = Feedsup(path, tmp_path)
    col = Collector(fs.pub)
    try:
        fs.wait_running("trades", 20)
        col.wait_count(100, 20)
        sink = wait_for(lambda: (s := fs.status()["sink"]) and s["dropped"] > 1000 and s, 30, "overflow counted")
        assert sink["connected"] is None and "connect" in sink["last_error"].lower()
        # bounded: the buffer (50) plus at most about a second of hand-off not yet counted
        assert sink["pending"] < 1000 and sink["acked"] == 0
    finally:
        col.close()
        fs.close()
