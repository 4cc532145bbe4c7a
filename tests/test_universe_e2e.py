"""symbols = "*" over a 301-symbol simulator exchange: three hosts (shards
1/3, 2/3, 3/3) split the USDT market with no overlap, each into connections
of at most 40 symbols (workers name/0, name/1, ...), and data flows."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.harness import Collector, Feedsup, wait_for, write_config

from feedsup.ipc.client import ControlError
from feedsup.universe import Shard, in_shard

USDT = tuple(f"C{i:03d}USDT" for i in range(300))


def running(fs: Feedsup) -> list | None:
    """Every stream RUNNING: the status rows; None until then (or while the
    parent, busy starting nine workers on two shared cores, answers late)."""
    try:
        rows = fs.status()["streams"]
    except ControlError:
        return None
    return rows if rows and all(r["state"] == "RUNNING" for r in rows) else None


@pytest.mark.timeout(180)
def test_whole_market_sharded_into_connections(start_sim, tmp_path):
    sim = start_sim(symbols=USDT + ("ETHBTC",), trade_rate=0.2, book_rate=0.05, speed=10)
    stream = {"name": "all", "market": "spot", "channel": "aggTrade", "symbols": "*",
              "quote_assets": ["USDT"], "streams_per_connection": 40}
    hosts = []
    try:
        for k in (1, 2, 3):
            d = tmp_path / f"h{k}"
            d.mkdir()
            config = write_config(d, sim, [stream], feedsup={"shard": f"{k}/3"}, connection={"stale_after": 0})
            fs = Feedsup(config, d)
            hosts.append((fs, Collector(fs.pub, ("aggTrade.",))))
        seen: list[str] = []
        for k, (fs, col) in enumerate(hosts, 1):
            rows = wait_for(lambda fs=fs: running(fs), 60, f"shard {k} running")
            names = [r["name"] for r in rows]
            mine = [s for s in USDT if in_shard(s, Shard(k, 3))]
            assert names == [f"all/{i}" for i in range(-(-len(mine) // 40))]
            col.wait_count(20, 60)
            symbols = {f["topic"].split(".")[1] for f in list(col.frames)}
            assert symbols <= set(mine), "a host publishes only its own shard"
            seen += mine
        assert sorted(seen) == sorted(USDT)
        # what the exchange really serves: every USDT aggTrade stream on exactly one connection
        with urllib.request.urlopen(sim.control_url + "/connections", timeout=5) as resp:
            conns = [c for c in json.loads(resp.read()) if c.get("streams")]
        streams = [s for c in conns for s in c["streams"]]
        assert sorted(streams) == sorted(f"{s.lower()}@aggTrade" for s in USDT)   # ETHBTC filtered out
        assert len(conns) == 9 and max(len(c["streams"]) for c in conns) <= 40
    finally:
        for fs, col in reversed(hosts):
            col.close()
            fs.close()
