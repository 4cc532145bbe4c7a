"""Process helpers: a tied command dies with its starter, even on SIGKILL."""

import os
import signal
import subprocess
import sys

from feedsup.procs import WaitTimeout, alive, child_pids, wait_for

STARTER = """
import subprocess, sys, time
from feedsup.procs import tied
child = subprocess.Popen(tied(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_tied_command_dies_when_its_starter_is_killed():
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    child = int(starter.stdout.readline())
    try:
        wait_for(lambda: child in child_pids(starter.pid), 5, "the tied child to run")
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(5)
        wait_for(lambda: not alive(child), 2, "the tied child to die with its starter")
    finally:
        for pid in (starter.pid, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_tied_command_keeps_its_pid_and_exit_code():
    from feedsup.procs import tied
    proc = subprocess.Popen(tied([sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(3)"]),
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=10)
    assert int(out) == proc.pid, "the shim execs: signals sent to proc.pid reach the command"
    assert proc.returncode == 3


def test_wait_for_returns_the_value_or_times_out():
    assert wait_for(lambda: 42, 1) == 42
    try:
        wait_for(lambda: None, 0.05, "nothing")
    except WaitTimeout as exc:
        assert "nothing" in str(exc)
    else:
        raise AssertionError("wait_for should have timed out")
