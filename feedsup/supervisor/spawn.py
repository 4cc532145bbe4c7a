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
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from feedsup.config_model import Stream
from feedsup.ipc.spec import WorkerSpec


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
        """Signal the worker unless it has been reaped: once ``poll()`` has
        collected its exit code the pid is free and may belong to another
        process. (``Popen.send_signal`` polls first; until a wait reaps it
        the pid stays ours, even as a zombie.)"""
        if self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def poll(self) -> int | None:
        return self.proc.poll()


def credential_env_names(streams: Iterable[Stream]) -> frozenset[str]:
    """Every environment variable the config names as holding a credential."""
    return frozenset(name for s in streams for name in (s.api_key_env, s.api_secret_env) if name)


def worker_env(stream: Stream, secret_names: Collection[str],
               environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The worker's environment: ours without the credential variables of
    other streams. A market worker gets none; an account worker only its own
    two, so a secret lives only in the process that signs with it."""
    own = {stream.api_key_env, stream.api_secret_env} - {""}
    drop = set(secret_names) - own
    return {k: v for k, v in environ.items() if k not in drop}


def spawn(spec: WorkerSpec, secret_names: Collection[str]) -> WorkerProcess:
    """Start a worker. ``secret_names``: every credential variable of the
    config (``credential_env_names``); the worker's environment keeps only
    its own stream's."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "feedsup.workers", spec.to_json()],
        stdin=subprocess.DEVNULL,
        close_fds=True,
        env=worker_env(spec.stream, secret_names),
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
