"""Structured log lines on stderr: logfmt (default) or JSON, one per event.

``event(log, "state", stream=..., old=..., new=..., reason=...)`` renders as
``ts=... level=info event=state stream=price old=STARTING new=RUNNING reason="ready"``.
Repeated identical warnings are rate-limited: the first is logged, the
repeats are counted and the count is logged with the next one let through.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "feedsup_fields"


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, name, extra={_FIELDS: fields})


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n'):
        return json.dumps(text)
    return text


class _StructuredFormatter(logging.Formatter):
    """The fields of one line; subclasses only choose how to render them."""

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields = {"ts": _ts(record), "level": record.levelname.lower(), "logger": record.name,
                  "event": record.getMessage(), **getattr(record, _FIELDS, {})}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return fields


class LogfmtFormatter(_StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in self.fields(record).items() if v is not None)


class JsonFormatter(_StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str)


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class RateLimit(logging.Filter):
    """Let one copy of a repeated message through per ``window`` seconds."""

    def __init__(self, window: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple, list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage(), tuple(sorted(
            (k, str(v)) for k, v in getattr(record, _FIELDS, {}).items())))
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            fields = dict(getattr(record, _FIELDS, {}))
            fields["repeated"] = entry[1]
            setattr(record, _FIELDS, fields)
        self._seen[key] = [now, 0]
        return True


class Tag(logging.Filter):
    """Add fixed fields to every line (a worker: its stream and instance);
    fields the line sets itself win."""

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.tags = fields

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, _FIELDS, {**self.tags, **getattr(record, _FIELDS, {})})
        return True


def setup(fmt: str = "logfmt", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
