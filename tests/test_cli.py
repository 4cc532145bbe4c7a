"""The ``feedsup`` command as an operator runs it: status, tail, restart, check, run.

One simulator and one ``feedsup run`` serve the whole module; every CLI call
is a real subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from feedsup.sim import SimOptions, SimServer
from harness import REPO, Feedsup, wait_for, write_config

STREAMS = [
    {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT", "ETHUSDT"]},
    {"name": "kline", "market": "spot", "channel": "kline", "symbols": ["BTCUSDT"], "intervals": ["1s"]},
]


def feedsup(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feedsup.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    sim = SimServer(SimOptions(speed=1, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=20))
    sim.start()
    fs = None
    try:
        config = write_config(tmp, sim, STREAMS)
        fs = Feedsup(config, tmp)
        for stream in STREAMS:
            fs.wait_running(stream["name"])
        yield fs
    finally:
        if fs is not None:
            fs.close()
        sim.stop()


def table_rows(text: str) -> dict[str, list[str]]:
    """Stream name -> the row's columns (LAST REASON may contain spaces: last)."""
    lines = text.strip().splitlines()
    assert lines[0].split()[:5] == ["STREAM", "STATE", "PID", "UPTIME", "RESTARTS"]
    return {line.split()[0]: line.split() for line in lines[1:-1]}


def test_status_table_and_json_show_the_same_streams(running):
    table = feedsup("status", "-c", str(running.config))
    as_json = feedsup("status", "-c", str(running.config), "--json")
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    reply = json.loads(as_json.stdout)
    rows = table_rows(table.stdout)
    assert list(rows) == [s["name"] for s in reply["streams"]] == ["price", "kline"]
    for s in reply["streams"]:
        name, state, pid, _uptime, restarts = rows[s["name"]][:5]
        assert (state, int(pid), int(restarts)) == (s["state"], s["pid"], s["restarts"])
        assert s["state"] == "RUNNING" and s["pid"] in running.workers()
        assert {"uptime", "msgs_per_s", "last_msg_age", "lag_ms", "drops", "last_reason"} <= set(s)
    assert reply["pid"] == running.pid
    footer = table.stdout.strip().splitlines()[-1]
    assert footer.startswith(f"pid {running.pid} ") and "published" in footer


def test_status_watch_refreshes(running):
    proc = subprocess.Popen([sys.executable, "-m", "feedsup.cli", "status", "-c", str(running.config),
                             "--watch", "--interval", "0.2"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    headers = []

    def read() -> None:
        for line in proc.stdout:
            if line.startswith("STREAM"):
                headers.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(headers) >= 3, 15, "three refreshes of the status table")
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)
    assert headers[2] - headers[0] >= 0.3   # paced by --interval, not a busy loop


def test_tail_filters_by_topic_prefix_and_stops_after_n(running):
    out = feedsup("tail", "-c", str(running.config), "-n", "5", "aggTrade.ETH")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5
    for line in lines:
        topic, seq, *fields = line.split()
        assert topic == "aggTrade.ETHUSDT" and seq.startswith("#")
        data = dict(f.split("=", 1) for f in fields if "=" in f)
        assert data["symbol"] == "ETHUSDT" and {"agg_id", "price", "qty", "time"} <= set(data)
    seqs = [int(line.split()[1][1:]) for line in lines]
    assert seqs == list(range(seqs[0], seqs[0] + 5)), "consecutive frames of one topic"


def test_tail_prefix_selects_another_stream(running):
    out = feedsup("tail", "-c", str(running.config), "-n", "3", "kline.")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("kline.BTCUSDT.1s #") for line in lines)
    assert all("interval=1s" in line and "open_time=" in line for line in lines)


def test_restart_restarts_the_stream(running):
    before = running.stream("price")
    other = running.wait_running("kline")
    out = feedsup("restart", "-c", str(running.config), "price")
    assert out.returncode == 0 and "restart requested: price" in out.stdout, out.stderr
    after = wait_for(lambda: _replaced(running, "price", before["pid"]), 15, "a new price worker")
    assert after["restarts"] == before["restarts"] + 1
    assert "restart requested" in after["last_reason"]
    kline = running.stream("kline")
    assert (kline["pid"], kline["restarts"]) == (other["pid"], other["restarts"]), "only the named stream restarts"


def _replaced(fs: Feedsup, name: str, old_pid: int) -> dict | None:
    row = fs.stream(name)
    return row if row["state"] == "RUNNING" and row["pid"] not in (None, old_pid) else None


def test_restart_of_an_unknown_stream_is_a_clear_error(running):
    out = feedsup("restart", "-c", str(running.config), "nope")
    assert out.returncode != 0
    assert "no stream named 'nope'" in out.stderr and "price" in out.stderr and "kline" in out.stderr
    assert out.stdout == ""


def test_status_without_a_running_feedsup_is_a_clear_error(tmp_path):
    out = feedsup("status", "--control", f"ipc://{tmp_path}/nothing-here")
    assert out.returncode != 0
    assert "no answer from" in out.stderr and "is feedsup running?" in out.stderr


# -- check and run: config errors --------------------------------------------------

GOOD = """
[feedsup]
pub = "ipc://TMP/pub"
control = "ipc://TMP/ctl"

[[stream]]
name = "price"
market = "spot"
channel = "aggTrade"
symbols = ["BTCUSDT"]
"""

STREAM = '\n[[stream]]\nname = "{name}"\nmarket = "spot"\nchannel = "{channel}"\nsymbols = ["BTCUSDT"]\n'

BAD = {
    "unknown key": (GOOD.replace("[feedsup]", "[feedsup]\npubb = 1"), "feedsup.pubb", "unknown key"),
    "bad interval": (GOOD + STREAM.format(name="k", channel="kline") + 'intervals = ["7m"]\n',
                     'stream "k".intervals[0]', 'unknown value "7m"'),
    "duplicate name": (GOOD + STREAM.format(name="price", channel="trade"),
                       "stream[1].name", 'duplicate stream name "price"'),
    "bad symbol": (GOOD.replace('["BTCUSDT"]', '["btc-usdt"]'),
                   'stream "price".symbols[0]', 'invalid symbol "btc-usdt"'),
}


def test_check_accepts_a_good_config(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD.replace("TMP", str(tmp_path)))
    out = feedsup("check", "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: ok (1 streams)"


def test_check_accepts_the_shipped_config():
    out = feedsup("check", "-c", str(REPO / "conf" / "feedsup.toml"))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_rejects_a_bad_config_with_file_key_and_reason(tmp_path, case):
    text, key, reason = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("TMP", str(tmp_path)))
    out = feedsup("check", "-c", str(path))
    assert out.returncode == 78
    assert str(path) in out.stderr and key in out.stderr and reason in out.stderr, out.stderr
    assert out.stdout == ""


def test_check_of_a_missing_file_exits_78(tmp_path):
    out = feedsup("check", "-c", str(tmp_path / "missing.toml"))
    assert out.returncode == 78 and "missing.toml" in out.stderr


def test_run_with_a_bad_config_exits_78_before_starting_anything(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD["unknown key"][0].replace("TMP", str(tmp_path)))
    out = feedsup("run", "-c", str(path), timeout=15)
    assert out.returncode == 78
    assert f"{path}: feedsup.pubb: unknown key" in out.stderr
    assert not (tmp_path / "pub").exists(), "nothing was bound"


def test_status_table_shows_a_running_backfill():
    from feedsup.cli import format_status
    progress = {"topic": "aggTrade.BTCUSDT", "rows": 3000, "done": 3000, "remaining": 12000, "unit": "ids",
                "eta_s": 8.2, "topics_left": 1}
    reply = {"pid": 1, "uptime": 5, "published": 10, "suppressed": 0, "streams": [
        {"name": "aggs", "state": "RUNNING", "pid": 7, "stats": {"backfill": progress}},
        {"name": "kl", "state": "RUNNING", "pid": 8, "stats": {"backfill": {
            "topic": "kline.BTCUSDT.1m", "rows": 10, "done": 600000, "remaining": None, "unit": "ms",
            "eta_s": None, "topics_left": 0}}},
        {"name": "book", "state": "RUNNING", "pid": 9, "stats": {}}]}
    text = format_status(reply)
    assert ("  backfill aggs: aggTrade.BTCUSDT, 3000 rows fetched, 12000 ids left (+1 topic), about 8 s"
            in text.splitlines())
    assert "  backfill kl: kline.BTCUSDT.1m, 10 rows fetched, end not known yet" in text.splitlines()
    assert "backfill book" not in text


def test_status_table_shows_the_sink():
    from feedsup.cli import format_status

    reply = {"pid": 1, "uptime": 5, "published": 10, "suppressed": 0, "streams": [
        {"name": "aggs", "state": "RUNNING", "pid": 7, "stats": {}}]}
    assert "sink" not in format_status(reply) and "sink" not in format_status({**reply, "sink": None})
    sink = {"servers": ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"], "stream": "FEEDSUP",
            "connected": "nats://127.0.0.1:4223", "acked": 1200, "duplicates": 3, "pending": 17, "inflight": 5,
            "dropped": 2, "gaps": 1, "failures": 4, "last_error": "timeout waiting for ack"}
    lines = format_status({**reply, "sink": sink}).splitlines()
    assert ("sink nats FEEDSUP: connected nats://127.0.0.1:4223  acked 1200  pending 17  dropped 2"
            "  last error: timeout waiting for ack") in lines
    down = {**sink, "connected": None, "last_error": None}
    assert ("sink nats FEEDSUP: not connected (nats://127.0.0.1:4222, nats://127.0.0.1:4223)  acked 1200"
            "  pending 17  dropped 2  last error: -") in format_status({**reply, "sink": down}).splitlines()


def test_status_command_shows_an_unreachable_sink(start_sim, tmp_path):
    """``feedsup status`` (the table) of a parent whose [sink.nats] cannot be
    reached: the sink line says so, with what waits for JetStream."""
    pytest.importorskip("nats")
    from feedsup.sinks.cluster import free_ports

    sim = start_sim(symbols=("BTCUSDT", "ETHUSDT"), trade_rate=20)
    config = write_config(tmp_path, sim, [STREAMS[0]])
    (port,) = free_ports(1)
    config.write_text(config.read_text() + f'[sink.nats]\nservers = ["nats://127.0.0.1:{port}"]\n')
    fs = Feedsup(config, tmp_path)
    try:
        def sink_line() -> str | None:
            out = feedsup("status", "--control", fs.control, timeout=10)
            line = next((x for x in out.stdout.splitlines() if x.startswith("sink nats")), None)
            return line if line and " pending 0 " not in line + " " else None
        line = wait_for(sink_line, 40, "the sink line with frames pending")
        assert line.startswith(f"sink nats FEEDSUP: not connected (nats://127.0.0.1:{port})  acked 0  pending ")
        assert "dropped 0" in line and "last error: " in line
    finally:
        fs.close()
