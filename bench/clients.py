"""The consumer clients side by side on the same blast: the blocking
``Subscriber`` and the asyncio ``AsyncSubscriber``, msgs/s and CPU per message.

    python bench/clients.py [--count 100000]

One feedsup run, one kline stream fed by ``bench/kblast.py``. Each client
runs in its own process, subscribes, takes its first frame and then holds
(reading nothing) while the whole blast queues in its SUB socket (feedsup's
``pub_hwm`` and the clients' RCVHWM are large enough for all of it). Once a
probe subscriber here has seen the blast's last frame, each client in turn
drains its queue as fast as it can: that figure is the client's own cost
(receive, decode, seq check), not feedsup's. A benchmark: prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from feedsup.ipc.client import Subscriber  # noqa: E402
from feedsup.procs import read_line, tied  # noqa: E402
from throughput import run_feedsup, start_exchange, stop, write_config  # noqa: E402

CLIENT = r"""
import asyncio, json, sys, time
endpoint, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
last_index = count - 1 + 1000           # kblast's last_trade_id runs from 1000

def report(n, seconds, cpu, gaps):
    print(json.dumps({"n": n, "rate": n / seconds, "cpu_us": cpu / n * 1e6, "gaps": gaps}), flush=True)

if mode == "blocking":
    from feedsup.ipc.client import Subscriber
    sub = Subscriber(endpoint, ["kline."])
    sub.recv()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    recv = sub.recv
    while True:
        frame = recv(5)
        if frame is None:
            break
        n += 1
        if frame["data"]["last_trade_id"] >= last_index:
            break
    report(n, time.perf_counter() - t0, time.process_time() - c0, len(sub.gaps))
else:
    from feedsup.ipc.aio import AsyncSubscriber
    async def main():
        async with AsyncSubscriber(endpoint, ["kline."]) as sub:
            await sub.recv()
            print(json.dumps({"ready": True}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            t0, c0, n = time.perf_counter(), time.process_time(), 0
            async for frame in sub:
                n += 1
                if frame["data"]["last_trade_id"] >= last_index:
                    break
            report(n, time.perf_counter() - t0, time.process_time() - c0, len(sub.gaps))
    asyncio.run(main())
"""


def client(endpoint: str, count: int, mode: str) -> subprocess.Popen:
    return subprocess.Popen(tied([sys.executable, "-c", CLIENT, endpoint, str(count), mode]), cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="messages in the blast")
    ap.add_argument("--clients", default="blocking,asyncio", help="which clients, comma separated")
    args = ap.parse_args()
    procs, urls = start_exchange(args.count)
    clients: dict[str, subprocess.Popen] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="feedsup-bench-") as tmp:
            endpoint = f"ipc://{tmp}/pub"
            fs = run_feedsup(write_config(Path(tmp), urls))
            probe = Subscriber(endpoint, ["kline."])
            try:
                for mode in args.clients.split(","):
                    clients[mode] = client(endpoint, args.count, mode)
                for proc in clients.values():
                    json.loads(read_line(proc, 60))           # subscribed, first frame in
                while (frame := probe.recv(timeout=60)) is not None:
                    if frame["data"]["last_trade_id"] >= args.count - 1 + 1000:
                        break
                results = {}
                for mode, proc in clients.items():           # one at a time: 2 cores, shared
                    assert proc.stdin is not None
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
                    results[mode] = json.loads(read_line(proc, 120))
            finally:
                probe.close()
                stop(fs)
    finally:
        for proc in [*clients.values(), *procs]:
            stop(proc)
    print(f"consumer clients draining the same blast of {args.count} kline frames (held, then read flat out):")
    for mode, r in results.items():
        print(f"  {mode:9s} {r['rate']:>10,.0f} msgs/s  {r['cpu_us']:6.1f} us CPU/msg  "
              f"({r['n']} frames, {r['gaps']} gaps)")


if __name__ == "__main__":
    main()
