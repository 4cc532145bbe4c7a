"""Helpers for integration tests: real simulator, real processes, real sockets.

Waits are always a condition with a deadline; every process started here is
killed in ``close()``/fixture teardown even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from feedsup.ipc.client import Subscriber, request
from feedsup.procs import alive, child_pids, tied, wait_for  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parent.parent


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(tmp_path: Path, sim: Any, streams: list[dict[str, Any]], *,
                 connection: dict[str, Any] | None = None, restart: dict[str, Any] | None = None,
                 feedsup: dict[str, Any] | None = None) -> Path:
    top = {"pub": f"ipc://{tmp_path}/pub", "control": f"ipc://{tmp_path}/ctl", **(feedsup or {})}
    lines = ["[feedsup]"] + [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for market in ("spot", "usdm"):
        lines += [f"[binance.{market}]", f"ws_url = {toml_value(sim.ws_url)}",
                  f"rest_url = {toml_value(sim.base_url)}"]
        if market == "spot":
            lines.append(f"ws_api_url = {toml_value(sim.ws_url + '/ws-api/v3')}")
    conn = {"ping_interval": 2, "ping_timeout": 1, "stale_after": 3, "liveness_interval": 0.2,
            "liveness_timeout": 1.5, "connect_timeout": 3, **(connection or {})}
    lines += ["[connection]"] + [f"{k} = {toml_value(v)}" for k, v in conn.items()]
    rst = {"backoff_initial": 0.1, "backoff_max": 1, "stop_timeout": 1, **(restart or {})}
    lines += ["[restart]"] + [f"{k} = {toml_value(v)}" for k, v in rst.items()]
    for stream in streams:
        lines.append("[[stream]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in stream.items()]
    path = tmp_path / "feedsup.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Feedsup:
    """``feedsup run`` as a real subprocess."""

    def __init__(self, config: Path, tmp_path: Path, log_name: str = "feedsup.log") -> None:
        self.config = config
        self.control = f"ipc://{tmp_path}/ctl"
        self.pub = f"ipc://{tmp_path}/pub"
        self.log_path = tmp_path / log_name
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            tied([sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]),
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        self._seen_workers: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        return request(self.control, "status", timeout=2)

    def stream(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["streams"] if s["name"] == name)

    def wait_running(self, name: str, timeout: float = 15) -> dict[str, Any]:
        return wait_for(lambda: self._running(name), timeout, f"stream {name} RUNNING")

    def _running(self, name: str) -> dict[str, Any] | None:
        try:
            row = self.stream(name)
        except Exception:
            return None
        return row if row["state"] == "RUNNING" and row.get("pid") else None

    def workers(self) -> set[int]:
        pids = child_pids(self.pid)
        self._seen_workers |= pids
        return pids

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.workers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._seen_workers:   # never leave an orphan, even on failure
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


class Collector:
    """Subscribes in a background thread and keeps every frame."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)) -> None:
        self.frames: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.sub: Subscriber | None = None
        self._thread = threading.Thread(target=self._run, args=(endpoint, topics), daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self, endpoint: str, topics: tuple[str, ...]) -> None:
        self.sub = Subscriber(endpoint, topics)
        self._ready.set()
        try:
            while not self._stop.is_set():
                frame = self.sub.recv(timeout=0.05)
                if frame is not None:
                    frame["_t"] = time.monotonic()
                    self.frames.append(frame)
        finally:
            self.sub.close()

    def count(self, topic_prefix: str = "") -> int:
        return sum(1 for f in list(self.frames) if f["topic"].startswith(topic_prefix))

    def wait_count(self, n: int, timeout: float, topic_prefix: str = "") -> None:
        wait_for(lambda: self.count(topic_prefix) >= n, timeout, f"{n} frames on {topic_prefix or 'any topic'}")

    def wait_more(self, timeout: float, more: int = 1, topic_prefix: str = "") -> float:
        """Wait for ``more`` new frames; return how long it took."""
        start = time.monotonic()
        base = self.count(topic_prefix)
        self.wait_count(base + more, timeout, topic_prefix)
        return time.monotonic() - start

    @property
    def gaps(self):
        return self.sub.gaps if self.sub else []

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def socket_inodes(pid: int) -> set[str]:
    """The inodes of ``pid``'s sockets (to find them in /proc/net/tcp*);
    empty once the process is gone."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes
