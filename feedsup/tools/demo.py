"""The demo: simulator + feedsup under supervisord + a live view + one fault.

    python -m feedsup.tools.demo [--short]        (bin/demo installs first)

It starts ``feedsup sim``, then real ``supervisord`` running ``feedsup run``
with ``conf/supervisord.conf`` (copied into a temporary directory with its
own socket, log and config paths), shows the ``feedsup status`` table and the
latest frames of a few topics, kills a worker (and, in the long run, drops
every connection through the simulator's fault API), and shows the restart
and whether the data that followed is complete. It ends by itself, or on
Ctrl-C, and stops every process it started.
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedsup.procs import WaitTimeout, alive, read_line, tied, wait_for

REPO = Path(__file__).resolve().parents[2]   # feedsup/tools/demo.py -> the checkout
SUPERVISORD_TEMPLATE = REPO / "conf" / "supervisord.conf"
PROGRAM = "program:feedsup"

PRICE_TOPICS = ("aggTrade.BTCUSDT", "aggTrade.ETHUSDT")
KLINE_TOPIC = "kline.BTCUSDT.1s"
SHOWN_TOPICS = (*PRICE_TOPICS, KLINE_TOPIC, "bookTicker.BTCUSDT")
KLINE_MS = 1_000
# Real time (speed 1, clock now), so exchange lag shows what it would live;
# 1s klines so that a closed kline comes every second.
SIM_ARGS = ("--speed", "1", "--trade-rate", "20", "--symbols", "BTCUSDT,ETHUSDT")


# -- supervisord config ------------------------------------------------------------

def supervisord_conf(rundir: Path, feedsup_config: Path, python: str = sys.executable,
                     template: Path = SUPERVISORD_TEMPLATE) -> str:
    """``conf/supervisord.conf`` with its paths moved into ``rundir``.

    Every supervision setting of ``[program:feedsup]`` (startsecs, exitcodes,
    stop handling...) is kept as shipped; only where files live and how
    ``feedsup`` is started (this interpreter, this checkout) change.
    """
    conf = configparser.RawConfigParser()  # raw: %(here)s is supervisord's to expand
    conf.read(template)
    sock = rundir / "supervisor.sock"
    conf["unix_http_server"]["file"] = str(sock)
    conf["supervisorctl"]["serverurl"] = f"unix://{sock}"
    conf["supervisord"].update(logfile=str(rundir / "supervisord.log"),
                               pidfile=str(rundir / "supervisord.pid"), childlogdir=str(rundir))
    program = conf[PROGRAM]
    program["command"] = shlex.join([python, "-m", "feedsup.cli", "run", "-c", str(feedsup_config)])
    program["directory"] = str(REPO)
    program["environment"] = f'PYTHONPATH="{REPO}"'
    program["stdout_logfile"] = str(rundir / "feedsup.log")
    out = io.StringIO()
    conf.write(out)
    return out.getvalue()


def find_supervisord() -> str:
    """supervisord from this interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / "supervisord"
    if beside.exists():
        return str(beside)
    found = shutil.which("supervisord")
    if not found:
        raise RuntimeError("supervisord not found: pip install supervisor")
    return found


# -- feedsup config ---------------------------------------------------------------

def feedsup_toml(rundir: Path, urls: dict[str, str]) -> str:
    """A feedsup config for the simulator: three streams, one per kind of data."""
    ws, rest = json.dumps(urls["ws_url"]), json.dumps(urls["rest_url"])
    return f"""\
[feedsup]
pub = "ipc://{rundir}/pub"
control = "ipc://{rundir}/ctl"

[binance.spot]
ws_url = {ws}
rest_url = {rest}
ws_api_url = {json.dumps(urls["ws_api_url"])}

[binance.usdm]
ws_url = {ws}
rest_url = {rest}

[connection]
ping_interval = 5
ping_timeout = 3
stale_after = 5

[restart]
stop_timeout = 2

[[stream]]
name = "price"
market = "spot"
channel = "aggTrade"
symbols = ["BTCUSDT", "ETHUSDT"]

[[stream]]
name = "kline"
market = "spot"
channel = "kline"
symbols = ["BTCUSDT"]
intervals = ["1s"]

[[stream]]
name = "book"
market = "spot"
channel = "bookTicker"
symbols = ["BTCUSDT"]
"""


# -- continuity (pure) ----------------------------------------------------------------

def id_holes(ids: list[int]) -> list[tuple[int, int]]:
    """Missing ranges ``(first, last)`` in a list of exchange ids."""
    unique = sorted(set(ids))
    return [(a + 1, b - 1) for a, b in zip(unique, unique[1:]) if b - a > 1]


def kline_holes(open_times: list[int], interval_ms: int = KLINE_MS) -> list[tuple[int, int]]:
    """Closed klines missing between the first and last seen (open times)."""
    unique = sorted(set(open_times))
    return [(a + interval_ms, b - interval_ms) for a, b in zip(unique, unique[1:]) if b - a > interval_ms]


def duplicates(ids: list[int]) -> int:
    return len(ids) - len(set(ids))


# -- processes ----------------------------------------------------------------------

class Children:
    """Long-running children, each in its own process group, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        # tied: if the demo dies, even by SIGKILL, its children get SIGTERM.
        proc = subprocess.Popen(tied(argv), cwd=REPO, start_new_session=True,
                                stdin=subprocess.DEVNULL, **kwargs)
        self.procs.append((name, proc))
        return proc

    def stop_all(self, timeout: float = 15.0) -> None:
        # Reverse order: supervisord (and feedsup under it) before the simulator.
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"  {name} did not stop within {timeout:g} s: SIGKILL")
            _signal_group(proc.pid, signal.SIGKILL)  # stragglers in its group, if any
            proc.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def read_first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The simulator's first stdout line (its URLs), within ``timeout``."""
    try:
        line = read_line(proc, timeout)
    except WaitTimeout:
        raise RuntimeError(f"the simulator printed no whole line within {timeout:g} s") from None
    if not line:
        raise RuntimeError(f"the simulator exited (code {proc.wait()})")
    return line


# -- live view ------------------------------------------------------------------------

class Tap:
    """A consumer in a thread: keeps what the demo shows and checks."""

    def __init__(self, endpoint: str) -> None:
        from feedsup.ipc.client import Subscriber

        self.sub = Subscriber(endpoint, ("",))
        self.lock = threading.Lock()
        self.count: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.agg_ids: dict[str, list[int]] = {t: [] for t in PRICE_TOPICS}
        self.closed_klines: list[int] = []
        self.backfilled = 0
        self.gap_notices = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-tap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.sub.recv(timeout=0.1)
                if frame is not None:
                    self._keep(frame)
        finally:
            self.sub.close()

    def _keep(self, frame: dict[str, Any]) -> None:
        topic, data = frame["topic"], frame.get("data")
        with self.lock:
            self.count[topic] = self.count.get(topic, 0) + 1
            self.last[topic] = frame
            self.backfilled += bool(frame.get("backfill"))
            self.gap_notices += bool(frame.get("gap"))
            if not isinstance(data, dict):
                return
            if topic in self.agg_ids:
                self.agg_ids[topic].append(data["agg_id"])
            elif topic == KLINE_TOPIC and data.get("closed"):
                self.closed_klines.append(data["open_time"])

    def total(self, prefix: str = "") -> int:
        with self.lock:
            return sum(n for t, n in self.count.items() if t.startswith(prefix))

    def seq_gaps(self) -> list[Any]:
        return [g for g in self.sub.gaps if not g.restart]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def say(text: str = "") -> None:
    print(text, flush=True)


def banner(text: str) -> None:
    say(f"\n== {text} " + "=" * max(0, 66 - len(text)))


# -- the demo -----------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    warmup: float            # live view before the first fault
    faults: tuple[str, ...]  # "kill" (SIGKILL the price worker), "drop" (sim drops every connection)
    after: float             # live view after each recovery
    refresh: float           # live view period


SHORT = Plan(warmup=3.0, faults=("kill",), after=3.0, refresh=1.0)
FULL = Plan(warmup=10.0, faults=("kill", "drop"), after=12.0, refresh=2.0)


class Demo:
    def __init__(self, plan: Plan, rundir: Path) -> None:
        self.plan = plan
        self.rundir = rundir
        self.children = Children()
        self.python = sys.executable
        self.config = rundir / "feedsup.toml"
        self.sv_conf = rundir / "supervisord.conf"
        self.control = f"ipc://{rundir}/ctl"
        self.urls: dict[str, str] = {}
        self.tap: Tap | None = None
        self.problems: list[str] = []
        self.seen_pids: set[int] = set()   # feedsup's parent and workers, for the final check

    # -- setup --------------------------------------------------------------------

    def start(self) -> None:
        banner("starting")
        argv = [self.python, "-m", "feedsup.cli", "sim", *SIM_ARGS, "--start-ms", str(time.time_ns() // 1_000_000)]
        sim = self.children.start("simulator", argv, stdout=subprocess.PIPE, text=True)
        self.urls = json.loads(read_first_line(sim, 20))
        say(f"simulator     {self.urls['ws_url']}  (fault API: {self.urls['control_url']})")
        self.config.write_text(feedsup_toml(self.rundir, self.urls))
        self.sv_conf.write_text(supervisord_conf(self.rundir, self.config, self.python))
        self.children.start("supervisord", [find_supervisord(), "-n", "-c", str(self.sv_conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        say(f"supervisord   -c {self.sv_conf}")
        self.tap = Tap(f"ipc://{self.rundir}/pub")
        status = wait_for(self._all_running, 30, "every stream RUNNING")
        say(f"feedsup       pid {status['pid']}, {len(status['streams'])} streams RUNNING, "
            f"log {self.rundir / 'feedsup.log'}")
        wait_for(lambda: self.tap.total("aggTrade.") and self.tap.total("kline."), 20, "first frames")
        say("\nIn another terminal:")
        say(f"  feedsup status -c {self.config} --watch")
        say(f"  feedsup tail -c {self.config} kline.BTCUSDT")
        say(f"  supervisorctl -c {self.sv_conf} status")

    def status(self) -> dict[str, Any] | None:
        from feedsup.ipc.client import ControlError, request

        try:
            status = request(self.control, "status", timeout=2)
        except ControlError:
            return None
        self.seen_pids |= {status["pid"], *(s["pid"] for s in status["streams"] if s.get("pid"))}
        return status

    def _all_running(self) -> dict[str, Any] | None:
        status = self.status()
        if status and all(s["state"] == "RUNNING" for s in status["streams"]):
            return status
        return None

    def stream(self, name: str) -> dict[str, Any]:
        status = self.status() or {"streams": []}
        return next((s for s in status["streams"] if s["name"] == name), {})

    # -- live view -----------------------------------------------------------------

    def watch(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.show()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self.plan.refresh, left))  # display refresh period

    def show(self) -> None:
        from feedsup.cli import format_frame

        banner(f"feedsup status  ({time.strftime('%H:%M:%S')})")
        table = subprocess.run([self.python, "-m", "feedsup.cli", "status", "-c", str(self.config)],
                               cwd=REPO, capture_output=True, text=True, timeout=20)
        say((table.stdout or table.stderr).rstrip())
        say("-- tail (latest frame per topic, as `feedsup tail` prints it)")
        with self.tap.lock:
            last = {t: self.tap.last.get(t) for t in SHOWN_TOPICS}
            counts = {t: self.tap.count.get(t, 0) for t in SHOWN_TOPICS}
        for topic in SHOWN_TOPICS:
            frame = last[topic]
            text = format_frame(frame) if frame else f"{topic} (nothing yet)"
            say(f"  {counts[topic]:>6} frames | {_shorten(text, 110)}")

    # -- faults --------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        # "kill" hits the price worker; "drop" every connection, so every stream.
        before = {s["name"]: s for s in (self.status() or {"streams": []})["streams"]
                  if kind == "drop" or s["name"] == "price"}
        banner(f"FAULT: {FAULT_TEXT[kind]}")
        t0 = time.monotonic()
        if kind == "kill":
            os.kill(before["price"]["pid"], signal.SIGKILL)
            say(f"fault injected: SIGKILL worker 'price' pid {before['price']['pid']}")
        else:
            body = json.dumps({"kind": "drop", "target": {}}).encode()
            req = urllib.request.Request(self.urls["control_url"] + "/faults", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as reply:
                fault = json.loads(reply.read())
            say(f"fault injected: the simulator dropped {len(fault.get('applied_to') or [])} connections "
                f"(POST {self.urls['control_url']}/faults {{\"kind\": \"drop\"}})")
        for name, old in before.items():
            row = wait_for(lambda: self._restarted(name, old["pid"], old["restarts"]), 30,
                           f"the {name} worker to be replaced")
            say(f"restart: stream '{name}' pid {old['pid']} -> {row['pid']} in {time.monotonic() - t0:.2f} s, "
                f"restarts {row['restarts']}, reason: {row.get('last_reason')}")
        base = self.tap.total("aggTrade.")
        wait_for(lambda: self.tap.total("aggTrade.") > base, 20, "aggTrade frames after the restart")
        say(f"data resumed: aggTrade frames flowing again {time.monotonic() - t0:.2f} s after the fault")

    def _restarted(self, name: str, old_pid: int, restarts: int) -> dict[str, Any] | None:
        row = self.stream(name)
        if row.get("state") == "RUNNING" and row.get("pid") not in (None, old_pid) and row["restarts"] > restarts:
            return row
        return None

    # -- verdict -------------------------------------------------------------------

    def verdict(self) -> None:
        banner("recovered data")
        tap = self.tap
        with tap.lock:
            agg = {t: list(ids) for t, ids in tap.agg_ids.items()}
            klines = list(tap.closed_klines)
            backfilled, notices = tap.backfilled, tap.gap_notices
        gaps = tap.seq_gaps()
        say(f"seq gaps at this consumer: {len(gaps)}" + ("" if not gaps else f"  {gaps[:3]}"))
        if gaps:
            self.problems.append("seq gaps")
        for topic, ids in agg.items():
            holes, dups = id_holes(ids), duplicates(ids)
            missing = sum(b - a + 1 for a, b in holes)
            verdict = "consecutive" if not holes else f"{missing} ids missing in {len(holes)} holes {holes[:3]}"
            say(f"{topic}: {len(ids)} trades, agg_id {min(ids, default='-')}..{max(ids, default='-')}, "
                f"{verdict}, duplicates {dups}")
            if holes or dups:
                self.problems.append(f"{topic} not exactly once")
        holes = kline_holes(klines)
        say(f"{KLINE_TOPIC}: {len(klines)} closed klines, "
            + ("consecutive" if not holes else f"{len(holes)} missing (open times {holes[:3]})")
            + f", duplicates {duplicates(klines)}")
        if holes or duplicates(klines):
            self.problems.append(f"{KLINE_TOPIC} not exactly once")
        say(f"backfilled frames: {backfilled} (missed while a worker was down, fetched over REST)")
        say(f"gap notices: {notices} (bookTicker has no history to fetch: feedsup announces its gaps instead)")

    # -- teardown ------------------------------------------------------------------

    def supervisorctl(self, *args: str) -> None:
        ctl = Path(find_supervisord()).with_name("supervisorctl")
        argv = [str(ctl) if ctl.exists() else "supervisorctl", "-c", str(self.sv_conf), *args]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            say(f"$ supervisorctl {' '.join(args)}\n{(out.stdout + out.stderr).strip()}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            say(f"supervisorctl {' '.join(args)} failed: {exc}")

    def stop(self) -> None:
        banner("stopping")
        if self.sv_conf.exists():
            self.supervisorctl("stop", "feedsup")
        if self.tap is not None:
            self.tap.close()
        self.children.stop_all()
        _kill_helpers()
        names = ", ".join(name for name, _ in self.children.procs)
        left = sorted(pid for pid in self.seen_pids if alive(pid))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if left:
            self.problems.append("processes left running")
            say(f"left running after stop (now killed): {left}")
        else:
            say(f"stopped: {names}, feedsup's parent and its workers "
                f"({len(self.seen_pids)} feedsup processes seen); none left running")

    def run(self) -> None:
        self.start()
        self.watch(self.plan.warmup)
        for kind in self.plan.faults:
            self.inject(kind)
            self.watch(self.plan.after)
        self.verdict()
        banner("supervisord")
        self.supervisorctl("status")


FAULT_TEXT = {
    "kill": "SIGKILL the worker of stream 'price' (a crashed process)",
    "drop": "the simulator drops every connection (TCP reset, a network fault)",
}


def _kill_helpers() -> None:
    """SIGKILL and reap our remaining children: a short-lived ``feedsup status``
    that Ctrl-C caught half started (before Popen returned, nobody owns it)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
                os.waitpid(int(entry), 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feedsup.tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="about 15 s instead of about a minute")
    args = parser.parse_args(argv)
    # SIGTERM ends the demo like Ctrl-C: through the same cleanup. SIGINT is
    # set too: Python leaves it ignored when started so (a background job of
    # a script, nohup), and the demo would then run on and not clean up.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    rundir = Path(tempfile.mkdtemp(prefix="feedsup-demo-"))
    demo = Demo(SHORT if args.short else FULL, rundir)
    code = 0
    try:
        demo.run()
    except KeyboardInterrupt:
        say("\ninterrupted")
        code = 130
    except RuntimeError as exc:
        say(f"\ndemo failed: {exc}")
        code = 1
        log = rundir / "feedsup.log"
        if log.exists():
            say("-- feedsup.log (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()
        shutil.rmtree(rundir, ignore_errors=True)
    if code == 0 and demo.problems:
        code = 1
    say(f"\ndemo finished (exit {code})" + (f"; problems: {', '.join(demo.problems)}" if demo.problems else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
