"""Starting and signalling worker processes.

Workers are started with ``subprocess`` (fork+exec of a fresh interpreter):
the parent holds a ZeroMQ context with I/O threads, so it must not fork a
Python child that keeps running its memory, and a forkserver child would
outlive a SIGKILLed parent. The worker stays in our process group, so
supervisord's ``stopasgroup``/``killasgroup`` reach it too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from feedsup.workers.spec import WorkerSpec


@dataclass
class WorkerProcess:
    stream: str
    instance: int
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    exit_report: dict | None = None   # the worker's own EXIT message, if it sent one
    exited_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def poll(self) -> int | None:
        return self.proc.poll()


def spawn(spec: WorkerSpec) -> WorkerProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "feedsup.workers", spec.to_json()],
        stdin=subprocess.DEVNULL,
        close_fds=True,
    )
    return WorkerProcess(spec.stream.name, spec.instance, proc)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}"
    return f"exited with code {code}"
