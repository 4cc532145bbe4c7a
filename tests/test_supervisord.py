"""feedsup under real supervisord, with the shipped conf/supervisord.conf.

The config is copied into the test's temporary directory with its own
socket, log and feedsup config paths (``feedsup.tools.demo.supervisord_conf``);
every supervision setting of ``[program:feedsup]`` is kept as shipped.
supervisord is driven through ``supervisorctl`` and its XML-RPC interface on
its unix socket.
"""

from __future__ import annotations

import configparser
import os
import signal
import subprocess
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartWhenExitUnexpected
from supervisor.options import ServerOptions
from supervisor.xmlrpc import SupervisorTransport

from feedsup.config import Connection, Restart
from feedsup.tools.demo import SUPERVISORD_TEMPLATE, find_supervisord, supervisord_conf
from feedsup.ipc.client import request
from feedsup.procs import tied
from harness import Collector, alive, child_pids, wait_for, write_config

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}
PRICE2 = {"name": "price2", "market": "spot", "channel": "aggTrade", "symbols": ["ETHUSDT"]}


def program_config(conf: Path) -> Any:
    """``[program:feedsup]`` as supervisord itself parses it."""
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    (group,) = options.process_group_configs
    (program,) = group.process_configs
    return program


def process_group(pgid: int) -> set[int]:
    """Live processes in process group ``pgid`` (whoever their parent is now)."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.add(int(entry))
    return members


def workers_of(parent: int, n: int) -> set[int] | None:
    pids = child_pids(parent)
    return pids if len(pids) == n else None


def new_pid(sv: "Supervisord", old: int) -> int | None:
    pid = sv.info()["pid"]
    return pid if pid not in (0, old) else None


class Supervisord:
    """``supervisord -n`` on a temporary copy of conf/supervisord.conf."""

    def __init__(self, tmp_path: Path, feedsup_config: Path) -> None:
        self.conf = tmp_path / "supervisord.conf"
        self.conf.write_text(supervisord_conf(tmp_path, feedsup_config))
        self.log_path = tmp_path / "supervisord.log"
        self.program_log = tmp_path / "feedsup.log"
        self.groups: set[int] = set()   # feedsup's process groups, killed at close()
        # tied: even if pytest itself is killed, supervisord (and so feedsup) stops.
        self.proc = subprocess.Popen(tied([find_supervisord(), "-n", "-c", str(self.conf)]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.serverurl = f"unix://{tmp_path}/supervisor.sock"
        try:
            wait_for(self._up, 15, "supervisord's XML-RPC interface")
        except BaseException:
            self.close()   # half started: the fixture never saw this object
            raise

    @property
    def rpc(self) -> xmlrpc.client.ServerProxy:
        # A fresh transport per call: one that saw a failed request cannot send again.
        transport = SupervisorTransport(None, None, self.serverurl)
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)  # unix socket, no TCP

    def _up(self) -> bool:
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault):
            return False

    def info(self) -> dict[str, Any]:
        info = self.rpc.supervisor.getProcessInfo("feedsup")
        if info["pid"]:
            self.groups.add(info["pid"])   # supervisord makes each program a group leader
        return info

    def wait_state(self, state: str, timeout: float) -> dict[str, Any]:
        return wait_for(lambda: self._in_state(state), timeout, f"feedsup {state}")

    def _in_state(self, state: str) -> dict[str, Any] | None:
        info = self.info()
        return info if info["statename"] == state else None

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        ctl = Path(find_supervisord()).with_name("supervisorctl")
        return subprocess.run([str(ctl) if ctl.exists() else "supervisorctl", "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=30)

    def spawns(self) -> int:
        return self.log_path.read_text().count("spawned: 'feedsup'")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # supervisord stops feedsup first
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pgid in self.groups:   # never leave anything behind, even on failure
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def sim(start_sim):
    return start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=4)


@pytest.fixture
def supervised(tmp_path):
    started: list[Supervisord] = []
    collectors: list[Collector] = []

    def start(feedsup_config: Path, subscribe: bool = True) -> tuple[Supervisord, Collector | None]:
        sv = Supervisord(tmp_path, feedsup_config)
        started.append(sv)
        col = Collector(f"ipc://{tmp_path}/pub") if subscribe else None
        if col is not None:
            collectors.append(col)
        return sv, col

    try:
        yield start
    finally:
        for col in collectors:
            col.close()
        for sv in started:
            sv.close()


def test_shipped_config_settings():
    program = program_config(SUPERVISORD_TEMPLATE)
    feedsup_stop_bound = Restart().stop_timeout + 1     # the parent's own TERM -> exit bound
    assert program.stopsignal == signal.SIGTERM
    assert program.stopasgroup and program.killasgroup
    assert program.stopwaitsecs > feedsup_stop_bound
    assert program.autorestart is RestartWhenExitUnexpected
    assert set(program.exitcodes) == {0, 78}           # clean stop, config error: never restarted
    # RUNNING means the workers had time to be READY, and is reached long
    # before feedsup's own start timeout would have restarted a worker.
    assert 1 <= program.startsecs < Connection().connect_timeout + Connection().liveness_timeout
    assert program.startretries >= 1
    assert program.command.split()[:2] == ["feedsup", "run"]


def test_rendered_copy_keeps_every_supervision_setting(tmp_path):
    copy = tmp_path / "supervisord.conf"
    copy.write_text(supervisord_conf(tmp_path, tmp_path / "feedsup.toml"))
    shipped, rendered = configparser.RawConfigParser(), configparser.RawConfigParser()
    shipped.read(SUPERVISORD_TEMPLATE)
    rendered.read(copy)
    moved = {"command", "directory", "environment", "stdout_logfile"}
    assert {k: v for k, v in shipped["program:feedsup"].items() if k not in moved} == \
        {k: v for k, v in rendered["program:feedsup"].items() if k not in moved}
    assert str(tmp_path / "feedsup.toml") in program_config(copy).command


def test_feedsup_starts_data_flows_and_stop_ends_every_process(sim, supervised, tmp_path, timing):
    sv, col = supervised(write_config(tmp_path, sim, [PRICE, PRICE2]))
    col.wait_count(10, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    col.wait_count(10, timeout=20, topic_prefix="aggTrade.ETHUSDT")
    parent = sv.info()["pid"]
    assert request(f"ipc://{tmp_path}/ctl", "status")["pid"] == parent   # supervisord's child serves the data
    workers = wait_for(lambda: workers_of(parent, 2), 10, "two workers")
    assert process_group(parent) == {parent} | workers

    t0 = time.monotonic()
    stop = sv.ctl("stop", "feedsup")
    assert stop.returncode == 0 and "feedsup: stopped" in stop.stdout, stop.stdout + stop.stderr
    timing("supervisorctl stop -> returned, parent and workers gone", time.monotonic() - t0)
    assert not alive(parent) and not any(alive(w) for w in workers)
    assert process_group(parent) == set()
    info = sv.info()
    assert info["statename"] == "STOPPED"
    assert info["exitstatus"] == 0, "feedsup stopped cleanly on TERM, not KILLed after stopwaitsecs"


def test_killed_parent_is_restarted_and_leaves_no_orphans(sim, supervised, tmp_path, timing):
    sv, col = supervised(write_config(tmp_path, sim, [PRICE, PRICE2]))
    startsecs = program_config(sv.conf).startsecs
    info = sv.wait_state("RUNNING", timeout=startsecs + 15)
    parent = info["pid"]
    workers = wait_for(lambda: workers_of(parent, 2), 10, "two workers")
    col.wait_count(5, timeout=20, topic_prefix="aggTrade.BTCUSDT")

    t0 = time.monotonic()
    os.kill(parent, signal.SIGKILL)
    wait_for(lambda: not process_group(parent), 2.0, "the old parent's workers to die with it")
    timing("parent SIGKILL -> old process group empty", time.monotonic() - t0)
    new = wait_for(lambda: new_pid(sv, parent), 15, "a new parent")
    seen = col.count("aggTrade.BTCUSDT")
    col.wait_count(seen + 5, timeout=20, topic_prefix="aggTrade.BTCUSDT")
    timing("parent SIGKILL -> supervisord restarted it, data flows", time.monotonic() - t0)
    assert not (child_pids(new) & workers)
    assert not any(alive(w) for w in workers), "no orphan worker survives its parent"
    assert any(g.restart for g in col.gaps), "consumers see the parent restart as seq starting again"
    log = sv.log_path.read_text()
    assert "exited: feedsup (terminated by SIGKILL; not expected)" in log
    assert sv.spawns() == 2


def test_broken_config_goes_fatal_without_a_restart_storm(supervised, tmp_path, timing):
    config = tmp_path / "feedsup.toml"
    config.write_text('[feedsup]\npub = "ipc:///tmp/x"\nbogus = 1\n')
    sv, _ = supervised(config, subscribe=False)
    program = program_config(sv.conf)
    info = sv.wait_state("FATAL", timeout=program.startretries * (program.startretries + 1) / 2 + 20)
    assert sv.spawns() == program.startretries + 1, "a bounded number of attempts, then FATAL"
    log = sv.log_path.read_text()
    assert log.count("exited: feedsup (exit status 78; not expected)") == program.startretries + 1
    assert "gave up: feedsup entered FATAL state" in log
    assert f"{config}: feedsup.bogus: unknown key" in sv.program_log.read_text()
    assert "FATAL" in sv.ctl("status", "feedsup").stdout
    assert info["pid"] == 0
