"""The parent's funnel: N synthetic workers -> one parent -> PUB.

    python bench/funnel.py [--workers 1 2 4] [--frames 400000] [--subscriber none|match]

Each synthetic worker is a process that pre-encodes its share of kline
records (about 330-byte bodies, the worker's real encoder, batches of 32 as
the uplink sends them) and then pushes them as fast as ZeroMQ takes them.
The parent is the real ``Parent._drain`` (checks, watermarks, seq splice,
last values, PUB sends) on real sockets, driven by a bare poll loop in this
process: the frames/s printed is what one parent process can publish. One
SUB process is connected; by default its subscription matches nothing (a
consumer interested in other topics: PUB still filters every frame);
``--subscriber match`` makes it receive everything. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feedsup.config import load_config  # noqa: E402
from feedsup.ipc import frames  # noqa: E402
from feedsup.ipc.topics import symbol_topic  # noqa: E402
from feedsup.procs import read_line, tied  # noqa: E402
from feedsup.supervisor.parent import UPLINK_RCVHWM, Parent  # noqa: E402

T0 = 1_700_000_000_000 // 60_000 * 60_000


def symbol(i: int) -> str:
    return f"S{i}USDT"


def kline(sym: str, i: int) -> dict:
    t = T0 + i * 60_000
    return {"symbol": sym, "interval": "1m", "open_time": t, "close_time": t + 59_999,
            "open": "43250.12000000", "high": "43262.00000000", "low": "43240.01000000",
            "close": "43251.55000000", "volume": "12.34567000", "quote_volume": "533912.45678900",
            "trades": 1234, "closed": True, "event_time": t + 60_000, "first_trade_id": 1000 + i,
            "last_trade_id": 2000 + i, "taker_buy_volume": "6.54321000", "taker_buy_quote_volume": "282930.12345600"}


def push(endpoint: str, instance: int, count: int) -> None:
    """A synthetic worker: stream k<instance> of symbol S<instance>USDT."""
    sym = symbol(instance)
    topic = symbol_topic("kline", sym, "1m")
    tb = topic.encode()
    records = [frames.encode_data(tb, T0 + i * 60_000, T0 + i * 60_000 + 60_000, True,
                                  frames.encode_body(topic, f"k{instance}", time.time_ns(), kline(sym, i)))
               for i in range(count)]
    prefix = frames.batch_prefix(instance)
    batches = [prefix + b"".join(records[i:i + 32]) for i in range(0, count, 32)]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    print("ready", flush=True)
    sys.stdin.readline()            # go
    send = sock.send
    for b in batches:
        send(b)
    sock.close()
    ctx.term()


def subscribe(endpoint: str, prefix: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sock.connect(endpoint)
    print("ready", flush=True)
    while sock.poll(10_000):
        sock.recv()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(workers: int, total: int, match: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="feedsup-funnel-") as tmp:
        conf = Path(tmp) / "f.toml"
        conf.write_text(f'[feedsup]\npub = "ipc://{tmp}/pub"\ncontrol = "ipc://{tmp}/ctl"\npub_hwm = 1000000\n'
                        + "".join(f'[[stream]]\nname = "k{i}"\nmarket = "spot"\nchannel = "kline"\n'
                                  f'intervals = ["1m"]\nsymbols = ["{symbol(i)}"]\n' for i in range(workers)))
        parent = Parent(load_config(str(conf)))
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, UPLINK_RCVHWM)
        pull.bind(f"ipc://{tmp}/up")
        pub = ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.bind(f"ipc://{tmp}/pub")
        parent.pub = pub
        me = [sys.executable, __file__]
        sub = subprocess.Popen(tied(me + ["--sub", f"ipc://{tmp}/pub", "" if match else "none."]),
                               stdout=subprocess.PIPE, cwd=REPO)
        per = total // workers
        pushers = [subprocess.Popen(tied(me + ["--push", f"ipc://{tmp}/up", str(i), str(per)]),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
                   for i in range(workers)]
        for i in range(workers):
            parent.workers[i] = type("W", (), {"stream": f"k{i}", "exit_report": None, "pid": 0})()
        try:
            for p in [sub, *pushers]:
                read_line(p, 30)
            pub.poll(5000)
            pub.recv()                       # the subscription is live
            for p in pushers:
                p.stdin.write(b"go\n")
                p.stdin.flush()
            want = per * workers
            pull.poll(10_000)
            c0, t0 = cpu_s(os.getpid()), time.perf_counter()
            while parent.published < want:
                if not pull.poll(5000):
                    break
                parent._drain(pull, pub)
            seconds, cpu = time.perf_counter() - t0, cpu_s(os.getpid()) - c0
            assert parent.rejected == 0, "the parent refused a synthetic batch"
        finally:
            for p in [*pushers, sub]:
                p.kill()
                p.wait()
            pull.close(0)
            pub.close(0)
            ctx.term()
    return parent.published / seconds, cpu / parent.published * 1e6


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--push":
        return push(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    if len(sys.argv) > 1 and sys.argv[1] == "--sub":
        return subscribe(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--frames", type=int, default=400_000)
    ap.add_argument("--subscriber", choices=("none", "match"), default="none")
    args = ap.parse_args()
    print(f"funnel: synthetic workers -> one parent -> PUB ({args.frames:,} frames, {os.cpu_count()} cores,"
          f" subscriber {'matches every' if args.subscriber == 'match' else 'matches no'} topic)")
    print(f"  {'workers':>7} {'frames/s':>10} {'parent CPU us/frame':>20}")
    for n in args.workers:
        rate, cpu = run(n, args.frames, args.subscriber == "match")
        print(f"  {n:>7} {rate:>10,.0f} {cpu:>20.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
