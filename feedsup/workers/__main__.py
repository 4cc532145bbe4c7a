"""Worker process entry point: ``python -m feedsup.workers SPEC_JSON``."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import threading

from feedsup import logs
from feedsup.ipc.frames import PROTOCOL_VERSION
from feedsup.procs import die_with_parent
from feedsup.ipc.exits import EX_CONFIG, WORKER_ERROR, WORKER_RETURNED
from feedsup.workers.runtime import ConnectionEnded, Runtime
from feedsup.ipc.spec import WorkerSpec

# One worker kind per stream kind.
KINDS = {"account": "feedsup.workers.account", "depth": "feedsup.workers.depth"}
DEFAULT_KIND = "feedsup.workers.market"


def setup_logging(spec: WorkerSpec) -> None:
    """Log like the parent: a worker's stderr is the parent's, so its lines
    follow ``log_format`` with the same fields and rate limit, tagged with the
    stream and instance. Uncaught errors in any thread and Python warnings go
    through the same handler rather than as bare text."""
    logs.setup(spec.log_format)
    tag = logs.Tag(stream=spec.stream.name, instance=spec.instance)
    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
    logging.captureWarnings(True)
    log = logging.getLogger("feedsup.worker")
    threading.excepthook = lambda args: log.error(
        "thread %s crashed", getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
    sys.excepthook = lambda *exc_info: log.error("worker crashed", exc_info=exc_info)


def main(argv: list[str]) -> int:
    spec = WorkerSpec.from_json(argv[0])
    if spec.protocol != PROTOCOL_VERSION:   # started by a parent of another feedsup version
        print(f"worker={spec.stream.name}#{spec.instance} ERROR protocol version mismatch: parent speaks "
              f"{spec.protocol}, worker {PROTOCOL_VERSION}", file=sys.stderr)
        return EX_CONFIG
    die_with_parent(spec.parent_pid)
    if spec.stream.nice:
        # Before any thread exists (ZeroMQ's, the helpers'): Linux keeps a
        # nice value per thread, and new threads inherit the creator's.
        os.nice(spec.stream.nice)
    setup_logging(spec)
    kind = importlib.import_module(KINDS.get(spec.stream.channel, DEFAULT_KIND))
    rt = Runtime(spec)
    rt.start()
    # Everything allocated so far lives as long as the process. Freezing it
    # keeps full collections from rescanning it: a 3-4 ms pause otherwise,
    # about once a second at a few thousand messages per second.
    gc.freeze()
    try:
        kind.run(rt)
        ended = ConnectionEnded(WORKER_RETURNED)
    except ConnectionEnded as exc:
        ended = exc
    except Exception as exc:  # a bug: report it rather than vanish
        logging.getLogger("feedsup.worker").exception("worker crashed")
        ended = ConnectionEnded(f"{WORKER_ERROR}: {exc.__class__.__name__}: {exc}")
    return rt.finish(ended)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
