"""The floor under feedsup's added latency on this host: the same process
chain (sender -> PUSH/PULL -> relay -> PUB/SUB -> consumer, ipc://, three
processes, each with its ZeroMQ I/O thread) doing nothing but forwarding a
timestamp, paced like ``kblast.py`` (bursts every 1 ms).

    python bench/latency_floor.py [--rate 5000] [--seconds 4] [--burn N] [--burn-nice K] [--chrt]

``--burn N``: N busy processes beside the chain (``nice 0``, or ``nice K``
with ``--burn-nice K``, as ``[[stream]] nice`` gives a bulk stream's
worker), as a blasting stream's worker and parent would be. ``--chrt``: the chain runs SCHED_FIFO.
Prints p50/p99/p99.9/max in ms. Whatever feedsup does per frame comes on
top of this. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PROG = r"""
import sys, time, struct, zmq, json, gc
role, a, b, rate, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
ctx = zmq.Context()
gc.freeze()
if role == "relay":
    pull = ctx.socket(zmq.PULL); pull.bind(a)
    pub = ctx.socket(zmq.PUB); pub.setsockopt(zmq.SNDHWM, 1000000); pub.bind(b)
    print("ready", flush=True)
    while True:
        m = pull.recv()
        for i in range(0, len(m), 8):
            pub.send(b"t", zmq.SNDMORE); pub.send(m[i:i + 8])
elif role == "send":
    push = ctx.socket(zmq.PUSH); push.connect(a)
    time.sleep(0.5)
    start = time.monotonic(); i = 0; pack = struct.Struct("<q").pack
    while True:
        due = int((time.monotonic() - start) * rate) + 1
        if due > i:
            push.send(b"".join(pack(time.time_ns()) for _ in range(due - i)))
            i = due
        time.sleep(0.001)
else:
    sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.SUBSCRIBE, b"t"); sub.connect(b)
    print("ready", flush=True)
    unpack = struct.Struct("<q").unpack
    sub.recv_multipart()
    end = time.monotonic() + 1
    while time.monotonic() < end:
        sub.recv_multipart()
    out = []; end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sub.poll(1000):
            sub.recv(); out.append(time.time_ns() - unpack(sub.recv())[0])
    print(json.dumps(out), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--burn", type=int, default=0)
    ap.add_argument("--burn-nice", type=int, default=0)
    ap.add_argument("--burn-idle", action="store_true", help="the burners SCHED_IDLE")
    ap.add_argument("--chrt", action="store_true")
    args = ap.parse_args()
    pre = ["chrt", "-f", "10"] if args.chrt else []
    with tempfile.TemporaryDirectory() as tmp:
        a, b = f"ipc://{tmp}/a", f"ipc://{tmp}/b"
        common = [a, b, str(args.rate), str(args.seconds)]
        idle = "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n" if args.burn_idle else ""
        burner = f"import os\nos.nice({args.burn_nice})\n{idle}while True: pass"
        procs = [subprocess.Popen([sys.executable, "-c", burner]) for _ in range(args.burn)]
        try:
            relay = subprocess.Popen(pre + [sys.executable, "-c", PROG, "relay", *common], stdout=subprocess.PIPE,
                                     text=True)
            procs.append(relay)
            relay.stdout.readline()
            cons = subprocess.Popen(pre + [sys.executable, "-c", PROG, "recv", *common], stdout=subprocess.PIPE,
                                    text=True)
            procs.append(cons)
            cons.stdout.readline()
            procs.append(subprocess.Popen(pre + [sys.executable, "-c", PROG, "send", *common]))
            s = sorted(json.loads(cons.stdout.readline()))
        finally:
            for p in procs:
                p.kill()
                p.wait()
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))] / 1e6  # noqa: E731
    print(f"rate {args.rate} burn {args.burn} nice {args.burn_nice} idle {args.burn_idle} chrt {args.chrt}"
          f" load1 {os.getloadavg()[0]:.2f}: n {len(s)}"
          f" p50 {q(0.5):.3f} p99 {q(0.99):.3f} p99.9 {q(0.999):.3f} max {s[-1] / 1e6:.3f} ms")


if __name__ == "__main__":
    main()
