"""What the parent hands a worker: everything it needs, and no secrets.

The spec travels as JSON on the worker's command line. Account workers read
their secrets from the environment or a key file themselves; the spec only
names where they are.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from feedsup.config_model import Connection, Endpoint, Stream
from feedsup.ipc.frames import PROTOCOL_VERSION


@dataclass(frozen=True)
class WorkerSpec:
    stream: Stream
    endpoint: Endpoint
    uplink: str                 # ZeroMQ endpoint of the parent's PULL socket
    parent_pid: int
    instance: int
    # Last delivered exchange id per topic; backfill resumes after it.
    resume: dict[str, int] = field(default_factory=dict)
    log_format: str = "logfmt"
    # The parent's private run directory: state shared by all workers of one
    # parent lives here (for example the REST weight budget).
    rundir: str = ""
    # The parent's worker protocol; a worker of another version refuses to start.
    protocol: int = PROTOCOL_VERSION
    # Where the REST weight budget lives: a directory that outlives the
    # parent, so a 418 ban survives a parent restart ("" = rundir).
    restdir: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        raw = json.loads(text)
        s = raw["stream"]
        stream = Stream(
            **{
                **s,
                "symbols": tuple(s["symbols"]),
                "intervals": tuple(s["intervals"]),
                "connection": Connection(**s["connection"]),
            }
        )
        return cls(
            stream=stream,
            endpoint=Endpoint(**raw["endpoint"]),
            uplink=raw["uplink"],
            parent_pid=raw["parent_pid"],
            instance=raw["instance"],
            resume={k: int(v) for k, v in raw.get("resume", {}).items()},
            log_format=raw.get("log_format", "logfmt"),
            rundir=raw.get("rundir", ""),
            protocol=raw.get("protocol", 0),
            restdir=raw.get("restdir", ""),
        )
