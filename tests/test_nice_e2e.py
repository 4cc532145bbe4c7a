"""``[[stream]] nice``: a bulk stream's worker runs at a lower CPU priority,
every one of its threads (Linux keeps nice per thread), while the parent and
the other workers keep theirs; the stream delivers as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")


def thread_nices(pid: int) -> set[int]:
    """The nice value of each of the process's threads (field 19 of stat)."""
    nices = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:          # a thread that just ended
            continue
        nices.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return nices


def test_a_bulk_stream_s_worker_runs_every_thread_at_its_nice(start_sim, start_feedsup):
    base = os.nice(0)                      # what the parent inherits from us
    sim = start_sim(speed=10, symbols=("BTCUSDT", "ETHUSDT"), trade_rate=20)
    bulk = {"name": "bulk", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"], "nice": 12}
    fast = {"name": "fast", "market": "spot", "channel": "aggTrade", "symbols": ["ETHUSDT"]}
    fs, col = start_feedsup(sim, [bulk, fast])
    bulk_pid = fs.wait_running("bulk")["pid"]
    fast_pid = fs.wait_running("fast")["pid"]
    col.wait_count(5, 20, "aggTrade.BTCUSDT")          # both deliver
    col.wait_count(5, 20, "aggTrade.ETHUSDT")
    assert len(thread_nices(bulk_pid)) == 1 and len(os.listdir(f"/proc/{bulk_pid}/task")) > 1
    assert thread_nices(bulk_pid) == {min(19, base + 12)}
    assert thread_nices(fast_pid) == {base}
    assert thread_nices(fs.status()["pid"]) == {base}
