"""Process helpers for the demo, the chaos run, benchmarks and tests (Linux /proc)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


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
