"""A TCP connection flood against a parent with a low hard fd limit (issue 10).

    python bench/fdflood.py [--limit 256] [--flooders 3] [--seconds 15]

Starts the simulator and ``feedsup run`` with soft = hard = ``--limit``
descriptors and a ``tcp://`` PUB endpoint, then ``--flooders`` processes open
non-blocking connections to PUB as fast as they can (each keeping at most
900 open) while this script asks for the status over ipc without pause and
SIGKILLs the stream's worker every 4 s (under the restart intensity) (its successor connects over ipc).
Prints whether the parent survived, the connections attempted, the highest
descriptor count sampled in the parent and in the relay (the process that
serves the tcp endpoint, feedsup/supervisor/relay.py), its restarts, and
the closures of the tcp endpoints; exits 1 if the parent died.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feedsup.ipc.client import request  # noqa: E402
from feedsup.procs import stop, tied, wait_for  # noqa: E402
from feedsup.sim import SimOptions, SimServer  # noqa: E402

WITH_LIMIT = ("import os, resource, sys\n"
              "n = int(sys.argv[1])\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
              "os.execvp(sys.argv[2], sys.argv[2:])\n")

FLOOD = r'''
import collections, errno, socket, sys, time
port, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
socks, n = collections.deque(), 0
while time.monotonic() < end:
    s = socket.socket()
    s.setblocking(False)
    if s.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS):
        socks.append(s)
        n += 1
    else:
        s.close()
    while len(socks) > 900:
        socks.popleft().close()
print(n)
'''


def config(tmp: Path, sim: SimServer, port: int) -> Path:
    q = json.dumps
    text = f"""[feedsup]
pub = {q(f"tcp://127.0.0.1:{port}")}
control = {q(f"ipc://{tmp}/ctl")}
[binance.spot]
ws_url = {q(sim.ws_url)}
rest_url = {q(sim.base_url)}
[restart]
backoff_initial = 0.1
backoff_max = 1
[[stream]]
name = "price"
market = "spot"
channel = "aggTrade"
symbols = ["BTCUSDT"]
"""
    path = tmp / "feedsup.toml"
    path.write_text(text)
    return path


def row(control: str) -> dict | None:
    try:
        return request(control, "status", timeout=2)["streams"][0]
    except Exception:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--flooders", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    sim = SimServer(SimOptions(speed=1, symbols=("BTCUSDT",), trade_rate=20)).start()
    with tempfile.TemporaryDirectory(prefix="feedsup-fdflood-") as tmp_name:
        tmp = Path(tmp_name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        control = f"ipc://{tmp}/ctl"
        log = open(tmp / "feedsup.log", "wb")
        argv = [sys.executable, "-c", WITH_LIMIT, str(args.limit),
                sys.executable, "-m", "feedsup.cli", "run", "-c", str(config(tmp, sim, port))]
        proc = subprocess.Popen(tied(argv), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        flooders: list[subprocess.Popen] = []
        try:
            wait_for(lambda: (row(control) or {}).get("state") == "RUNNING", 20, "the stream RUNNING")
            flooders = [subprocess.Popen([sys.executable, "-c", FLOOD, str(port), str(args.seconds)],
                                         stdout=subprocess.PIPE, text=True) for _ in range(args.flooders)]
            relay_pid = (request(control, "status", timeout=2).get("relay") or {}).get("pid")
            peak = relay_peak = kills = answers = 0
            end = time.monotonic() + args.seconds
            next_kill = time.monotonic() + 1
            while time.monotonic() < end and proc.poll() is None:
                try:
                    peak = max(peak, len(os.listdir(f"/proc/{proc.pid}/fd")))
                    if relay_pid:
                        relay_peak = max(relay_peak, len(os.listdir(f"/proc/{relay_pid}/fd")))
                except OSError:
                    pass
                r = row(control)
                answers += r is not None
                if r and time.monotonic() >= next_kill and r["state"] == "RUNNING" and r["pid"]:
                    os.kill(r["pid"], signal.SIGKILL)
                    kills += 1
                    next_kill = time.monotonic() + 4
            attempts = sum(int(f.communicate()[0] or 0) for f in flooders)
            alive = proc.poll() is None
            status = request(control, "status", timeout=2) if alive else {}
            print(f"limit {args.limit}: parent {'alive' if alive else f'DIED (code {proc.returncode})'}; "
                  f"{attempts} connections attempted by {args.flooders} flooders in {args.seconds:g} s; "
                  f"peak {peak} fds sampled in the parent, {relay_peak} in the relay "
                  f"(restarts {(status.get('relay') or {}).get('restarts', '-')}); "
                  f"{kills} workers killed and replaced; {answers} status answers; "
                  f"tcp endpoints closed {status.get('tcp_closures', '-')} times, "
                  f"{status.get('tcp_refused', '-')} attempts refused")
            if not alive:
                print(log.name and (tmp / "feedsup.log").read_text(errors="replace")[-5000:])
            return 0 if alive else 1
        finally:
            for f in flooders:
                f.kill()
                f.wait()
            stop(proc)
            log.close()
            sim.stop()


if __name__ == "__main__":
    sys.exit(main())
