"""The parent never listens on TCP: a relay process does (issue 10).

libzmq aborts the whole process when an ipc accept meets EMFILE. A parent
that also accepted TCP connections could be driven there by a flood: on a
CPU-starved host its I/O thread accepts a burst before the loop can close
the endpoint, and a worker's uplink or a control request accepted over ipc
in that window killed the parent and every stream. With ``tcp://`` PUB or
control, the parent binds private ipc endpoints and a relay process binds
the TCP ones and forwards; the relay itself only connects over ipc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from feedsup.ipc.client import ControlError, Subscriber, request
from feedsup.procs import alive, rss_mb
from harness import Feedsup, socket_inodes, tied, wait_for, write_config
from test_fdguard_e2e import LIMIT, _ok, limited, open_fds, stream_row  # noqa: F401 (fixture)

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}
# How long the parent is held stopped per round: a host starving it of CPU
# while the flood goes on (what made the old design's race reachable).
STARVED_S = 1.0
ROUNDS = 5
HOG = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def _asks(control: str, answers: list[bool], stop: threading.Event) -> None:
    """Control requests over ipc without pause: each is an ipc accept in the parent."""
    while not stop.is_set():
        try:
            request(control, "status", timeout=1)
            answers.append(True)
        except ControlError:
            answers.append(False)


def test_a_flood_while_the_parent_is_starved_cannot_kill_it(limited):
    proc, control, pub, flood = limited
    first = wait_for(lambda: (lambda r: r if r and r["state"] == "RUNNING" and r["pid"] else None)(
        stream_row(control)), 20, "the stream RUNNING")
    pid = first["pid"]
    rss_before = rss_mb(proc.pid)
    stop_asking = threading.Event()
    answers: list[bool] = []
    askers = [threading.Thread(target=_asks, args=(control, answers, stop_asking), daemon=True) for _ in range(2)]
    for t in askers:
        t.start()
    attempted = 0
    try:
        for round in range(ROUNDS):
            # The flood starts while TCP is accepted, and the parent gets no
            # CPU for a while: the kernel queues the connections, and on
            # SIGCONT libzmq's I/O thread accepts them in one burst, before
            # the parent's loop can react.
            wait_for(lambda: proc.poll() is not None or (lambda r: r and not r["tcp_refusing"])(_ok(control)),
                     30, "tcp accepted")
            floods = [flood() for _ in range(3)]
            os.kill(proc.pid, signal.SIGSTOP)
            # Meanwhile a worker dies: its successor connects its uplink over
            # ipc, and control requests queue, all accepted on SIGCONT.
            if round == 0:
                os.kill(pid, signal.SIGKILL)
            stop_asking.wait(STARVED_S)     # the starvation itself, not a synchronisation
            os.kill(proc.pid, signal.SIGCONT)
            wait_for(lambda: proc.poll() is not None or _ok(control), 15, "an answer after the stall")
            assert proc.poll() is None, f"the parent died after stall {round + 1} (fds: {open_fds(proc.pid)})"
            for f in floods:
                f.close()
                attempted += f.opened
        row = wait_for(lambda: proc.poll() is not None or (lambda r: r if r and r["state"] == "RUNNING" and
                                                           r["pid"] not in (None, pid) else None)(
            stream_row(control)), 30, "a new worker RUNNING")
        assert proc.poll() is None, "the parent died under the flood"
        assert row["pid"] != pid
        status = request(control, "status", timeout=2)
        # The parent's descriptors are not what the flood eats.
        assert status["fds"]["open"] < LIMIT // 2, status["fds"]
        assert status["relay"]["state"] == "RUNNING"
        assert rss_mb(proc.pid) - rss_before < 50, "a flood must not grow the parent's memory"
        print(f"{sum(answers)} control answers, {answers.count(False)} timeouts; "
              f"{attempted} connections attempted; relay {status['relay']}")
    finally:
        stop_asking.set()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        for t in askers:
            t.join(5)


def test_a_flood_while_the_parent_loop_waits_for_a_cpu_cannot_kill_it(limited):
    """The old race itself: the parent's main thread (its loop) gets a CPU
    only when nothing else wants one (SCHED_IDLE), its other threads (libzmq's
    I/O thread) run as usual, and a flood arrives. The I/O thread accepted TCP
    connections on its own until none was left, and the next ipc accept (a
    new worker's uplink, a control request) aborted the parent."""
    proc, control, pub, flood = limited
    first = wait_for(lambda: (lambda r: r if r and r["state"] == "RUNNING" and r["pid"] else None)(
        stream_row(control)), 20, "the stream RUNNING")
    stop_asking = threading.Event()
    answers: list[bool] = []
    askers = [threading.Thread(target=_asks, args=(control, answers, stop_asking), daemon=True) for _ in range(2)]
    floods: list = []
    # A host short of CPU: one busy process per core, for the starved span only.
    hogs = [subprocess.Popen(tied([sys.executable, "-c", HOG, str(STARVED_S * 3)]))
            for _ in range(os.cpu_count() or 2)]
    try:
        for t in askers:
            t.start()
        os.sched_setscheduler(proc.pid, os.SCHED_IDLE, os.sched_param(0))    # the main thread only
        floods = [flood() for _ in range(3)]
        os.kill(first["pid"], signal.SIGKILL)   # its successor connects over ipc meanwhile
        stop_asking.wait(STARVED_S * 3)     # the starvation itself, not a synchronisation
        os.sched_setscheduler(proc.pid, os.SCHED_OTHER, os.sched_param(0))
        for f in floods:
            f.close()
        row = wait_for(lambda: proc.poll() is not None or (lambda r: r if r and r["state"] == "RUNNING" and
                                                           r["pid"] not in (None, first["pid"]) else None)(
            stream_row(control)), 30, "a new worker RUNNING")
        assert proc.poll() is None, f"the parent died under the flood (exit {proc.returncode})"
        assert row["pid"] != first["pid"]
        status = request(control, "status", timeout=2)
        assert status["fds"]["open"] < LIMIT // 2, status["fds"]
        print(f"{sum(answers)} control answers; {sum(f.opened for f in floods)} connections attempted; "
              f"relay {status['relay']}")
    finally:
        stop_asking.set()
        for hog in hogs:
            hog.kill()
            hog.wait()
        if proc.poll() is None:
            try:
                os.sched_setscheduler(proc.pid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
        for t in askers:
            t.join(5)


def test_catch_up_live_and_control_over_tcp_go_through_the_relay(start_sim, tmp_path):
    sim = start_sim(speed=1, symbols=("BTCUSDT",), trade_rate=50)
    from test_fdguard_e2e import free_port
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, sim, [PRICE], feedsup={"pub": pub, "control": ctl})
    fs = Feedsup(config, tmp_path)
    fs.control = ctl
    try:
        fs.wait_running("price", 20)
        status = fs.status()                # control over tcp, through the relay
        relay = status["relay"]
        assert relay["state"] == "RUNNING" and relay["pid"] in fs.workers() | {relay["pid"]}
        assert relay["pid"] != fs.pid and alive(relay["pid"])
        # The parent itself listens on no TCP port.
        assert not _tcp_listening(fs.pid), "the parent must not listen on tcp"
        assert _tcp_listening(relay["pid"])
        with Subscriber(pub, ["aggTrade."]) as sub:
            # RUNNING is not yet a first trade: wait for one, so there is a last value to ask for.
            assert sub.recv(timeout=20) is not None, "frames through the relay"
            snapshot = sub.catch_up(ctl, ["aggTrade."], timeout=10)
            assert snapshot, "the last values reached us through the relay"
            last = max(f["seq"] for f in snapshot)
            live = []
            wait_for(lambda: (lambda f: f and live.append(f))(sub.recv(timeout=0.2)) or len(live) >= 20,
                     20, "live frames through the relay")
            # No hole between the snapshot and the live frames.
            seqs = sorted({f["seq"] for f in live if f["seq"] > last})
            assert seqs == list(range(last + 1, last + 1 + len(seqs))), ("a hole after the snapshot", last, seqs[:5])
            assert not sub.gaps
        # A relay killed is restarted; the parent and its streams carry on.
        os.kill(relay["pid"], signal.SIGKILL)
        again = wait_for(lambda: (lambda s: s and s["relay"]["state"] == "RUNNING" and
                                  s["relay"]["pid"] != relay["pid"] and s)(_ok(ctl)), 20, "the relay restarted")
        assert again["relay"]["restarts"] >= 1
        assert again["streams"][0]["state"] == "RUNNING"
        with Subscriber(pub, ["aggTrade."]) as sub:
            assert sub.recv(timeout=10) is not None, "frames again after the relay restart"
        pid = fs.pid
        relay_pid = again["relay"]["pid"]
    finally:
        fs.close()
    wait_for(lambda: not alive(relay_pid), 10, "the relay gone with the parent")
    assert pid


def _tcp_listening(pid: int) -> bool:
    """Does ``pid`` hold a listening TCP socket (state 0A in /proc/net/tcp*)?"""
    inodes = socket_inodes(pid)
    if not inodes:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    return True
    return False


def test_a_group_sigterm_still_relays_every_frame_the_parent_published(start_sim, tmp_path):
    """supervisord's stopasgroup (or a kill of the process group) sends SIGTERM
    to the parent and the relay at once. The parent still publishes while it
    stops (its workers' last records, then its PUB flush): the relay passes
    those on before it exits, so a TCP subscriber gets every seq the parent
    gave out (its "stopped" log line says how many)."""
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=50)
    from test_fdguard_e2e import free_port
    pub = f"tcp://127.0.0.1:{free_port()}"
    price = {**PRICE, "symbols": ["BTCUSDT", "ETHUSDT"]}
    config = write_config(tmp_path, sim, [price], feedsup={"pub": pub})
    fs = Feedsup(config, tmp_path)
    sub = Subscriber(pub, [""])
    last: dict[str, int] = {}
    try:
        fs.wait_running("price", 20)
        relay_pid = fs.status()["relay"]["pid"]

        def take(until_quiet: float) -> None:
            frame = sub.recv(timeout=until_quiet)
            if frame is not None:
                last[frame["topic"]] = frame["seq"]
        wait_for(lambda: take(0.2) or sum(last.values()) >= 200, 20, "frames through the relay")
        # The group's SIGTERM reaches the relay first (the order is the
        # kernel's): it keeps relaying while the parent runs.
        os.kill(relay_pid, signal.SIGTERM)
        more = sum(last.values()) + 100
        wait_for(lambda: take(0.2) or sum(last.values()) >= more, 10, "frames still relayed after its SIGTERM")
        os.kill(fs.pid, signal.SIGTERM)
        assert fs.proc.wait(15) == 0
        wait_for(lambda: not alive(relay_pid), 10, "the relay gone after the parent")
        while (frame := sub.recv(timeout=1.0)) is not None:
            last[frame["topic"]] = frame["seq"]
        stopped = [line for line in fs.log().splitlines() if "event=stopped" in line]
        assert stopped, fs.log()[-2000:]
        published = int(stopped[-1].split("published=", 1)[1].split()[0])
        assert sum(last.values()) == published, (last, stopped[-1])
        assert sub.gaps == [], "no frame lost on the way"
    finally:
        sub.close()
        fs.close()
