"""The sink's I/O shell against a real nats-server (one node), no feedsup
parent: deduplication between two instances, per-topic order, the bounded
buffer while NATS is down (counted loss, gap notice, held watermarks), and
the resuming consumer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import msgpack
import pytest

from feedsup.ipc import frames
from feedsup.procs import wait_for
from feedsup.sinks.config import NatsSink

nats = pytest.importorskip("nats")

from feedsup.ipc import jetstream  # noqa: E402
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


def publish_numbered(urls: list[str], count: int, replicas: int = 1, first: int = 1) -> None:
    """Frames agg_id first..count on t.A, into stream FEEDSUP (created if new)."""
    from nats.js.errors import NoStreamResponseError

    async def publish() -> None:
        nc = await nats.connect(urls)
        js = nc.jetstream()
        await js.add_stream(name="FEEDSUP", subjects=["feedsup.>"], num_replicas=replicas)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        for i in range(first, count + 1):
            payload = msgpack.packb({"topic": "t.A", "seq": i, "data": {"agg_id": i}})
            while True:
                try:
                    await js.publish("feedsup.t.A", payload, headers={"Nats-Msg-Id": str(i)})
                    break
                except NoStreamResponseError:    # a replicated stream still electing its leader
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        await nc.close()
    asyncio.run(publish())


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
    publish_numbered(node.urls, 20)
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



def steal_deliveries(urls: list[str], pull_subject: str, batch: int) -> None:
    """Deliveries lost on the way, as when the node a consumer is connected to
    dies with frames in flight: another connection takes them and never acks.
    The server counts them delivered and waits ``ack_wait`` (30 s) for acks."""
    async def steal() -> None:
        nc = await nats.connect(urls)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)        # the server delivers only to a reply someone listens on
        await nc.publish(pull_subject, json.dumps({"batch": batch, "no_wait": True}).encode(), reply=inbox)
        for _ in range(batch):
            await sub.next_msg(timeout=5)
        await nc.close()
    asyncio.run(steal())


@pytest.mark.parametrize("durable", ["d", None])
@pytest.mark.parametrize("taken", [4, 0])
@pytest.mark.parametrize("server", ["reset", "recreate", "unanswered"])
def test_deliveries_lost_in_transit_come_in_order_without_waiting_for_ack_wait(node, durable, taken, server,
                                                                                monkeypatch):
    """``taken`` frames handed out, then 3 deliveries lost; with the server's
    consumer reset (nats-server 2.14+), as before 2.14 by re-creating the
    consumer, or re-creating it after resets nobody answers (a consumer
    leader older than 2.14 in a newer cluster)."""
    if server == "recreate":
        monkeypatch.setattr(jetstream, "_has_consumer_reset", lambda nc: False)
    if server == "unanswered":
        monkeypatch.setattr(jetstream, "RESET_API", "$JS.API.CONSUMER.NO_SUCH_API.{stream}.{consumer}")
    publish_numbered(node.urls, 20)
    consumer = JetStreamConsumer(node.urls, ["t."], durable=durable, batch=4)
    try:
        got = [consumer.next(2)["data"]["agg_id"] for _ in range(taken)]
        steal_deliveries(node.urls, consumer._sub._nms, 3)                 # the next 3 lost on the way
        while len(got) < 20 and (f := consumer.next(10.0)) is not None:    # well below ack_wait (30 s)
            got.append(f["data"]["agg_id"])
            assert not f.get("redelivered")
    finally:
        consumer.close()
    assert got == list(range(1, 21))


@pytest.mark.parametrize("server", ["reset", "recreate"])
def test_a_reopened_durable_losing_deliveries_before_handing_one_out_keeps_its_position(node, server,
                                                                                        monkeypatch):
    """A consumer process restarted (SIGTERM, a deploy) reopens its durable,
    which is right where the last one acked; deliveries are lost before it
    hands out its first frame (a node dies as it starts). It resumes after
    the last acked frame, not from the stream's start (seen in CI: the
    frames from seq 1 again, unflagged)."""
    if server == "recreate":
        monkeypatch.setattr(jetstream, "_has_consumer_reset", lambda nc: False)
    publish_numbered(node.urls, 20)
    first = JetStreamConsumer(node.urls, ["t."], durable="d", batch=4)
    got = [first.next(2)["data"]["agg_id"] for _ in range(6)]
    first.close()                                   # clean: acks what it handed out
    second = JetStreamConsumer(node.urls, ["t."], durable="d", batch=4)
    try:
        steal_deliveries(node.urls, second._sub._nms, 3)                  # its first 3 lost on the way
        while len(got) < 20 and (f := second.next(10.0)) is not None:
            got.append(f["data"]["agg_id"])
            assert not f.get("redelivered")
    finally:
        second.close()
    assert got == list(range(1, 21))


@pytest.mark.parametrize("durable", ["d", None])
def test_a_consumer_started_at_new_losing_its_first_deliveries_skips_nothing(node, durable):
    """Nothing acknowledged and nothing handed out yet when deliveries are
    lost: the consumer keeps its own start (here: only frames published
    after it opened), neither skipping any nor going back to older ones."""
    publish_numbered(node.urls, 10)
    consumer = JetStreamConsumer(node.urls, ["t."], durable=durable, start="new", batch=4)
    try:
        publish_numbered(node.urls, 20, first=11)
        steal_deliveries(node.urls, consumer._sub._nms, 3)
        got = []
        while len(got) < 10 and (f := consumer.next(10.0)) is not None:
            got.append(f["data"]["agg_id"])
    finally:
        consumer.close()
    assert got == list(range(11, 21))


@pytest.mark.parametrize("durable", ["d", None])
def test_a_consumer_deleted_under_it_is_created_again_at_its_position(node, durable):
    """An operator deletes it, or the server drops an ephemeral consumer
    left idle past its inactive_threshold: the next frames still come, in
    order, from right after the last one handed out."""
    publish_numbered(node.urls, 10)
    consumer = JetStreamConsumer(node.urls, ["t."], durable=durable, batch=4)
    try:
        got = [consumer.next(2)["data"]["agg_id"] for _ in range(4)]
        name = consumer._sub._consumer

        async def delete() -> None:
            nc = await nats.connect(node.urls)
            await nc.jetstream().delete_consumer("FEEDSUP", name)
            await nc.close()
        asyncio.run(delete())
        while len(got) < 10 and (f := consumer.next(10.0)) is not None:
            got.append(f["data"]["agg_id"])
    finally:
        consumer.close()
    assert got == list(range(1, 11))


def consumer_leader(urls: list[str], durable: str) -> int:
    """The index of the node leading ``durable`` (nodes are named n0, n1, ...)."""
    async def leader() -> str:
        nc = await nats.connect(urls)
        info = await nc.jetstream().consumer_info("FEEDSUP", durable)
        await nc.close()
        return info.cluster.leader
    return int(asyncio.run(leader())[1:])


def test_a_reconnect_resyncs_even_when_no_later_frame_reveals_the_loss(cluster3):
    """The consumer's node dies with the last frames on their way to it, and
    nothing after them shows a jump in the delivery count: the broken
    connection itself is the sign. (Without it the frames would come back
    only after ack_wait, 30 s.)"""
    node = cluster3
    publish_numbered(node.urls, 10, replicas=3)
    JetStreamConsumer(node.urls, durable="d").close()                  # created, nothing read
    leader = consumer_leader(node.urls, "d")
    via = (leader + 1) % 3                                              # connected to a node that is not the leader
    servers = [node.urls[via]] + [u for i, u in enumerate(node.urls) if i != via]
    consumer = JetStreamConsumer(servers, durable="d", batch=4, connect_options={"dont_randomize": True})
    try:
        got = [consumer.next(2)["data"]["agg_id"] for _ in range(4)]
        steal_deliveries(node.urls, consumer._sub._nms, 6)              # 5..10, the last ones
        node.kill(via)
        # A dead node can cost a leader election first (seconds), so allow
        # 25 s: still below ack_wait, after which the server would resend
        # them itself, flagged redelivered.
        deadline = time.monotonic() + 25
        while len(got) < 10 and (f := consumer.next(max(0.0, deadline - time.monotonic()))) is not None:
            assert not f.get("redelivered")
            got.append(f["data"]["agg_id"])
    finally:
        consumer.close()
    assert got == list(range(1, 11))


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

    publish_numbered(node.urls, 30, replicas=3)
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
