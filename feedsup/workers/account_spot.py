"""Spot user data through the WebSocket API (the spot listenKey was retired
on 2026-02-20).

Subscribe with ``userDataStream.subscribe.signature`` (signed with the API
secret, HMAC-SHA256, or an Ed25519 key), wait for
``{"status":200,"result":{"subscriptionId":N}}``, then receive
``{"subscriptionId":N,"event":{...}}``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import websocket

from feedsup.credentials import Credentials
from feedsup.binance.rest import RECV_WINDOW_MS, classify_rejection, ws_api_payload
from feedsup.workers.signed_rest import SignedRest, now_ms
from feedsup.workers.runtime import ConnectionEnded, Runtime, receive

log = logging.getLogger("feedsup.worker.account")

SUBSCRIBE = "userDataStream.subscribe.signature"
SUBSCRIBE_ID = "feedsup-subscribe"


def subscribe_request(creds: Credentials, timestamp_ms: int) -> dict[str, Any]:
    """The signed subscribe request (pure: the clock is a parameter)."""
    params: dict[str, Any] = {"apiKey": creds.api_key, "recvWindow": RECV_WINDOW_MS,
                              "timestamp": timestamp_ms}
    params["signature"] = creds.sign(ws_api_payload(params))
    return {"id": SUBSCRIBE_ID, "method": SUBSCRIBE, "params": params}


def subscription_id(reply: Any) -> int:
    """The subscriptionId of a subscribe reply, or ConnectionEnded (classified)."""
    if isinstance(reply, dict) and reply.get("status") == 200:
        result = reply.get("result")
        if isinstance(result, dict) and isinstance(result.get("subscriptionId"), int):
            return result["subscriptionId"]
    status = reply.get("status") if isinstance(reply, dict) else None
    raise ConnectionEnded(*classify_rejection(SUBSCRIBE, status if isinstance(status, int) else 0, reply))


class SpotSession:
    def __init__(self, rt: Runtime, creds: Credentials) -> None:
        self.rt = rt
        self.creds = creds
        self.rest = SignedRest.for_worker(rt, creds)
        self.subscription: int | None = None

    def open(self) -> websocket.WebSocket:
        ws = self.rt.connect(self.rt.spec.endpoint.ws_api_url)
        ws.send(orjson.dumps(subscribe_request(self.creds, now_ms())).decode())
        # Bounded wait for the reply; afterwards liveness is the pinger's job.
        ws.settimeout(self.rt.conn.connect_timeout)
        try:
            self.subscription = subscription_id(self._reply(ws))
        finally:
            ws.settimeout(None)
        log.info("subscribed to user data (subscription %s, %s signature)",
                 self.subscription, self.creds.method)
        return ws

    def _reply(self, ws: websocket.WebSocket) -> Any:
        while True:
            try:
                got = receive(self.rt, ws, lost="connection lost while subscribing")
            except websocket.WebSocketTimeoutException:
                raise ConnectionEnded(f"{SUBSCRIBE}: no reply within "
                                      f"{self.rt.conn.connect_timeout:g} s") from None
            if got is not None:
                payload, _ = got
                try:
                    msg = orjson.loads(payload)
                except ValueError:
                    self.rt.counters.malformed += 1
                    continue
                if isinstance(msg, dict) and msg.get("id") == SUBSCRIBE_ID:
                    return msg

    def snapshot(self) -> dict[str, Any]:
        return self.rest.account_snapshot(self.rt.spec.stream.market)

    def event_of(self, msg: Any) -> dict[str, Any] | None:
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        event = msg.get("event")
        if event is None:
            return None  # a request reply
        if msg.get("subscriptionId", self.subscription) != self.subscription or not isinstance(event, dict):
            raise ValueError("event of another subscription")
        return event

    def close(self) -> None:
        pass  # closing the connection ends the subscription
