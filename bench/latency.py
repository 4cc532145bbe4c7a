"""Added latency (worker receive -> consumer receive), A/B interleaved, for
a shared machine where one run says little.

    python bench/latency.py [--tree DIR ...] [--runs 5] [--seconds 4]
                            [--case 5k --case 20k --case 5k+blast] [--chrt]
                            [--pub ipc --pub tcp] [--bulk-nice 0 --bulk-nice 19]

Each run starts the same exchange as ``bench/throughput.py`` (``kblast.py``
pacing BTCUSDT in 1 ms steps, optionally ETHUSDT blasting through a second
worker of the same feedsup) and a consumer in its own process, using
``feedsup.ipc.client.Subscriber`` from the tree under test. Several trees
(``--tree``: checkouts of feedsup, e.g. a baseline exported with ``git
archive``) are run in turn, case by case, ``--runs`` times: the load of the
other users of the machine falls on every tree alike. Prints every run with
the 1-minute load, then per tree and case the median of the runs' p50, p99,
p99.9 and their spread (min-max).

``--bulk-nice N``: the blasting ETHUSDT stream's worker at ``nice = N``
(the ``[[stream]]`` key), so it yields the CPU to the measured path.

``--apart plain|nice|idle``: the blasting stream in a second feedsup parent
instead (a shard of its own), started as is, under ``nice -n 19`` or under
``chrt -i 0`` (SCHED_IDLE), which need no privileges.

``--pin``: the measured feedsup (its parent and workers) and the consumer on
CPU 0, the exchange (unless ``--chrt exchange-idle``) and an ``--apart``
parent on CPU 1 (``taskset``).

``--chrt exchange-idle``: the exchange (``kblast.py`` and the simulator
serving REST) runs SCHED_IDLE instead (no
privileges needed): it takes no CPU the measured path wants, as a remote
exchange would not, and its pacing suffers instead.

``--chrt exchange``: the exchange (``kblast.py``) runs SCHED_FIFO (needs
root): on a loaded host it is otherwise starved too, and sends hundreds of
messages at once after a stall of 100+ ms, which a remote exchange would
not. ``--chrt all``: the BTCUSDT worker, the parent and the consumer as
well (``--chrt nice``: nice -15 for them instead), the rest as it is:
shows how much of the tail is waiting for a CPU. ``--chrt launch``: the
exchange, and feedsup (all its workers) and the consumer started under
``chrt -f 10``, as a user would. A benchmark, not a test: it asserts nothing.
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

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

CONSUMER = r"""
import sys, time, json, gc
tree, endpoint, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.path.insert(0, tree)
from feedsup.ipc.client import Subscriber
sub = Subscriber(endpoint, ["kline.BTCUSDT"])
print("ready", flush=True)
if sub.recv(timeout=60) is None:
    raise SystemExit("no frames from feedsup")
gc.freeze()
recv = sub.recv
time_ns = time.time_ns
end = time.monotonic() + 1.0       # warm-up
while time.monotonic() < end:
    recv(1.0)
samples = []
append = samples.append
end = time.monotonic() + seconds
while time.monotonic() < end:
    frame = recv(1.0)
    if frame is not None:
        append((frame["recv_ns"], time_ns()))
sub.close()
print(json.dumps(samples), flush=True)
"""

CASES = {"5k": (5000, False), "20k": (20000, False), "5k+blast": (5000, True)}


def load1() -> float:
    return os.getloadavg()[0]


def pct(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else float("nan")


def one_run(tree: Path, rate: int, blast: bool, seconds: float, chrt: str | None, pub_kind: str = "ipc",
            bulk_nice: int = 0, apart: str | None = None, pin: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(tree), os.environ.get("PYTHONPATH"))))}
    sys.path.insert(0, str(tree))
    from feedsup.procs import child_pids, read_line, stop, tied  # noqa: E402
    sys.path.pop(0)

    def start(argv: list[str]) -> tuple[subprocess.Popen, dict]:
        proc = subprocess.Popen(tied([sys.executable, *argv]), stdout=subprocess.PIPE, cwd=tree, env=env)
        return proc, json.loads(read_line(proc, 30))

    sys.path.insert(0, str(BENCH))
    from throughput import prioritise, pub_endpoint, write_config  # noqa: E402
    procs = []
    try:
        sim, urls = start(["-m", "feedsup.sim", "--symbols", "BTCUSDT,ETHUSDT"])
        procs.append(sim)
        blaster, kb = start([str(BENCH / "kblast.py"), "--count", "0", "--rate", f"BTCUSDT={rate}"])
        procs.append(blaster)
        if pin and chrt != "exchange-idle":     # the exchange's blast, and the kernel's work for it, on CPU 1
            subprocess.run(["taskset", "-a", "-p", "-c", "1", str(blaster.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        if chrt == "exchange-idle":
            # The exchange (the blaster and the simulator's REST side) is
            # another host: here it must not take CPU from the measured path.
            for pid in (blaster.pid, sim.pid):
                subprocess.run(["chrt", "-a", "-i", "-p", "0", str(pid)], check=True, stdout=subprocess.DEVNULL)
        elif chrt:
            # The exchange is another host: the load here must not pace it.
            subprocess.run(["chrt", "-a", "-f", "-p", "20", str(blaster.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        with tempfile.TemporaryDirectory(prefix="feedsup-lat-") as tmp:
            pub = pub_endpoint(Path(tmp), pub_kind)
            exchange = {"rest_url": urls["rest_url"], "ws_url": kb["ws_url"]}
            together = ("BTCUSDT", "ETHUSDT") if blast and not apart else ("BTCUSDT",)
            config = write_config(Path(tmp), exchange, together, pub,
                                  nice={"ETHUSDT": bulk_nice} if bulk_nice else None)
            if blast and apart:
                # The blasting stream in a parent of its own (a shard), at a low priority.
                bulk = Path(tmp) / "bulk"
                bulk.mkdir()
                bulk_config = write_config(bulk, exchange, ("ETHUSDT",), pub_endpoint(bulk, "ipc"),
                                           nice={"ETHUSDT": bulk_nice} if bulk_nice else None)
                low = {"idle": ["chrt", "-i", "0"], "nice": ["nice", "-n", "19"], "plain": []}[apart]
                low += ["taskset", "-c", "1"] if pin else []
                procs.append(subprocess.Popen(tied([*low, sys.executable, "-m", "feedsup.cli", "run", "-c",
                                                    str(bulk_config)]), stderr=subprocess.DEVNULL, cwd=tree,
                                              env=env))
            # --chrt launch: the recipe for a user, ``chrt -f 10 feedsup run``
            # (workers inherit the policy) and the consumer likewise.
            rt = ["chrt", "-f", "10"] if chrt == "launch" else []
            rt += ["taskset", "-c", "0"] if pin else []
            consumer = subprocess.Popen(tied([*rt, sys.executable, "-c", CONSUMER, str(tree), pub,
                                              str(seconds)]), stdout=subprocess.PIPE, text=True, env=env)
            procs.append(consumer)
            assert consumer.stdout.readline().strip() == "ready"
            fs = subprocess.Popen(tied([*rt, sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]),
                                  stderr=subprocess.DEVNULL, cwd=tree, env=env)
            procs.append(fs)
            if chrt in ("all", "nice"):
                deadline = time.monotonic() + 30
                worker = None
                while worker is None and time.monotonic() < deadline:
                    for pid in child_pids(fs.pid):
                        try:
                            if b"kbtcusdt" in Path(f"/proc/{pid}/cmdline").read_bytes():
                                worker = pid
                        except OSError:
                            pass
                    time.sleep(0.05)
                for pid in (worker, fs.pid, consumer.pid):
                    if pid:
                        prioritise(pid, "fifo" if chrt == "all" else "nice")
            before = load1()
            out = consumer.stdout.readline()
            pairs = json.loads(out) if out else []
            if os.environ.get("LATENCY_DUMP"):
                Path(os.environ["LATENCY_DUMP"]).write_text(json.dumps(pairs))
            samples = sorted(got - sent for sent, got in pairs)
            after = load1()
    finally:
        for p in reversed(procs):
            stop(p)
    return {"n": len(samples), "p50": pct(samples, 0.5), "p99": pct(samples, 0.99),
            "p999": pct(samples, 0.999), "max": samples[-1] / 1e6 if samples else float("nan"),
            "load": (before + after) / 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", type=Path, help="feedsup checkout (default: this one)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--case", action="append", choices=sorted(CASES))
    ap.add_argument("--chrt", choices=("exchange", "exchange-idle", "nice", "all", "launch"),
                    help="SCHED_FIFO for the exchange (kblast); with nice -15 or SCHED_FIFO for the BTCUSDT worker,"
                         " parent and consumer; or with feedsup and the consumer started under chrt")
    ap.add_argument("--pub", action="append", choices=("ipc", "tcp"),
                    help="the consumer on the ipc PUB, or on a tcp:// PUB through the relay process; "
                         "repeat to interleave both (default: ipc)")
    ap.add_argument("--bulk-nice", action="append", type=int, metavar="N",
                    help="[[stream]] nice = N for the blasting ETHUSDT stream (5k+blast); repeat to interleave, "
                         "e.g. --bulk-nice 0 --bulk-nice 19 (the trees need the nice key)")
    ap.add_argument("--apart", action="append", choices=("together", "plain", "nice", "idle"),
                    help="5k+blast: the blasting stream in the measured parent (together, default), or in a "
                         "second feedsup parent of its own started as is (plain), under nice -n 19, or under "
                         "chrt -i 0 (SCHED_IDLE; neither needs privileges); repeat to interleave")
    ap.add_argument("--pin", action="store_true",
                    help="measured feedsup and consumer on CPU 0, the exchange and a --apart parent on CPU 1 "
                         "(taskset; no privileges needed)")
    args = ap.parse_args()
    aparts = args.apart or ["together"]
    trees = [t.resolve() for t in args.tree or [REPO]]
    pubs = args.pub or ["ipc"]
    nices = args.bulk_nice or [0]
    cases = args.case or list(CASES)
    results: dict[tuple[str, str], list[dict]] = {}
    print(f"{'case':9} {'tree':28} {'n':>6} {'p50':>6} {'p99':>6} {'p99.9':>6} {'max':>6} {'load1':>5}  (ms)")
    for case in cases:
        rate, blast = CASES[case]
        for _ in range(args.runs):
            for tree, pub, nice, apart in ((t, p, n, a) for t in trees for p in pubs for n in nices for a in aparts):
                r = one_run(tree, rate, blast, args.seconds, args.chrt, pub, nice,
                            None if apart == "together" else apart, args.pin)
                label = (f"{pub} {f'nice{nice} ' if len(nices) > 1 else ''}"
                         f"{apart + ' ' if len(aparts) > 1 else ''}{str(tree)[-16:]}")
                results.setdefault((case, label), []).append(r)
                print(f"{case:9} {label[-28:]:28} {r['n']:>6} {r['p50']:>6.3f} {r['p99']:>6.3f}"
                      f" {r['p999']:>6.3f} {r['max']:>6.2f} {r['load']:>5.2f}", flush=True)
    print("\nmedian of runs [min-max]")
    for (case, tree), rs in results.items():
        cols = []
        for key in ("p50", "p99", "p999"):
            vals = [r[key] for r in rs]
            cols.append(f"{key} {statistics.median(vals):.3f} [{min(vals):.3f}-{max(vals):.3f}]")
        loads = [r["load"] for r in rs]
        print(f"{case:9} {tree[-28:]:28} " + "  ".join(cols) + f"  load {min(loads):.1f}-{max(loads):.1f}")


if __name__ == "__main__":
    main()
