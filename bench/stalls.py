"""What the latency tail is made of: one ``bench/latency.py`` run under
``perf sched record``, each stall of the measured path explained by what
the CPUs ran meanwhile.

    python bench/stalls.py [--threshold 1.0] [--show 2] -- --case 5k+blast --bulk-nice 19

Everything after ``--`` goes to ``bench/latency.py`` (one run is forced).
Needs ``perf`` with the sched tracepoints (root, or perf_event_paranoid
low enough). While the run lasts, the threads of every process are read
from /proc: role (exchange, parent, bulk parent, worker of BTCUSDT or
ETHUSDT, consumer), scheduling policy and nice value.

Prints the run's percentiles; how many samples took at least
``--threshold`` ms, grouped into stall windows; in how many windows a thread
of the measured path (the BTCUSDT worker, its parent, the consumer) was
runnable, not running, for 0.3 ms or more, and what ran on the CPUs
meanwhile, by role and policy; the share of the windows' CPU time spent in
softirq (the kernel's network work among it); the CPU time inside the
windows by role; and
the first ``--show`` windows switch by switch. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MEASURED = ("w-BTC", "parent", "consumer")
RUNNABLE_MS = 0.3
POLICIES = {0: "normal", 3: "batch", 5: "idle", 1: "fifo", 2: "rr"}
SWITCH = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)")


def role_of(args: str) -> str:
    if "kblast" in args:
        return "exchange"
    if "feedsup.workers" in args:
        return "w-BTC" if "kbtcusdt" in args else "w-ETH" if "kethusdt" in args else "worker"
    if "feedsup.cli run" in args:
        return "bulk-parent" if "/bulk/" in args else "parent"
    if "feedsup.ipc.client import Subscriber" in args:
        return "consumer"
    if "feedsup.sim" in args:
        return "sim"
    return ""


def sample_threads(roles: dict[int, str], stop: threading.Event) -> None:
    """tid -> "role:thread policy/nice", from /proc, until ``stop``."""
    while not stop.wait(0.5):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                role = role_of(args)
                if not role:
                    continue
                for tid in os.listdir(f"/proc/{pid}/task"):
                    policy = os.sched_getscheduler(int(tid))
                    nice = os.getpriority(os.PRIO_PROCESS, int(tid))
                    comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                    label = POLICIES.get(policy, str(policy)) + (f" nice {nice}" if nice else "")
                    roles[int(tid)] = f"{role}:{comm} ({label})"
            except (OSError, ValueError):
                continue


def record(latency_args: list[str], tmp: Path) -> tuple[list, list[str], dict[int, str]]:
    data, dump = tmp / "perf.data", tmp / "latency.json"
    perf = subprocess.Popen(["perf", "sched", "record", "-k", "mono", "-a", "-e", "irq:softirq_entry",
                             "-e", "irq:softirq_exit", "-o", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    roles: dict[int, str] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_threads, args=(roles, stop), daemon=True)
    sampler.start()
    try:
        time.sleep(0.5)          # perf is recording (no condition to wait on)
        out = subprocess.run([sys.executable, str(BENCH / "latency.py"), *latency_args, "--runs", "1"],
                             env={**os.environ, "LATENCY_DUMP": str(dump)}, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:])
    finally:
        stop.set()
        perf.send_signal(2)
        perf.wait()
    hist = subprocess.run(["perf", "sched", "timehist", "--state", "-i", str(data)],
                          capture_output=True, text=True).stdout.splitlines()
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "cpu,time,event"],
                            capture_output=True, text=True).stdout.splitlines()
    return json.loads(dump.read_text()), hist, roles, softirqs(script)


def softirqs(script: list[str]) -> list[tuple[int, float, float]]:
    """(cpu, start s, end s) of every softirq run, from perf script lines."""
    out, open_at = [], {}
    for line in script:
        m = re.match(r"\s*\[(\d+)\]\s+([\d.]+):\s+irq:softirq_(entry|exit)", line)
        if not m:
            continue
        cpu, t = int(m.group(1)), float(m.group(2))
        if m.group(3) == "entry":
            open_at[cpu] = t
        elif cpu in open_at:
            out.append((cpu, open_at.pop(cpu), t))
    return out


def switches(hist: list[str], roles: dict[int, str]) -> list[tuple]:
    """(end s, cpu, who, run ms, runnable-before ms, state at switch-out), in time order."""
    rows, last_state = [], {}
    for line in hist:
        m = SWITCH.match(line)
        if not m:
            continue
        t, cpu, name, tid, _, wait, delay, run, state = m.groups()
        tid = int(tid)
        waited = float(wait) + float(delay) if last_state.get(tid) == "R" else float(delay)
        last_state[tid] = state
        rows.append((float(t), int(cpu), roles.get(tid, name.strip()), float(run), waited, state))
    rows.sort()
    return rows


def stall_windows(pairs: list, threshold_ms: float) -> list[tuple[float, float, float]]:
    offset = time.time_ns() - time.monotonic_ns()     # wall -> monotonic, as perf -k mono
    out: list[tuple[float, float, float]] = []
    for sent, got in pairs:
        ms = (got - sent) / 1e6
        if ms < threshold_ms:
            continue
        a, b = (sent - offset) / 1e9, (got - offset) / 1e9
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]), max(ms, out[-1][2]))
        else:
            out.append((a, b, ms))
    return out


def explain(pairs: list, rows: list[tuple], soft: list[tuple[int, float, float]], threshold_ms: float,
            show: int) -> None:
    windows = stall_windows(pairs, threshold_ms)
    slow = sum(1 for sent, got in pairs if (got - sent) / 1e6 >= threshold_ms)
    print(f"{len(pairs)} samples, {slow} of them >= {threshold_ms:g} ms, in {len(windows)} stall windows")
    starved, meanwhile, inside = 0, collections.Counter(), collections.Counter()
    for a, b, _ in windows:
        hit = False
        for t, cpu, who, run, waited, _ in rows:
            start = t - run / 1e3
            if start > b or t < a - 0.01:
                continue
            inside[who.split(" (")[0]] += max(0.0, min(t, b) - max(start, a))
            if waited >= RUNNABLE_MS and who.startswith(MEASURED) and start >= a:
                hit = True
                lo = start - waited / 1e3
                for t2, _, who2, run2, _, _ in rows:
                    s2 = t2 - run2 / 1e3
                    if t2 > lo and s2 < start and who2 != who:
                        meanwhile[who2] += min(t2, start) - max(s2, lo)
        starved += hit
    print(f"windows where a measured thread was runnable, not running, >= {RUNNABLE_MS} ms: {starved}")
    total = sum(meanwhile.values()) or 1
    print("  what the CPUs ran while it waited:")
    for who, s in meanwhile.most_common(8):
        print(f"    {who:55s} {s / total * 100:5.1f} %")
    span = sum(b - a for a, b, _ in windows) * (os.cpu_count() or 1) or 1      # every CPU's time
    in_soft = sum(max(0.0, min(e, b) - max(s, a)) for a, b, _ in windows for _, s, e in soft)
    print(f"softirq time inside the stall windows: {in_soft / span * 100:.1f} % of the CPUs' time")
    total = sum(inside.values()) or 1
    print("CPU time inside the stall windows, by thread:")
    for who, s in inside.most_common(8):
        print(f"    {who:55s} {s / total * 100:5.1f} %")
    for a, b, ms in windows[:show]:
        print(f"--- stall of {ms:.2f} ms")
        for t, cpu, who, run, waited, state in rows:
            if a - 0.0005 <= t and t - run / 1e3 <= b:
                print(f"  {(t - a) * 1e3:8.3f} ms cpu{cpu} {who:50s} ran {run:6.3f} after {waited:6.3f} "
                      f"runnable, then {state}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=1.0, help="ms: a sample this slow is a stall")
    ap.add_argument("--show", type=int, default=2, help="stall windows printed switch by switch")
    ap.add_argument("latency_args", nargs=argparse.REMAINDER, help="-- then bench/latency.py's options")
    args = ap.parse_args()
    passed = args.latency_args[1:] if args.latency_args[:1] == ["--"] else args.latency_args
    with tempfile.TemporaryDirectory(prefix="feedsup-stalls-") as tmp:
        pairs, hist, roles, soft = record(passed, Path(tmp))
    explain(pairs, switches(hist, roles), soft, args.threshold, args.show)


if __name__ == "__main__":
    main()
