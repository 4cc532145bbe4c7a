"""User data (placeholder; filled in below the market features)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class FuturesUserData:
    def key_valid(self, key: str, sim_ms: int) -> bool:
        return False

    def attach(self, key: str, conn: Any) -> None:
        pass

    def detach(self, conn: Any) -> None:
        pass


class UserData:
    def __init__(self, options: Any, hub: Any) -> None:
        self.futures = FuturesUserData()

    async def ws_api_handler(self, core: Any, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)

    def rest_route(self, request: web.Request) -> Any:
        return None

    def tick(self, sim_ms: int) -> None:
        pass

    def expire_keys(self, key: str | None) -> list[int]:
        return []
