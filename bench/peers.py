"""feedsup against the Binance libraries that install here, on one blast.

    python bench/peers.py --peers-python /tmp/peers/bin/python [--count 200000]

Each path receives ``--count`` combined ``btcusdt@kline_1m`` messages (about
330 bytes) from ``bench/kblast.py`` (REST, where a library wants it, from
the simulator) and delivers them to user code; the table shows msgs/s from
the first message to the last and the CPU per message of every process
involved (utime + stime). The peers run in their own process, in a
throwaway venv given by ``--peers-python`` (peer libraries are never
feedsup dependencies), for example::

    uv venv -p 3.13 /tmp/peers   # cryptofeed 3 needs Python >= 3.12
    /tmp/peers/bin/pip install websocket-client unicorn-binance-websocket-api cryptofeed python-binance

feedsup delivers to a separate consumer process (this one, with
``feedsup.ipc.client.Subscriber``, every frame decoded). Each peer run is
bounded (``--timeout``); one that fails or times out shows why. On a
machine shared with other work, msgs/s swings; CPU per message is steadier.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import throughput  # noqa: E402

COMMON = r"""
import sys, time
url, rest_url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Clock:
    n = 0
    def tick(self):
        if self.n == 0:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.n += 1
        if self.n == count:
            dt, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            print((count - 1) / dt, cpu / (count - 1) * 1e6, flush=True)
            return True
        return False
clock = Clock()
"""

# unicorn-binance-websocket-api, the same run for both of its outputs.
_UBWA = r"""
from unicorn_binance_websocket_api import BinanceWebSocketApiManager
done = False
def cb(data):
    global done
    if clock.tick():
        done = True
m = BinanceWebSocketApiManager(exchange="binance.com", websocket_base_uri=url + "/", output_default="OUTPUT",
                               process_stream_data=cb, high_performance=True, disable_colorama=True)
m.create_stream(["kline_1m"], ["btcusdt"])
while not done:
    time.sleep(0.05)
import os; os._exit(0)
"""

PEERS = {
    "websocket-client recv_data, no UTF-8 check": r"""
import websocket
ws = websocket.create_connection(url + "/stream?streams=btcusdt@kline_1m", skip_utf8_validation=True)
while True:
    op, data = ws.recv_data(True)
    if op in (1, 2) and clock.tick():
        break
""",
    "unicorn-binance-websocket-api, raw strings": _UBWA.replace("OUTPUT", "raw_data"),
    "unicorn-binance-websocket-api, parsed dicts": _UBWA.replace("OUTPUT", "dict"),
    "cryptofeed, parsed and normalised": r"""
import os
from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import CANDLES
from cryptofeed.exchanges import Binance
import cryptofeed.connection as cc
_init = cc.WSAsyncConn.__init__
def plain_ws(self, address, *a, **kw):    # cryptofeed insists on wss://; the blast is plain ws on loopback
    _init(self, address.replace("ws://", "wss://", 1), *a, **kw)
    self.address = address
cc.WSAsyncConn.__init__ = plain_ws
class Local(Binance):
    id = Binance.id
    websocket_endpoints = [WebsocketEndpoint(url)]
    rest_endpoints = [RestEndpoint(rest_url, routes=Routes('/api/v3/exchangeInfo', l2book='/api/v3/depth?symbol={}&limit={}'))]
async def candle(c, ts):
    if clock.tick():
        os._exit(0)
f = FeedHandler(config={"log": {"disabled": True}})
f.add_feed(Local(symbols=["BTC-USDT"], channels=[CANDLES], callbacks={CANDLES: candle}, candle_closed_only=False))
f.run()
""",
    "python-binance (BinanceSocketManager)": r"""
import asyncio
from binance import AsyncClient, BinanceSocketManager
async def main():
    client = AsyncClient()
    bm = BinanceSocketManager(client, max_queue_size=100_000)
    bm.STREAM_URL = url + "/"
    async with bm.kline_socket("BTCUSDT") as s:
        while True:
            await s.recv()
            if clock.tick():
                break
    await client.close_connection()
asyncio.run(main())
""",
}


def run_peer(python: str, code: str, urls: dict, count: int, timeout: float) -> tuple[float, float] | str:
    try:
        out = subprocess.run([python, "-c", COMMON + code, urls["ws_url"], urls["rest_url"], str(count)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not deliver {count:,} within {timeout:g} s"
    try:
        rate, cpu = out.stdout.split()[:2]
        return float(rate), float(cpu)
    except ValueError:
        return "failed: " + (out.stderr.strip().splitlines() or ["no output"])[-1][:100]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-python", required=True, help="python of a throwaway venv holding the peers")
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--timeout", type=float, default=90.0, help="per peer, seconds")
    ap.add_argument("--only", nargs="*", help="peer names containing any of these words")
    args = ap.parse_args()
    rows: list[tuple[str, tuple[float, float] | str]] = []
    for name, code in PEERS.items():
        if args.only and not any(w in name for w in args.only):
            continue
        procs, urls = throughput.start_exchange(args.count)
        try:
            rows.append((name, run_peer(args.peers_python, code, urls, args.count, args.timeout)))
        finally:
            for p in procs:
                throughput.stop(p)
        print(f"  {name}: {rows[-1][1]}", file=sys.stderr, flush=True)
    t = throughput.end_to_end(args.count)
    cpu = t["cpu"]
    rows.append(("**feedsup: worker -> parent -> a separate consumer process**", (t["rate"], sum(cpu.values()))))
    print(f"\n{args.count:,} combined btcusdt@kline_1m messages, one blast server, {os.cpu_count()} cores\n")
    print("| path | msgs/s | CPU us/msg |\n|---|---|---|")
    for name, got in rows:
        print(f"| {name} | " + (f"{got[0]:,.0f} | {got[1]:.1f} |" if isinstance(got, tuple) else f"{got} | |"))
    print("\nfeedsup CPU us/msg per process: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))


if __name__ == "__main__":
    main()
