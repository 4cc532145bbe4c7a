"""Process helpers: a tied command dies with its starter, even on SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import pytest

from feedsup.procs import WaitTimeout, alive, child_pids, read_line, wait_for

STARTER = """
import subprocess, sys, time
from feedsup.procs import tied
child = subprocess.Popen(tied(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_tied_command_dies_when_its_starter_is_killed():
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(read_line(starter, 15))
        wait_for(lambda: child in child_pids(starter.pid), 5, "the tied child to run")
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(5)
        wait_for(lambda: not alive(child), 2, "the tied child to die with its starter")
    finally:
        for pid in (starter.pid, child):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        starter.wait()


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


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_read_line_returns_a_line_written_in_pieces():
    proc = _child("import sys, time; sys.stdout.write('{\"a\"'); sys.stdout.flush(); time.sleep(0.2);"
                  "print(': 1}', flush=True); print('next', flush=True); time.sleep(30)")
    try:
        assert read_line(proc, 10) == '{"a": 1}\n'
        assert read_line(proc, 10) == "next\n", "nothing past the first newline was taken"
    finally:
        proc.kill()
        proc.wait()


def test_read_line_gives_up_on_a_silent_child():
    proc = _child("import time; time.sleep(30)")
    try:
        t0 = time.monotonic()
        with pytest.raises(WaitTimeout):
            read_line(proc, 0.3)
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.wait()


def test_read_line_of_a_child_that_exits_without_a_newline():
    proc = _child("import sys; sys.stdout.write('partial')")
    try:
        assert read_line(proc, 10) == "partial"
        assert read_line(proc, 10) == ""
    finally:
        proc.wait()
