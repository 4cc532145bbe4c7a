"""Process helpers for workers, the demo, the chaos run, benchmarks and tests
(Linux: /proc and prctl).

``python -m feedsup.procs PID COMMAND...`` runs COMMAND so that it gets
SIGTERM when process PID dies, even by SIGKILL (see ``tied``).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1
EXIT_ORPHAN = 70


class WaitTimeout(RuntimeError):
    pass


def wait_for(predicate: Callable[[], Any], timeout: float, what: str = "condition", poll: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that, or
    raise WaitTimeout after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)  # polling period of a deadline-bounded wait


def read_line(proc: Any, timeout: float, stream: Any = None) -> str:
    """The next line a child writes on ``stream`` (default: its stdout), or
    what it wrote before closing it ("" if nothing); WaitTimeout if no whole
    line came within ``timeout`` seconds.

    A plain ``readline()`` blocks for ever on a child that hangs before
    writing. This reads the pipe's fd a byte at a time, so nothing past the
    newline is taken from a later reader; use it only on a pipe no buffered
    read has touched yet.
    """
    fd = (stream if stream is not None else proc.stdout).fileno()
    deadline = time.monotonic() + timeout
    got = bytearray()
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for a line from pid {proc.pid}"
                              + (f" (so far: {bytes(got)!r})" if got else ""))
        byte = os.read(fd, 1)
        if not byte:
            break
        got += byte
    return got.decode(errors="replace")


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()   # the name in parentheses may hold spaces


def alive(pid: int) -> bool:
    """Running; a zombie is dead, it only waits for its parent to reap it."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def child_pids(pid: int) -> set[int]:
    """Live children of ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stop(proc: Any, grace: float = 10.0) -> None:
    """TERM a child we started, KILL it after ``grace`` seconds, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when our parent dies, then make sure it had
    not already died before we asked (then exit at once)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: callers keep their own checks
        pass
    if os.getppid() != parent_pid:
        os._exit(EXIT_ORPHAN)


def tied(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the command dies with this process.

    The death signal is set in a small shim that then execs the command (it
    survives exec), because ``preexec_fn`` is unsafe in a process with
    threads, as test runners and the chaos driver are.
    """
    return [sys.executable, "-m", "feedsup.procs", str(os.getpid()), *argv]


def _exec_tied(args: list[str]) -> None:
    die_with_parent(int(args[0]))
    os.execvp(args[1], args[1:])


if __name__ == "__main__":
    _exec_tied(sys.argv[1:])
