import json
import logging

from feedsup import logs


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _record(msg, level=logging.WARNING, **fields):
    rec = logging.LogRecord("feedsup.test", level, __file__, 1, msg, None, None)
    rec.feedsup_fields = fields
    return rec


def test_logfmt_quotes_values_with_spaces():
    line = logs.LogfmtFormatter().format(_record("state", logging.INFO, stream="price", reason="ping/pong timed out"))
    assert "event=state" in line and "stream=price" in line
    assert 'reason="ping/pong timed out"' in line


def test_json_lines_parse():
    line = logs.JsonFormatter().format(_record("state", logging.INFO, old="STARTING", new="RUNNING"))
    obj = json.loads(line)
    assert obj["event"] == "state" and obj["new"] == "RUNNING"


def test_repeated_warnings_are_rate_limited_and_counted():
    clock = FakeClock()
    limit = logs.RateLimit(window=10, clock=clock)
    assert limit.filter(_record("connect failed", reason="x"))
    assert not limit.filter(_record("connect failed", reason="x"))
    assert not limit.filter(_record("connect failed", reason="x"))
    assert limit.filter(_record("connect failed", reason="other"))
    clock.now = 11
    rec = _record("connect failed", reason="x")
    assert limit.filter(rec)
    assert rec.feedsup_fields["repeated"] == 2
