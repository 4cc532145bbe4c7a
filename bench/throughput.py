"""End to end throughput, CPU per message and added latency: exchange ->
feedsup (worker -> parent) -> a consumer in another process.

    python bench/throughput.py [--count 200000] [--seconds 5] [--skip-latency] [--rt]

The exchange side is ``bench/kblast.py`` (combined ``btcusdt@kline_1m``
messages, about 330 bytes; REST from the simulator). Prints:

1. throughput: a raw websocket-client ``recv_data`` loop (the baseline, its
   own process) and feedsup end to end (the consumer is this process, using
   ``feedsup.ipc.client.Subscriber``, every frame decoded), with the CPU
   each process spent per message (utime + stime from /proc);
2. added latency (worker receive stamp ``recv_ns`` -> consumer receive),
   p50/p99/p99.9/max, at a steady 5,000 and 20,000 msgs/s, and at 5,000
   while another stream (ETHUSDT) blasts through the same feedsup;
3. RSS of every process.

On a loaded host the latency tail is time spent waiting for a CPU (the
other users' work), not feedsup's: ``--rt`` runs the exchange, the parent,
the measured stream's worker and the consumer SCHED_FIFO (root), which shows feedsup's own figures; a bare
ZeroMQ chain doing nothing (``bench/latency_floor.py``) has the same tail
without it. ``bench/latency.py`` compares trees run by run (A/B).

Every process runs for real on loopback; nothing is mocked. A benchmark,
not a test: it prints figures and asserts nothing. On a shared machine
msgs/s swings with the load; CPU per message is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feedsup.ipc.client import Subscriber  # noqa: E402
from feedsup.procs import child_pids, read_line, rss_mb, stop, tied  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

RAW_CLIENT = r"""
import sys, time, os, websocket
url, count = sys.argv[1], int(sys.argv[2])
ws = websocket.create_connection(url, skip_utf8_validation=True)
recv = ws.recv_data
recv(True)
t0 = time.perf_counter(); c0 = time.process_time()
n = 1
while n < count:
    op, _ = recv(True)
    if op in (1, 2):
        n += 1
dt = time.perf_counter() - t0
print(n / dt, (time.process_time() - c0) / n * 1e6)
"""


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def start(argv: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(tied([sys.executable, *argv]), stdout=subprocess.PIPE, cwd=REPO)
    return proc, json.loads(read_line(proc, 30))


def start_exchange(count: int, rates: dict[str, int] | None = None) -> tuple[list[subprocess.Popen], dict]:
    sim, urls = start(["-m", "feedsup.sim", "--symbols", "BTCUSDT,ETHUSDT"])
    args = ["bench/kblast.py", "--count", str(count)]
    for symbol, rate in (rates or {}).items():
        args += ["--rate", f"{symbol}={rate}"]
    blast, kb = start(args)
    return [sim, blast], {"rest_url": urls["rest_url"], "ws_url": kb["ws_url"]}


def pub_endpoint(tmp: Path, kind: str = "ipc") -> str:
    """Where feedsup publishes: its ipc socket, or (``tcp``) a loopback port,
    served by the relay process (feedsup/supervisor/relay.py)."""
    if kind == "ipc":
        return f"ipc://{tmp}/pub"
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def write_config(tmp: Path, urls: dict, symbols: tuple[str, ...] = ("BTCUSDT",), pub: str = "",
                 nice: dict[str, int] | None = None) -> Path:
    """One kline stream per symbol; ``nice``: symbol -> that stream's ``nice``
    (written only where set, so a checkout older than the key reads it too)."""
    path = tmp / "bench.toml"
    streams = "".join(f"""
[[stream]]
name = "k{s.lower()}"
market = "spot"
channel = "kline"
intervals = ["1m"]
symbols = ["{s}"]
""" + (f"nice = {nice[s]}\n" if nice and nice.get(s) else "") for s in symbols)
    path.write_text(f"""
[feedsup]
pub = "{pub or f'ipc://{tmp}/pub'}"
control = "ipc://{tmp}/ctl"
pub_hwm = 1000000
[binance.spot]
ws_url = "{urls['ws_url']}"
rest_url = "{urls['rest_url']}"
[connection]
stale_after = 0
{streams}""")
    return path


def run_feedsup(config: Path, prefix: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(tied([*(prefix or []), sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]),
                            stderr=subprocess.DEVNULL, cwd=REPO)


def raw_receive(ws_url: str, count: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", RAW_CLIENT, ws_url + "/stream?streams=btcusdt@kline_1m",
                          str(count)], capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
    rate, cpu = out.stdout.split()
    return float(rate), float(cpu)


def consume(sub: Subscriber, count: int, timeout: float = 20.0) -> tuple[int, float, int]:
    """Take frames until the blast's last one (``last_trade_id`` runs from
    1000); return (frames, seconds from the first, index of the first)."""
    frame = sub.recv(timeout=60)
    if frame is None:
        raise SystemExit("no frames from feedsup")
    t0 = time.perf_counter()
    first = frame["data"]["last_trade_id"] - 1000
    last_index = count - 1 + 1000
    n = 1
    recv = sub.recv
    while True:
        frame = recv(timeout)
        if frame is None:
            break
        n += 1
        if frame["data"]["last_trade_id"] >= last_index:
            break
    return n, time.perf_counter() - t0, first


def feedsup_pids(fs: subprocess.Popen) -> dict[str, int]:
    pids = {"parent": fs.pid}
    workers = sorted(p for p in child_pids(fs.pid) if b"feedsup.supervisor.relay" not in cmdline(p))
    for i, pid in enumerate(workers):
        pids[f"worker {i + 1}" if i else "worker"] = pid
    pids.update({"relay": p for p in child_pids(fs.pid) if b"feedsup.supervisor.relay" in cmdline(p)})
    return pids


def end_to_end(count: int, pub_kind: str = "ipc") -> dict:
    """feedsup, one kline stream, ``count`` blasted messages; the consumer here."""
    procs, urls = start_exchange(count)
    try:
        raw, raw_cpu = raw_receive(urls["ws_url"], count)
        with tempfile.TemporaryDirectory(prefix="feedsup-bench-") as tmp:
            pub = pub_endpoint(Path(tmp), pub_kind)
            config = write_config(Path(tmp), urls, pub=pub)
            sub = Subscriber(pub, ["kline."])
            fs = run_feedsup(config)
            try:
                first = sub.recv(timeout=60)
                if first is None:
                    raise SystemExit("no frames from feedsup")
                # The worker connected a second connection to kblast; the
                # frames so far are its first; from here CPU is counted.
                pids = feedsup_pids(fs)
                pids["consumer"] = os.getpid()
                before = {name: cpu_s(pid) for name, pid in pids.items()}
                n, seconds, start_at = consume(sub, count)
                after = {name: cpu_s(pid) for name, pid in pids.items()}
                rss = {name: rss_mb(pid) for name, pid in pids.items()}
            finally:
                stop(fs)
                sub.close()
    finally:
        for p in procs:
            stop(p)
    cpu = {name: (after[name] - before[name]) / n * 1e6 for name in pids}
    return {"raw": raw, "raw_cpu": raw_cpu, "rate": n / seconds, "n": n, "cpu": cpu, "rss": rss,
            "gaps": len(sub.gaps), "first": start_at}


def latency(rate: int, seconds: float, blast_other: bool = False, rt: bool = False,
            pub_kind: str = "ipc") -> tuple[list[float], float]:
    """``rt``: the exchange (kblast), the parent, the BTCUSDT worker and this
    consumer run SCHED_FIFO (root only; see bench/latency.py)."""
    procs, urls = start_exchange(0, {"BTCUSDT": rate})
    symbols = ("BTCUSDT", "ETHUSDT") if blast_other else ("BTCUSDT",)
    policy = os.sched_getscheduler(0), os.sched_getparam(0)
    if rt:
        # The exchange is another host: the load here must not pace it.
        subprocess.run(["chrt", "-a", "-f", "-p", "20", str(procs[1].pid)], check=True, stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory(prefix="feedsup-bench-") as tmp:
            pub = pub_endpoint(Path(tmp), pub_kind)
            config = write_config(Path(tmp), urls, symbols, pub)
            fs = run_feedsup(config)
            if rt:
                # After feedsup's start (it would inherit it), before the
                # Subscriber's I/O thread (which does).
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            sub = Subscriber(pub, ["kline.BTCUSDT"])
            try:
                if sub.recv(timeout=60) is None:
                    raise SystemExit("no frames from feedsup")
                if rt:      # the parent and the measured stream's worker, not the blasting one
                    for pid in (fs.pid, *(p for p in child_pids(fs.pid) if b"kbtcusdt" in cmdline(p))):
                        prioritise(pid)
                samples = []
                time_ns = time.time_ns
                recv = sub.recv
                end = time.monotonic() + 1.0       # warm-up
                while time.monotonic() < end:
                    recv(1.0)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    frame = recv(1.0)
                    if frame is not None:
                        samples.append((time_ns() - frame["recv_ns"]) / 1e6)
            finally:
                stop(fs)
                sub.close()
    finally:
        os.sched_setscheduler(0, *policy)
        for p in procs:
            stop(p)
    return samples, len(samples) / seconds


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def prioritise(pid: int, how: str = "fifo") -> None:
    """SCHED_FIFO 10 (or ``how="nice"``: nice -15) for every thread of
    ``pid``; threads and processes it starts later inherit it (call it
    once the workers that should not have it are running)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if how == "fifo":
                os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(10))
            else:
                os.setpriority(os.PRIO_PROCESS, int(tid), -15)
        except OSError:
            pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000, help="messages in the throughput run")
    ap.add_argument("--seconds", type=float, default=5.0, help="latency sampling time per rate")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--rt", action="store_true",
                    help="latency with the exchange, parent, measured worker, consumer SCHED_FIFO (root)")
    ap.add_argument("--pub", choices=("ipc", "tcp"), default="ipc",
                    help="the consumer on the ipc PUB, or on a tcp:// PUB through the relay process")
    args = ap.parse_args()

    if not args.skip_throughput:
        t = end_to_end(args.count, args.pub)
        print(f"\nthroughput: {args.count:,} combined btcusdt@kline_1m messages, blasted, {os.cpu_count()} cores,"
              f" consumer on {args.pub}")
        print(f"  {'path':44} {'msgs/s':>10} {'CPU us/msg':>11}")
        print(f"  {'raw websocket-client recv_data loop':44} {t['raw']:>10,.0f} {t['raw_cpu']:>11.2f}")
        total = sum(t["cpu"].values())
        print(f"  {'feedsup: worker -> parent -> consumer':44} {t['rate']:>10,.0f} {total:>11.2f}")
        for name, us in t["cpu"].items():
            print(f"    {name:42} {'':>10} {us:>11.2f}")
        print(f"  ratio feedsup / raw: {t['rate'] / t['raw']:.2f}; received {t['n']:,} (from index {t['first']}),"
              f" seq gaps {t['gaps']}")
        print("  RSS MB: " + ", ".join(f"{k} {v:.1f}" for k, v in t["rss"].items()))

    if not args.skip_latency:
        print("\nadded latency, worker receive -> consumer receive, ms"
              + (" (SCHED_FIFO: exchange, parent, worker, consumer)" if args.rt else "") + f"; load {os.getloadavg()[0]:.1f}")
        print(f"  {'load':36} {'msgs/s':>8} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
        for label, rate, other in (("steady 5,000/s", 5000, False), ("steady 20,000/s", 20000, False),
                                   ("5,000/s while ETHUSDT blasts", 5000, True)):
            samples, measured = latency(rate, args.seconds, other, args.rt, args.pub)
            print(f"  {label:36} {measured:>8,.0f} {pct(samples, 0.5):>7.3f} {pct(samples, 0.99):>7.3f}"
                  f" {pct(samples, 0.999):>7.3f} {max(samples, default=float('nan')):>7.3f}")


if __name__ == "__main__":
    main()
