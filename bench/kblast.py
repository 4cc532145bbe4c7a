"""A kline blast server for the benchmarks: combined ``<sym>@kline_1m``
messages (about 330 bytes, Binance's shape) as fast as the socket takes
them, or at a steady rate.

    python bench/kblast.py --count 200000 [--rate BTCUSDT=20000]

Prints ``{"ws_url": ...}`` on stdout once listening. Every connection gets
``--count`` messages per subscribed kline stream (0 = until it closes), the
open kline updated with consecutive event times (so a de-duplicating
consumer admits every one); a symbol listed in ``--rate`` is paced at that
many msgs/s (1 ms steps) instead of blasted. Frames are pre-built, so the
server's own cost per message is a memcpy: the clients are what is measured.
The simulator's blast mode sends trades only; this sends what the peers
table in the README compares (kline_1m). A benchmark tool, not a test.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import struct
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
T0 = 1_700_000_000_000 // 60_000 * 60_000

TEMPLATE = (
    '{"stream":"%(name)s","data":{"e":"kline","E":%(E)d,"s":"%(S)s","k":{"t":%(t)d,"T":%(T)d,'
    '"s":"%(S)s","i":"1m","f":%(f)d,"L":%(L)d,"o":"43250.12000000","c":"43251.55000000",'
    '"h":"43262.00000000","l":"43240.01000000","v":"12.34567000","n":%(n)d,"x":false,'
    '"q":"533912.45678900","V":"6.54321000","Q":"282930.12345600","B":"0"}}}'
)


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + struct.pack(">H", n) + payload
    return bytes((0x81, 127)) + struct.pack(">Q", n) + payload


def message(name: str, symbol: str, i: int) -> bytes:
    return frame((TEMPLATE % {"name": name, "S": symbol, "E": T0 + 1000 + i, "t": T0, "T": T0 + 59_999,
                              "f": 1000, "L": 1000 + i, "n": i + 1}).encode())


def handshake(conn: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(4096)
        if not piece:
            raise ConnectionError("closed during handshake")
        data += piece
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    path = lines[0].split()[1]
    key = next(ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("sec-websocket-key"))
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    return path


def discard(conn: socket.socket) -> None:
    """Read and drop what the client sends (pings, close): its buffer never fills."""
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def serve(conn: socket.socket, count: int, rates: dict[str, int]) -> None:
    try:
        path = handshake(conn)
        names = parse_qs(urlsplit(path).query).get("streams", [""])[0].split("/")
        names = [n for n in names if "@kline_" in n] or [urlsplit(path).path.rsplit("/", 1)[-1]]
        threading.Thread(target=discard, args=(conn,), daemon=True).start()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for name in names:      # one stream per connection is what the benches use
            symbol = name.split("@", 1)[0].upper()
            rate = rates.get(symbol)
            if rate:
                paced(conn, name, symbol, count, rate)
            else:
                blast(conn, name, symbol, count)
        threading.Event().wait()  # keep the connection open: the client decides when it ends
    except OSError:
        pass
    finally:
        conn.close()


def blast(conn: socket.socket, name: str, symbol: str, count: int) -> None:
    step = 256
    if count:
        # Built before the first byte goes out: clients time from their first message.
        chunks = [b"".join(message(name, symbol, j) for j in range(i, min(count, i + step)))
                  for i in range(0, count, step)]
        for chunk in chunks:
            conn.sendall(chunk)
        return
    i = 0
    while True:
        conn.sendall(b"".join(message(name, symbol, i + j) for j in range(step)))
        i += step


def paced(conn: socket.socket, name: str, symbol: str, count: int, rate: int) -> None:
    i = 0
    start = time.monotonic()
    while count == 0 or i < count:
        due = int((time.monotonic() - start) * rate) + 1
        if due > i:
            conn.sendall(b"".join(message(name, symbol, j) for j in range(i, due)))
            i = due
        time.sleep(0.001)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000, help="messages per stream (0 = unbounded)")
    ap.add_argument("--rate", action="append", default=[], help="SYMBOL=msgs/s: pace this symbol")
    args = ap.parse_args()
    rates = {k.upper(): int(v) for k, v in (r.split("=") for r in args.rate)}
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    print(json.dumps({"ws_url": f"ws://127.0.0.1:{srv.getsockname()[1]}"}), flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, args.count, rates), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
