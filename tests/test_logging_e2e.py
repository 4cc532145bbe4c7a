"""Every line ``feedsup run`` writes follows ``log_format``, workers' lines
included, and a warning a worker repeats is rate-limited like the parent's.

The depth worker is made to warn: every REST call is refused at once (400,
a request that can never succeed), so its snapshot is asked for again and
again (0.25-0.5 s, 0.5-1 s, 1-2 s, ... apart) and each failure is the same
warning.
"""

from __future__ import annotations

import json
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import Collector, wait_for

BOOK = [{"name": "book", "market": "spot", "channel": "depth", "symbols": ["BTCUSDT"], "depth_levels": 5}]
WARNING = "depth snapshot BTCUSDT failed"


class _Refuse(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"code":-1100,"msg":"Illegal characters found in a parameter."}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_rest():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _lines(fs) -> list[str]:
    return [line for line in fs.log().splitlines() if line.strip()]


def _snapshot_errors(fs) -> int:
    try:
        return (fs.stream("book").get("stats") or {}).get("snapshot_errors", 0)
    except Exception:
        return 0


def test_json_log_format_holds_for_worker_lines_and_repeats_are_rate_limited(start_sim, start_feedsup,
                                                                             refusing_rest):
    sim = start_sim(speed=2, symbols=("BTCUSDT",), trade_rate=2, book_rate=4)
    endpoints = types.SimpleNamespace(ws_url=sim.ws_url, base_url=refusing_rest)
    # stale_after well past the test: one worker instance keeps failing.
    fs, _ = start_feedsup(endpoints, BOOK, collect=lambda fs: Collector(fs.pub, ("depth.",)),
                          feedsup={"log_format": "json"}, connection={"stale_after": 60})
    errors = wait_for(lambda: (n := _snapshot_errors(fs)) >= 4 and n, 20, "four failed snapshots")

    records = []
    for line in _lines(fs):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    warned = [r for r in records if r.get("event", "").startswith(WARNING)]
    assert warned, "the worker's warning is logged"
    first = warned[0]
    assert first["level"] == "warning" and first["stream"] == "book" and "instance" in first, first
    assert {"ts", "logger"} <= first.keys(), first
    # Each failure is the same warning: within the 10 s window only the
    # first is written (a repeat let through later carries the count).
    assert len(warned) < errors, (len(warned), errors)
    assert len(warned) <= 2 and all("repeated" in r for r in warned[1:]), warned
