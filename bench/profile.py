"""Where the CPU goes: py-spy profiles of a kline worker, its parent and a
consumer in its own process, during a continuous kline blast.

    python bench/profile.py [--tree DIR] [--out PREFIX] [--seconds 6]

``bench/kblast.py --count 0`` blasts one ``ethusdt@kline_1m`` stream into
one ``feedsup run`` of the tree under test (``--tree``: a checkout, e.g. an
older commit exported with ``git archive``; its worker, parent and client
are the ones profiled; the exchange side is this checkout's). After 3 s of
blast, ``py-spy record`` samples the worker, the parent and the consumer at
400 Hz. Prints each one's functions by self time, as a share of its
samples, and keeps the raw stacks in ``PREFIX.{worker,parent,consumer}.txt``.
Needs ``py-spy`` (``pip install py-spy``) and permission to attach to a
process (root, or ``kernel.yama.ptrace_scope = 0``). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
from feedsup.procs import child_pids, read_line, stop, tied, wait_for  # noqa: E402

sys.path.insert(0, str(BENCH))
from throughput import write_config  # noqa: E402

# Reads everything, as a bot would; the tree's own client.
CONSUMER = """
import sys
sys.path.insert(0, sys.argv[1])
from feedsup.ipc.client import Subscriber
sub = Subscriber(sys.argv[2], ["kline."])
while True:
    sub.recv(timeout=1.0)
"""


def self_time(path: str, n: int = 8) -> tuple[int, list[tuple[str, int]]]:
    """Samples in a py-spy raw file, and the ``n`` functions with most self time."""
    counts: collections.Counter[str] = collections.Counter()
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            leaf = stack.split(";")[-1]                       # "func (path/file.py:line)"
            func, _, where = leaf.partition(" (")
            counts[f"{func} ({Path(where.split(':')[0]).name})"] += int(count)
    return sum(counts.values()), counts.most_common(n)


def profile(tree: Path, out: str, seconds: int) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], cwd: Path = REPO, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(tied(argv), cwd=cwd, **kw)
        procs.append(proc)
        return proc

    with tempfile.TemporaryDirectory(prefix="feedsup-profile-") as tmp:
        try:
            sim = start([sys.executable, "-m", "feedsup.sim", "--symbols", "ETHUSDT"], stdout=subprocess.PIPE)
            rest_url = json.loads(read_line(sim, 30))["rest_url"]
            blaster = start([sys.executable, str(BENCH / "kblast.py"), "--count", "0"], stdout=subprocess.PIPE)
            ws_url = json.loads(read_line(blaster, 30))["ws_url"]
            config = write_config(Path(tmp), {"ws_url": ws_url, "rest_url": rest_url}, ("ETHUSDT",))
            consumer = start([sys.executable, "-c", CONSUMER, str(tree), f"ipc://{tmp}/pub"])
            fs = start([sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)], cwd=tree, env=env,
                       stderr=subprocess.DEVNULL)
            worker = wait_for(lambda: next(iter(child_pids(fs.pid)), None), 30, "the worker")
            time.sleep(3)                 # the blast under way (a warm-up, not a synchronisation)
            spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "400", "-f", "raw",
                                       "-o", f"{out}.{name}.txt", "--nonblocking"], stdout=subprocess.DEVNULL)
                     for name, pid in (("worker", worker), ("parent", fs.pid), ("consumer", consumer.pid))]
            for spy_proc in spies:
                spy_proc.wait()
        finally:
            for proc in reversed(procs):
                stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=REPO, help="feedsup checkout to profile (default: this one)")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "feedsup-profile"),
                    help="prefix of the raw stack files")
    ap.add_argument("--seconds", type=int, default=6)
    args = ap.parse_args()
    profile(args.tree.resolve(), args.out, args.seconds)
    print(f"py-spy, self time by function, share of samples ({args.tree})")
    for name in ("worker", "parent", "consumer"):
        total, rows = self_time(f"{args.out}.{name}.txt")
        print(f"{name}: {total} samples")
        for func, count in rows:
            print(f"  {count / total * 100:5.1f} %  {func}")


if __name__ == "__main__":
    main()
