"""Worker processes: signalling only what is ours, and what each one's
environment carries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from feedsup.supervisor.spawn import WorkerProcess


def test_no_signal_reaches_a_pid_once_the_worker_is_reaped(monkeypatch):
    """After ``poll()`` has returned a code the pid is free and may already
    belong to another process: signalling it would hit a stranger."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    worker = WorkerProcess("s", 1, proc)
    proc.wait(10)
    assert worker.poll() == 0
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    worker.terminate()
    worker.kill()
    worker.signal(signal.SIGINT)
    assert sent == []


def test_a_live_worker_is_signalled():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = WorkerProcess("s", 1, proc)
    try:
        worker.kill()
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_env_keeps_only_the_streams_own_credential_variables():
    from feedsup.config import Connection, Stream
    from feedsup.supervisor.spawn import credential_env_names, worker_env

    def stream(name: str, channel: str, key: str = "", secret: str = "") -> Stream:
        return Stream(name=name, market="spot", channel=channel, symbols=(), intervals=(),
                      connection=Connection(), api_key_env=key, api_secret_env=secret)

    streams = [stream("a", "account", "A_KEY", "A_SECRET"), stream("b", "account", "B_KEY", "B_SECRET"),
               stream("p", "aggTrade")]
    names = credential_env_names(streams)
    assert names == {"A_KEY", "A_SECRET", "B_KEY", "B_SECRET"}
    environ = {"A_KEY": "ak", "A_SECRET": "as", "B_KEY": "bk", "B_SECRET": "bs", "PATH": "/bin"}
    assert worker_env(streams[0], names, environ) == {"A_KEY": "ak", "A_SECRET": "as", "PATH": "/bin"}
    assert worker_env(streams[1], names, environ) == {"B_KEY": "bk", "B_SECRET": "bs", "PATH": "/bin"}
    assert worker_env(streams[2], names, environ) == {"PATH": "/bin"}
