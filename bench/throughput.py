"""End-to-end throughput and added latency: simulator -> feedsup -> consumer.

    python bench/throughput.py [--count 300000] [--rate 5000] [--seconds 10]

Prints three tables:

1. throughput: raw websocket-client receive from the simulator in blast mode
   (a plain ``create_connection`` + ``recv_data`` loop in its own process,
   the baseline) and end to end through feedsup (worker -> parent -> SUB),
   measured in the same run against the same server, with their ratio;
2. added latency at a steady ``--rate`` msgs/s: consumer receive time minus
   the worker's receive stamp (``recv_ns``), p50/p99/max;
3. RSS of every process.

Every process runs for real on loopback; nothing is mocked. A benchmark,
not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feedsup.procs import child_pids, read_line, rss_mb, tied  # noqa: E402

RAW_CLIENT = r"""
import sys, time, websocket
url, count, over = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
ws = websocket.create_connection(url, skip_utf8_validation=True)
if over:
    from feedsup.workers.fastrecv import install
    install(ws)
recv = ws.recv_data
recv(True)
t0 = time.perf_counter()
n = 1
while n < count:
    op, _ = recv(True)
    if op in (1, 2):
        n += 1
print(n / (time.perf_counter() - t0))
"""


def start_sim(*args: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(tied([sys.executable, "-m", "feedsup.sim", "--symbols", "BTCUSDT", *args]),
                            stdout=subprocess.PIPE, cwd=REPO)
    urls = json.loads(read_line(proc, 30))
    return proc, urls


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw_receive(urls: dict, count: int, over: bool) -> float:
    url = urls["ws_url"] + "/ws/btcusdt@aggTrade"
    out = subprocess.run([sys.executable, "-c", RAW_CLIENT, url, str(count), "1" if over else "0"],
                         capture_output=True, text=True, cwd=REPO, timeout=300, check=True)
    return float(out.stdout.strip())


def write_config(tmp: Path, urls: dict) -> Path:
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
[[stream]]
name = "price"
market = "spot"
channel = "aggTrade"
symbols = ["BTCUSDT"]
""")
    return path


class Consumer:
    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"aggTrade.")
        self.sub.connect(endpoint)

    def take(self, last_id: int, timeout: float) -> tuple[float, list[int], int]:
        """Receive until agg id ``last_id`` (blast ids run 1..count); return
        (msgs/s, agg ids received, seq gaps). Frames published before this
        SUB's subscription reached the PUB are not ours to count: the first
        id received tells how many that were."""
        recv = self.sub.recv
        unpackb = msgpack.unpackb
        ids: list[int] = []
        gaps, last_seq = 0, None
        if not self.sub.poll(int(timeout * 1000)):
            raise SystemExit("no frames from feedsup")
        t0 = time.perf_counter()
        while not ids or ids[-1] < last_id:
            if not self.sub.poll(int(timeout * 1000)):
                break
            recv()
            frame = unpackb(recv())
            ids.append(frame["data"]["agg_id"])
            if last_seq is not None and frame["seq"] != last_seq + 1:
                gaps += 1
            last_seq = frame["seq"]
        return len(ids) / (time.perf_counter() - t0), ids, gaps

    def latencies(self, seconds: float) -> list[float]:
        recv = self.sub.recv
        unpackb = msgpack.unpackb
        time_ns = time.time_ns
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self.sub.poll(100):
                continue
            recv()
            payload = recv()
            now = time_ns()
            out.append((now - unpackb(payload)["recv_ns"]) / 1e6)
        return out

    def close(self) -> None:
        self.sub.close(0)
        self.ctx.term()


def run_feedsup(config: Path) -> subprocess.Popen:
    return subprocess.Popen(tied([sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]),
                            stderr=subprocess.DEVNULL, cwd=REPO)


def throughput(count: int) -> dict:
    sim, urls = start_sim("--blast", "--blast-count", str(count))
    try:
        raw = raw_receive(urls, count, over=False)
        raw_over = raw_receive(urls, count, over=True)
        with tempfile.TemporaryDirectory(prefix="feedsup-bench-") as tmp:
            config = write_config(Path(tmp), urls)
            consumer = Consumer(f"ipc://{tmp}/pub")
            fs = run_feedsup(config)
            try:
                e2e, ids, gaps = consumer.take(count, timeout=30)
            finally:
                stop(fs)
                consumer.close()
    finally:
        stop(sim)
    lost = (ids[-1] - ids[0] + 1 - len(ids)) if ids else count
    before_join = ids[0] - 1 if ids else count
    return {"raw": raw, "raw_over": raw_over, "e2e": e2e, "received": len(ids), "lost": lost, "gaps": gaps,
            "before_join": before_join}


def latency(rate: int, seconds: float) -> tuple[list[float], dict[str, float]]:
    # aggTrade events per wall second = trade_rate x speed. A 1 ms engine
    # tick spreads them out: a steady rate, not bursts of one tick's events.
    sim, urls = start_sim("--speed", "10", "--trade-rate", str(rate / 10), "--tick", "0.001")
    try:
        with tempfile.TemporaryDirectory(prefix="feedsup-bench-") as tmp:
            config = write_config(Path(tmp), urls)
            consumer = Consumer(f"ipc://{tmp}/pub")
            fs = run_feedsup(config)
            try:
                consumer.latencies(2.0)               # warm-up
                samples = consumer.latencies(seconds)
                rss = {"simulator": rss_mb(sim.pid), "parent": rss_mb(fs.pid), "consumer (bench)": rss_mb(os.getpid())}
                for i, pid in enumerate(sorted(child_pids(fs.pid))):
                    rss[f"worker {i + 1}"] = rss_mb(pid)
            finally:
                stop(fs)
                consumer.close()
    finally:
        stop(sim)
    return samples, rss


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300_000, help="messages per throughput run")
    ap.add_argument("--rate", type=int, default=5000, help="steady rate for the latency run, msgs/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="latency sampling time")
    args = ap.parse_args()

    t = throughput(args.count)
    print(f"\nthroughput ({args.count:,} aggTrade messages, simulator blast mode, {os.cpu_count()} cores)")
    print(f"  {'path':44} {'msgs/s':>10}")
    print(f"  {'raw websocket-client recv_data loop':44} {t['raw']:>10,.0f}")
    print(f"  {'raw, with feedsup over-reading frame buffer':44} {t['raw_over']:>10,.0f}")
    print(f"  {'end to end: sim -> worker -> parent -> SUB':44} {t['e2e']:>10,.0f}")
    print(f"  ratio end-to-end / raw websocket-client: {t['e2e'] / t['raw']:.2f}")
    print(f"  received {t['received']:,}, lost {t['lost']}, seq gaps {t['gaps']}"
          f" (published before the consumer's subscription was live: {t['before_join']})")

    samples, rss = latency(args.rate, args.seconds)
    measured = len(samples) / args.seconds
    print(f"\nadded latency at {args.rate:,} msgs/s (measured {measured:,.0f} msgs/s, {len(samples):,} samples)")
    print("  worker receive -> consumer receive, ms")
    print(f"  p50 {statistics.median(samples):.3f}   p99 {pct(samples, 0.99):.3f}   max {max(samples):.3f}")

    print("\nRSS per process, MB")
    for name, mb in rss.items():
        print(f"  {name:20} {mb:6.1f}")


if __name__ == "__main__":
    main()
