"""The README's first command, in short mode: ``bin/demo --short`` without
reinstalling. Checks what a person would read, the exit code, and that no
process the demo started is left behind."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feedsup.procs import read_line, tied
from harness import REPO


def marked(token: str) -> set[int]:
    """Processes whose environment carries ``token``: the demo's whole tree,
    whoever their parent is now (an orphan is reparented, not renamed)."""
    pids = set()
    needle = f"FEEDSUP_DEMO_TEST={token}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    pids.add(int(entry))
            except OSError:
                continue
    return pids


DEMO = [str(REPO / "bin" / "demo"), "--short"]


@pytest.fixture
def demo_env():
    """bin/demo's environment: no reinstall, this interpreter, a marker."""
    token = secrets.token_hex(8)
    try:
        yield {**os.environ, "FEEDSUP_DEMO_SKIP_SETUP": "1", "PYTHON": sys.executable,
               "FEEDSUP_DEMO_TEST": token}, token
    finally:
        for pid in marked(token):   # only after a failure: the tests assert there are none
            os.kill(pid, signal.SIGKILL)


def test_short_demo_shows_data_a_fault_the_restart_and_recovery(demo_env, timing):
    env, token = demo_env
    t0 = time.monotonic()
    out = subprocess.run(DEMO, env=env, capture_output=True, text=True, timeout=90)
    timing("bin/demo --short, start to exit", time.monotonic() - t0)
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    assert "3 streams RUNNING" in text
    # The live view: status table and latest frames of each shown topic.
    assert re.search(r"^STREAM\s+STATE\s+PID", text, re.M)
    for topic in ("aggTrade.BTCUSDT", "aggTrade.ETHUSDT", "kline.BTCUSDT.1s", "bookTicker.BTCUSDT"):
        assert re.search(rf"^\s+[1-9]\d* frames \| {re.escape(topic)} #\d+ symbol=", text, re.M), topic
    # The fault, the restart and the data after it.
    killed = re.search(r"fault injected: SIGKILL worker 'price' pid (\d+)", text)
    restart = re.search(r"restart: stream 'price' pid (\d+) -> (\d+) in [\d.]+ s, restarts 1, "
                        r"reason: killed by SIGKILL", text)
    assert killed and restart and restart[1] == killed[1] != restart[2]
    assert re.search(rf"^price\s+RUNNING\s+{restart[2]}\s+\S+\s+1\s.*killed by SIGKILL$", text, re.M)
    assert "data resumed: aggTrade frames flowing again" in text
    assert "seq gaps at this consumer: 0" in text
    for topic in ("aggTrade.BTCUSDT", "aggTrade.ETHUSDT"):
        assert re.search(rf"^{topic}: \d+ trades, .*, consecutive, duplicates 0$", text, re.M), topic
    assert re.search(r"^kline.BTCUSDT.1s: [1-9]\d* closed klines, consecutive, duplicates 0$", text, re.M)
    # supervisord ran feedsup and stopped it cleanly; nothing is left.
    assert re.search(r"^feedsup\s+RUNNING\s+pid \d+", text, re.M)
    assert "feedsup: stopped" in text and "none left running" in text
    assert text.rstrip().endswith("demo finished (exit 0)")
    assert marked(token) == set()
    rundir = re.search(r"supervisord\s+-c (\S+)/supervisord.conf", text)[1]
    assert not Path(rundir).exists()


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_demo_interrupted_cleans_up(demo_env, inherited):
    """Ctrl-C (SIGINT) mid-demo: every process stops, exit 130. Also when
    started with SIGINT ignored (a background job of a script, nohup): a
    signal the demo is sent on purpose is still its cue to clean up."""
    env, token = demo_env
    # An ignored signal stays ignored across exec: a small shim sets it, then execs.
    shim = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "os.execvp(sys.argv[1], sys.argv[1:])"] if inherited == "ignored" else []
    proc = subprocess.Popen(shim + tied(DEMO), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not lines or not lines[-1].startswith("== feedsup status"):   # the live view is on
            line = read_line(proc, max(0.1, deadline - time.monotonic()))
            assert line, "the demo ended before its live view: " + "".join(lines)
            lines.append(line)
        assert len(marked(token)) >= 7     # demo, simulator, supervisord, feedsup and its 3 workers
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest and "none left running" in rest
    left = marked(token)
    assert left == set(), [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
