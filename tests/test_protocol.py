"""The worker <-> parent protocol version: both sides refuse another version."""

import dataclasses
import json

from feedsup.config import Connection, Endpoint, Stream
from feedsup.ipc import frames
from feedsup.workers import __main__ as worker_main
from feedsup.ipc.exits import EX_CONFIG as EXIT_FATAL
from feedsup.ipc.spec import WorkerSpec


def spec(**changes) -> WorkerSpec:
    stream = Stream(name="s", market="spot", channel="aggTrade", symbols=("BTCUSDT",), intervals=(),
                    connection=Connection())
    return dataclasses.replace(WorkerSpec(stream=stream, endpoint=Endpoint("ws://127.0.0.1:1", "http://127.0.0.1:1"),
                                          uplink="ipc:///nonexistent", parent_pid=1, instance=1), **changes)


def test_the_launch_spec_carries_the_protocol_version():
    assert WorkerSpec.from_json(spec().to_json()).protocol == frames.PROTOCOL_VERSION


def test_a_worker_launched_by_a_parent_of_another_version_refuses_to_start(capsys):
    raw = json.loads(spec().to_json())
    raw["protocol"] = frames.PROTOCOL_VERSION + 1
    assert worker_main.main([json.dumps(raw)]) == EXIT_FATAL
    del raw["protocol"]                       # a parent from before versions existed
    assert worker_main.main([json.dumps(raw)]) == EXIT_FATAL
    assert "protocol version mismatch" in capsys.readouterr().err


def test_a_parent_refuses_control_messages_of_another_version():
    ok = {"type": "ready", "instance": 1, "stream": "s", "v": frames.PROTOCOL_VERSION}
    assert frames.check_control(ok) is None
    assert "worker speaks None, parent" in frames.check_control({k: v for k, v in ok.items() if k != "v"})
