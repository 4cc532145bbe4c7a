"""WebSocket market-stream endpoints: spot /ws, /stream; futures /public, /market, /private.

Upgrade admission (refuse fault, connection-attempt limit, stream count)
happens before the handshake; then a reader loop applies the incoming-message
rate limit, answers pings (unless stalled) and live requests.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from . import extra_rest
from .blast import run_blast
from .conn import Connection
from .live import LiveState, handle_request
from .streams import LEGACY, PRIVATE, SPOT, USDM

if TYPE_CHECKING:
    from .server import SimCore

FUTURES_ROUTES = ("public", "market", "private")


def parse_ws_path(path: str, query: dict[str, str]) -> tuple[str, str, list[str], bool] | None:
    """(market, route, stream names, combined) for a stream URL, or None."""
    parts = path.strip("/").split("/")
    market, route = SPOT, "ws"
    if len(parts) > 1 and parts[0] == "host":
        # /host/<Binance host>/...: a Binance stream host named in the path, for
        # clients that tell spot from futures by the URL (ccxt.pro does).
        host, parts = parts[1], parts[2:]
        if host.startswith("fstream."):
            parts = ["usdm"] + parts
        elif not host.startswith(("stream.", "data-stream.")):
            return None
    if parts and parts[0] in FUTURES_ROUTES:
        market, route = USDM, parts[0]
        parts = parts[1:]
    elif parts and parts[0] == "usdm":
        # /usdm stands for the fstream.binance.com host: its routed paths (/usdm/market/...)
        # as above, and its legacy /ws and /stream serving every USD-M stream.
        parts = parts[1:]
        market, route = USDM, LEGACY
        if parts and parts[0] in FUTURES_ROUTES:
            route, parts = parts[0], parts[1:]
    if not parts:
        return None
    kind, rest = parts[0], [p for p in parts[1:] if p]
    if kind == "ws":
        return market, route, rest, False
    if kind == "stream" and not rest:
        names = [s for s in query.get("streams", "").split("/") if s]
        return market, route, names, True
    return None


async def stream_handler(core: "SimCore", request: web.Request) -> web.StreamResponse:
    served = await extra_rest.handle(core, request)
    if served is not None:
        return served
    parsed = parse_ws_path(request.path, dict(request.query))
    if parsed is None:
        return extra_rest.not_found()
    market, route, names, combined = parsed
    rules = core.rules[market]
    refused = core.admit(request)
    if refused is not None:
        return refused
    if len(names) > rules.max_streams:
        return web.json_response({"code": -1, "msg": f"Too many streams; the limit is {rules.max_streams}."},
                                 status=400)
    listen_key = ""
    if route == PRIVATE:
        listen_key = request.query.get("listenKey", "") or (names[0] if names else "")
        names = []
        if not core.userdata.futures.key_valid(listen_key, core.hub.advance()):
            return web.json_response({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
    elif route == LEGACY:
        # The legacy path takes a listenKey as a stream name (USD-M "User Data Streams").
        names += [request.query["listenKey"]] if request.query.get("listenKey") else []
        keys = [n for n in names if core.userdata.futures.key_valid(n, core.hub.advance())]
        if keys:
            listen_key, names = keys[0], [n for n in names if n not in keys]
    ws = web.WebSocketResponse(autoping=False, compress=False, timeout=2.0, max_msg_size=1 << 20)
    await ws.prepare(request)
    conn = Connection(core.new_conn_id(), ws, request, market, route, rules, core.faults, combined, time.monotonic())
    conn.blast = core.options.blast or request.query.get("blast") in ("1", "true")
    core.hub.register(conn)
    core.hub.subscribe(conn, names)
    if listen_key:
        core.userdata.futures.attach(listen_key, conn)
    conn.tasks.append(asyncio.ensure_future(conn.run_writer()))
    if conn.blast:
        count = int(request.query.get("count", core.options.blast_count) or 0)
        conn.tasks.append(asyncio.ensure_future(run_blast(conn, core.hub, count)))
    try:
        await read_loop(core, conn)
    finally:
        core.hub.unregister(conn)
        core.userdata.futures.detach(conn)
        for task in list(conn.tasks):
            task.cancel()
    return ws


async def read_loop(core: "SimCore", conn: Connection) -> None:
    ws = conn.ws
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        conn.received += 1
        now = time.monotonic()
        if not conn.rate.hit(now):
            conn.close_soon(1008, "Too many requests")
            continue
        if conn.closing:
            continue
        stalled = conn.effects(now).stalled
        if msg.type == WSMsgType.PING:
            if not stalled:
                await ws.pong(msg.data)
        elif msg.type == WSMsgType.PONG:
            if not stalled:
                conn.on_pong(msg.data)
        elif msg.type == WSMsgType.TEXT:
            if not stalled:
                await live_request(core, conn, msg.data)


async def live_request(core: "SimCore", conn: Connection, text: str) -> None:
    state = LiveState(list(conn.streams), conn.combined, conn.rules.max_streams)
    outcome = handle_request(text, state)
    if outcome.subscribe:
        core.hub.subscribe(conn, outcome.subscribe)
    if outcome.unsubscribe:
        core.hub.unsubscribe(conn, outcome.unsubscribe)
    if outcome.combined is not None:
        conn.combined = outcome.combined
    await conn.send_json(outcome.reply)
