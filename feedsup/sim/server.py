"""The simulator server: one aiohttp app on one port, and ``SimServer`` to run
it on its own event loop in a background thread (for tests and the CLI).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import orjson
from aiohttp import web

from . import payloads, rest
from .clock import SimClock
from .conn import Connection, Rules, reset_transport
from .control import control_handler
from .extra_rest import not_found
from .faults import Fault, FaultError, FaultRegistry
from .hub import Hub
from .limits import AttemptCounter, WeightLimiter
from .options import SimOptions
from .streams import SPOT, USDM
from .userdata import SIM_HEADERS, UserData
from .wsserver import stream_handler

log = logging.getLogger("feedsup.sim")

_REST_ERROR_BODIES = {
    418: (-1003, "Way too much request weight used; IP banned. Please use WebSocket Streams for live updates to avoid bans."),
    429: (-1003, "Too many requests; please use the websocket for live updates."),
    500: (-1000, "An unknown error occurred while processing the request."),
    502: (-1000, "An unknown error occurred while processing the request."),
    503: (-1008, "Server is currently overloaded with other requests. Please try again in a few minutes."),
    504: (-1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown."),
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json")


class SimCore:
    """All simulator state, owned by the event loop that serves it."""

    def __init__(self, options: SimOptions) -> None:
        o = self.options = options
        self.clock = SimClock(o.start_ms, o.speed)
        self.hub = Hub(o, self.clock)
        self.faults = FaultRegistry()
        self.attempts = AttemptCounter(o.conn_attempts, o.conn_attempts_window)
        self.weights = {
            SPOT: WeightLimiter(o.rest_weight_limit, o.rest_weight_window, o.ban_after, o.ban_seconds),
            USDM: WeightLimiter(o.futures_rest_weight_limit, o.rest_weight_window, o.ban_after, o.ban_seconds),
        }
        self.rules = {
            SPOT: Rules(o.ping_interval, o.pong_timeout, o.msg_rate_limit, o.msg_rate_window, o.max_streams,
                        o.max_lifetime, o.shutdown_lead, o.max_queue),
            USDM: Rules(o.futures_ping_interval, o.futures_pong_timeout, o.futures_msg_rate_limit,
                        o.msg_rate_window, o.futures_max_streams, o.max_lifetime, o.shutdown_lead, o.max_queue),
        }
        self.userdata = UserData(o, self.hub)
        self._conn_ids = 0
        # (monotonic s, path) of recent REST calls, for tests that check who asked when
        self.rest_log: deque[tuple[float, str]] = deque(maxlen=10_000)
        self._scenario = sorted(o.scenario, key=lambda f: float(f.get("at", 0)))
        self._started = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None

    def new_conn_id(self) -> int:
        self._conn_ids += 1
        return self._conn_ids

    # -- app -------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[], client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._ticker = asyncio.ensure_future(self._tick_loop())

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        conns = list(self.hub.connections.values())
        for conn in conns:
            conn.close_soon(1001, "Server shutting down")
        closing = [t for conn in conns for t in conn.tasks]
        closing += [asyncio.ensure_future(ws.close(code=1001, message=b"Server shutting down"))
                    for ws in list(self.userdata.sockets)]
        if closing:
            await asyncio.wait(closing, timeout=0.5)
        for conn in conns:
            if not conn.ws.closed:
                conn.drop()  # a client that does not answer the close handshake

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sim/"):
            return await control_handler(self, request)
        if path == "/ws-api/v3":
            return await self.userdata.ws_api_handler(self, request)
        if path.startswith("/api/") or path.startswith("/fapi/"):
            return await self.rest(request)
        return await stream_handler(self, request)

    # -- admission (WebSocket upgrades) ------------------------------------------------

    def admit(self, request: web.Request) -> web.StreamResponse | None:
        """None to proceed with the upgrade, else the refusal to return."""
        now = time.monotonic()
        refusing = self.faults.of_kind("outage", now) or self.faults.of_kind("refuse", now)
        if refusing:
            if refusing[0].params.get("mode") == "reset":
                reset_transport(request.transport)
            return _json({"code": -1, "msg": "Service unavailable."}, 503)
        if not self.attempts.attempt(request.remote or "?", now):
            return _json({"code": -1003, "msg": "Too many connection attempts."}, 429,
                         {"Retry-After": str(int(self.options.conn_attempts_window))})
        return None

    # -- REST --------------------------------------------------------------------------

    async def rest(self, request: web.Request) -> web.StreamResponse:
        self.rest_log.append((time.monotonic(), request.path))
        market = SPOT if request.path.startswith("/api/") else USDM
        routes = rest.SPOT_ROUTES if market == SPOT else rest.FUTURES_ROUTES
        signed = self.userdata.rest_route(request)
        route = routes.get(request.path) if request.method == "GET" else None
        if route is None and signed is None:
            return not_found()  # Binance's HTML 404 for an unknown path (extra_rest.py, h7)
        query = dict(request.query)
        if request.method in ("POST", "PUT", "DELETE") and request.can_read_body:
            form = await request.post()
            query.update({k: v for k, v in form.items() if isinstance(v, str)})
        weight = (route or signed)[1](query)
        now = time.monotonic()
        fault = self.faults.take_rest_error(now)
        if fault is not None:
            return self._fault_response(fault)
        slow = [f.params["ms"] for f in self.faults.of_kind("latency", now) if f.params.get("rest")]
        if slow:
            await asyncio.sleep(max(slow) / 1000.0)
            now = time.monotonic()
        lags = self.faults.of_kind("rest_lag", now)
        self.hub.rest_lag_ms = int(max(f.params["ms"] for f in lags)) if lags else 0
        verdict = self.weights[market].charge(request.remote or "?", weight, time.time())
        headers = {"X-MBX-USED-WEIGHT-1M": str(verdict.used), "X-MBX-USED-WEIGHT": str(verdict.used)}
        if verdict.status != 200:
            code, msg = -1003, verdict.message(market == USDM)  # limits.py: Binance's 429/418 text (h7)
            headers["Retry-After"] = str(verdict.retry_after)
            return _json({"code": code, "msg": msg}, verdict.status, headers)
        try:
            if route is not None:
                body = route[0](self.hub, market, query)
            else:
                body = await signed[0](self, market, request, query)
        except rest.RestError as exc:
            return _json(exc.body(), exc.status, {**headers, **request.get(SIM_HEADERS, {})})
        return _json(body, 200, {**headers, **request.get(SIM_HEADERS, {})})  # X-MBX-ORDER-COUNT-* (h7)

    def _fault_response(self, fault: Fault) -> web.Response:
        status = fault.params["status"]
        code, msg = _REST_ERROR_BODIES[status]
        if fault.kind == "outage":
            msg = "Service unavailable: exchange-wide outage."
        headers = {}
        if status in (418, 429):
            headers["Retry-After"] = str(int(fault.params.get("retry_after", 60 if status == 429 else 120)))
        return _json({"code": code, "msg": msg}, status, headers)

    # -- the engine tick -----------------------------------------------------------------

    async def _tick_loop(self) -> None:
        period = self.options.tick
        while True:
            try:
                self.tick()
            except Exception:  # keep serving; a bug in one feed must not stop the market
                log.exception("sim tick failed")
            await asyncio.sleep(period)

    def tick(self) -> None:
        sim_ms = self.hub.tick()
        now = time.monotonic()
        self.faults.expire(now)
        for conn in list(self.hub.connections.values()):
            conn.keepalive(now, sim_ms)
        self.userdata.tick(sim_ms)
        self._run_scenario(now)

    def _run_scenario(self, now: float) -> None:
        while self._scenario and float(self._scenario[0].get("at", 0)) <= now - self._started:
            entry = dict(self._scenario.pop(0))
            entry.pop("at", None)
            kind = entry.pop("kind", "")
            target = entry.pop("target", None) or {}
            try:
                self.inject(kind, target, entry)
            except ValueError as exc:
                log.error("scenario fault %r rejected: %s", kind, exc)

    # -- faults ------------------------------------------------------------------------

    def inject(self, kind: str, target: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        symbol = params.get("symbol") if kind == "halt" else None
        if isinstance(symbol, str) and symbol.upper() not in self.hub.symbols:
            raise FaultError(f"halt symbol {symbol!r} is not simulated; symbols: {sorted(self.hub.symbols)}")
        fault = self.faults.create(kind, target, params, now)
        targets = [c for c in self.hub.connections.values() if fault.hits(c.id, c.streams)]
        fault.applied_to = [c.id for c in targets]
        sim_ms = self.hub.advance()
        p = fault.params
        if kind == "drop":
            for conn in targets:
                conn.drop()
        elif kind == "close":
            for conn in targets:
                conn.close_soon(p["code"], p["reason"])
        elif kind == "malformed":
            for conn in targets:
                for _ in range(p["count"]):
                    bad = (self._id_jump(conn, fault.stream(), sim_ms) if p["variant"] == "id_jump"
                           else _malformed(p["variant"], p["size"], sim_ms, conn))
                    conn.queue.append((fault.stream() or "", bad, now))
                conn.wake.set()
        elif kind == "server_shutdown":
            for conn in targets:
                conn.begin_shutdown(now, sim_ms, p.get("delay", self.options.shutdown_lead))
        elif kind == "lifetime":
            for conn in targets:
                conn.opened = now - conn.rules.max_lifetime  # the next keepalive runs the real expiry path
        elif kind == "expire_listen_key":
            fault.applied_to = self.userdata.expire_keys(target.get("listenKey"))
        elif kind == "halt":
            fault.applied_to = []
            self._halt(p, sim_ms)
        elif kind == "outage":
            self._outage(p)
        elif kind == "list":
            fault.applied_to = []
            p["listed"] = self.hub.list_symbol(p["symbol"])
        elif kind == "delist":
            fault.applied_to = []
            p["stopped"] = self.hub.delist_symbol(p["symbol"])
            fault.applied_to = [c.id for c in self.hub.connections.values() if set(c.streams) & set(p["stopped"])]
        log.info("fault %s %s on %s", kind, p, fault.applied_to or "no connection")
        return fault.as_dict()

    def _id_jump(self, conn: Connection, stream: str | None, sim_ms: int) -> bytes:
        """A well-formed trade event whose id leaps 2**62 ahead (hostile data)."""
        name = stream or next((s for s in conn.streams if s.endswith(("@aggTrade", "@trade"))), "btcusdt@aggTrade")
        symbol, _, kind = name.partition("@")
        m = self.hub.market(conn.market, symbol) or next(iter(self.hub.markets[conn.market].values()))
        price, qty = payloads.fmt_of(m).p(m.last_price), payloads.fmt_of(m).q(1)
        if kind == "trade":
            event = {"e": "trade", "E": sim_ms, "s": m.spec.symbol, "t": m.next_trade_id + 2**62, "p": price,
                     "q": qty, "T": sim_ms, "m": False, "M": True}
        else:
            event = {"e": "aggTrade", "E": sim_ms, "s": m.spec.symbol, "a": m.next_agg_id + 2**62, "p": price,
                     "q": qty, "f": m.next_trade_id + 2**62, "l": m.next_trade_id + 2**62, "T": sim_ms,
                     "m": False, "M": True}
        raw = orjson.dumps(event)
        return b'{"stream":"' + name.encode() + b'","data":' + raw + b"}" if conn.combined else raw

    def _halt(self, p: dict[str, Any], sim_ms: int) -> None:
        """Trading stops now for ``duration`` wall seconds (scaled by speed)."""
        symbol = p.get("symbol")
        p["from_ms"] = sim_ms + 1
        p["to_ms"] = sim_ms + int(p["duration"] * self.options.speed * 1000)
        for by_symbol in self.hub.markets.values():
            for name, m in by_symbol.items():
                if symbol is None or name == symbol:
                    m.halt(p["from_ms"], p["to_ms"])

    def _outage(self, p: dict[str, Any]) -> None:
        """The whole venue fails: every connection drops (WebSocket API
        sessions too); upgrades and REST fail until the fault ends."""
        for conn in list(self.hub.connections.values()):
            conn.drop()
        for ws in list(self.userdata.sockets):
            req = getattr(ws, "_req", None)
            reset_transport(req.transport if req is not None else None)

    def clear_faults(self, fault_id: int | None = None) -> int:
        """Clear lasting faults (all, or one); a cleared halt ends now."""
        gone = [f for f in self.faults.active if fault_id is None or f.id == fault_id]
        if any(f.kind == "halt" for f in gone):
            now = self.hub.advance()
            for by_symbol in self.hub.markets.values():
                for m in by_symbol.values():
                    m.end_halts(now)
        return self.faults.clear(fault_id)

    def state(self) -> dict[str, Any]:
        return {"sim_time": self.hub.advance(), "speed": self.options.speed, "seed": self.options.seed,
                "start_ms": self.options.start_ms, "symbols": sorted(self.hub.symbols),
                "delisted": sorted(self.hub.delisted[SPOT]),
                "uptime": round(time.monotonic() - self._started, 3), "connections": len(self.hub.connections)}


def _malformed(variant: str, size: int, sim_ms: int, conn: Connection) -> bytes:
    if variant == "invalid_json":
        return b'{"e":"aggTrade","E":' + str(sim_ms).encode() + b',"s":"BTCUSDT","a":}{'
    if variant == "unknown_event":
        event = orjson.dumps({"e": "simUnknownEvent", "E": sim_ms, "s": "BTCUSDT"})
        if conn.combined and conn.streams:
            return b'{"stream":"' + conn.streams[0].encode() + b'","data":' + event + b"}"
        return event
    if variant == "truncated":
        full = orjson.dumps({"e": "aggTrade", "E": sim_ms, "s": "BTCUSDT", "a": 1, "p": "1.00000000",
                             "q": "1.00000000", "f": 1, "l": 1, "T": sim_ms, "m": True, "M": True})
        return full[: len(full) // 2]
    return orjson.dumps({"e": "simOversized", "E": sim_ms, "pad": "x" * max(0, size)})


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class SimServer:
    """Run the simulator on a background thread's event loop.

    ``start()`` returns once the port is bound; ``stop()`` closes every
    connection and joins the thread. Usable as a context manager.
    """

    def __init__(self, options: SimOptions | None = None, **overrides: Any) -> None:
        self.options = (options or SimOptions()).with_overrides(**overrides)
        self.core: SimCore | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- URLs ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.options.host)}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{_url_host(self.options.host)}:{self.port}"

    @property
    def ws_api_url(self) -> str:
        return self.ws_url + "/ws-api/v3"

    @property
    def control_url(self) -> str:
        return self.base_url + "/_sim"

    def urls(self) -> dict[str, str]:
        return {"rest_url": self.base_url, "ws_url": self.ws_url, "ws_api_url": self.ws_api_url,
                "control_url": self.control_url}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "SimServer":
        self._thread = threading.Thread(target=self._run, name="feedsup-sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # report bind errors to start()
            self._error = exc
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        self.core = SimCore(self.options)
        self._runner = web.AppRunner(self.core.build_app(), handle_signals=False, access_log=None,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------

    def call(self, fn: Callable[[SimCore], Any], timeout: float = 10.0) -> Any:
        """Run ``fn(core)`` on the server's loop and return its result."""
        assert self._loop is not None and self.core is not None
        core = self.core

        async def run() -> Any:
            return fn(core)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def inject(self, kind: str, target: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        """Same as ``POST /_sim/faults``; raises FaultError on a bad request."""
        return self.call(lambda core: core.inject(kind, target or {}, params))

    def clear_faults(self) -> int:
        return self.call(lambda core: core.clear_faults())

    def connections(self) -> list[dict[str, Any]]:
        return self.call(lambda core: [c.info(time.monotonic()) for c in core.hub.connections.values()])
