"""The JetStream sink's I/O shell: an asyncio loop in its own thread.

The parent is a synchronous ZeroMQ loop and nats-py is asyncio, so the sink
runs its own event loop in a daemon thread. The parent's side is ``offer``:
append a batch to a deque (no lock, no syscall unless the sink sleeps) and
return. It never blocks and never waits for NATS. Everything else (ids,
order, the bounded buffer, gap notices, watermark caps) is decided by
``SinkCore``; this shell connects, creates the stream if missing, publishes
what the core hands out with ``Nats-Msg-Id`` and reports acks and failures
back.

nats-py is imported only here, and only inside the sink's thread, so a
feedsup without ``[sink.nats]`` never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections import deque
import json
from typing import Any

from feedsup import logs
from feedsup.sinks.config import NatsSink
from feedsup.sinks.core import Key, Offer, Pending, SinkCore, key_of

log = logging.getLogger("feedsup.sink")

IDLE_WAKE_S = 0.05       # sweep for ack timeouts and retry pauses at least this often
RECONNECT_WAIT_S = 0.5
CONNECT_RETRY_S = 1.0
STOP_FLUSH_S = 3.0
SEED_WAIT_S = 5.0        # longest a starting parent waits to learn what JetStream holds
SEED_CONCURRENCY = 64
IN_PROCESS = "/10158:"     # JetStream: "duplicate message id is in process"
WRONG_LAST = "/10071:"     # JetStream: "wrong last sequence" (the subject was not empty)
FOLLOW_POLL_S = 0.2        # how often a following sink reads its partner's progress       # a clean stop waits this long for pending acks


class NatsSinkThread:
    """Parent-side handle of the JetStream sink (see module docstring)."""

    def __init__(self, conf: NatsSink, source: str, topics: list[str] = ()) -> None:
        self.conf = conf
        self.topics = list(topics)               # whose last stored key seeds the parent's watermarks
        self._seed: dict[str, Key] | None = None
        self._started_at = 0.0
        self.source = source
        self.core = SinkCore(capacity=conf.buffer, max_inflight=conf.max_inflight, source=source,
                             boot=os.urandom(4).hex(), ack_timeout=conf.ack_timeout)
        self._lock = threading.Lock()           # core: sink thread vs status/cap_marks
        self._handoff: deque[list[Offer]] = deque()
        self._offered = 0                        # written by the parent thread only
        self._taken = 0                          # written under the lock
        self._idle = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._flush_deadline = STOP_FLUSH_S
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._waiting: dict[str, Pending] = {}   # reply token -> the publish awaiting that ack
        self._token = 0
        self._inbox = ""
        self.stream_ready = False
        self._follow_due = 0.0
        self._follow_cursor = 0

    # -- parent thread ---------------------------------------------------------

    def add_topics(self, topics: list[str]) -> None:
        """Topics that appear while running (a listing on a symbols = "*"
        stream): JetStream holds nothing for them, so as at a cold start the
        first publish of each expects an empty subject (a partner may be first)."""
        with self._lock:
            new = [t for t in topics if t not in self.topics]
            self.topics += new
            self.core.set_fresh(t.encode() for t in new)

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="feedsup-sink-nats", daemon=True)
        self._thread.start()

    def offer(self, batch: list[Offer]) -> None:
        """Frames the parent just published on PUB. Never blocks.

        If the sink's thread falls behind by more than ``buffer`` frames (or
        died), batches are reduced to what their gap notices need, so the
        hand-off stays bounded by the number of topics."""
        if self._offered - self._taken > self.conf.buffer:
            with self._lock:                     # rare: the sink thread may be merging too
                last = self._handoff[-1] if self._handoff else None
                if isinstance(last, dict):
                    merge(last, summarise(batch))
                else:
                    self._handoff.append(summarise(batch))
        else:
            self._handoff.append(batch)
        self._offered += len(batch)
        if self._idle and self._loop is not None:
            self._idle = False
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self, flush_s: float = STOP_FLUSH_S) -> None:
        """Publish what is pending for up to ``flush_s``, then close."""
        self._flush_deadline = flush_s
        self._stopping = True
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass                             # the loop already ended
        if self._thread is not None:
            self._thread.join(timeout=flush_s + 1.0)

    def seed_marks(self, now: float) -> dict[str, Key] | None:
        """The newest exchange key JetStream holds per topic, once known; {}
        after ``SEED_WAIT_S`` without an answer (NATS unreachable); None
        while still asking. A fresh instance of an A/B pair resumes (and
        backfills) from there, so it never stores a later event before an
        earlier one its partner has not stored yet."""
        if self._seed is not None:
            return self._seed
        return {} if now - self._started_at >= SEED_WAIT_S else None

    def status(self) -> dict[str, Any]:
        c = self.core
        nc = self._nc
        url = nc.connected_url if nc is not None and nc.is_connected else None
        return {
            "servers": list(self.conf.servers),
            "stream": self.conf.stream,
            "connected": f"{url.scheme}://{url.netloc}" if url is not None else None,
            "acked": c.acked,
            "duplicates": c.duplicates,
            "pending": c.pending + (self._offered - self._taken),
            "inflight": c.inflight,
            "dropped": c.dropped,
            "gaps": c.gaps,
            "failures": c.failures,
            "last_error": c.last_error or None,
        }

    def cap_marks(self, marks: dict[str, Key]) -> dict[str, Key]:
        """The parent's watermarks held back to what JetStream acknowledged
        (frames still in the hand-off are not acknowledged either)."""
        with self._lock:
            self._pull()
            return self.core.cap_marks(marks)

    # -- sink thread -----------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:                 # never take the parent down
            self.core.last_error = f"sink thread died: {type(exc).__name__}: {exc}"
            logs.event(log, "sink stopped", logging.ERROR, error=repr(exc))

    def _pull(self) -> None:
        """Move offered batches into the core (caller holds the lock)."""
        handoff, core = self._handoff, self.core
        while handoff:
            batch = handoff.popleft()
            if isinstance(batch, dict):
                core.offer_lost(batch)
                self._taken += sum(count for _, _, count in batch.values())
            else:
                core.offer(batch)
                self._taken += len(batch)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        nc = await self._connect()
        if nc is None:
            return
        js = nc.jetstream(timeout=self.conf.ack_timeout)
        # Acks come to our own inbox: nats-py's publish_async leaves a future
        # unresolved when JetStream answers with an error (it raises inside
        # its reply handler), and "duplicate message id is in process" (two
        # instances publishing one event at once) is such an answer.
        self._inbox = nc.new_inbox()
        await nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        await self._ensure_stream(js)
        await self._learn_seed(js)
        flush_until = None
        while True:
            if self._stopping:
                flush_until = flush_until or self._loop.time() + self._flush_deadline
                if (not self.core.pending and not self._handoff) or self._loop.time() >= flush_until:
                    break
            await self._step(js)
            await self._sleep()
        if self.core.pending:
            logs.event(log, "sink stop with frames unacknowledged", logging.WARNING, pending=self.core.pending)
        await nc.close()

    async def _step(self, js: Any) -> None:
        now = self._loop.time()
        with self._lock:
            self._pull()
            if self.core.expire(now):
                live = {id(e) for e in self.core.in_flight()}
                self._waiting = {t: e for t, e in self._waiting.items() if id(e) in live}
            sends = self.core.take(now) if self.stream_ready else []
            following = self.core.following() if now >= self._follow_due else []
        for entry in sends:
            await self._publish(entry)
        if following:
            self._follow_due = now + FOLLOW_POLL_S
            await self._follow(js, following)

    async def _follow(self, js: Any, topics: list[bytes]) -> None:
        """Read the newest key JetStream holds for each followed topic."""
        from nats.js.errors import NotFoundError

        async def last(topic: bytes) -> tuple[bytes, Key | None] | None:
            name = topic.decode()
            try:
                msg = await js.get_last_msg(self.conf.stream, self.conf.subject(name))
            except NotFoundError:
                return topic, None
            except Exception:
                return None                      # try again at the next poll
            return topic, key_of(name, (msg.headers or {}).get("Nats-Msg-Id", ""))
        # At most SEED_CONCURRENCY reads per poll, taking turns, so a whole
        # market of followed topics costs a bounded request rate.
        start = self._follow_cursor % len(topics)
        turn = (topics[start:] + topics[:start])[:SEED_CONCURRENCY]
        self._follow_cursor = start + len(turn)
        found = await asyncio.gather(*(last(t) for t in turn))
        now = self._loop.time()
        with self._lock:
            for item in found:
                if item is not None:
                    self.core.partner_at(item[0], item[1], now)

    async def _publish(self, entry: Pending) -> None:
        subject = f"{self.conf.subject_prefix}.{entry.topic.decode()}"
        self._token += 1
        token = str(self._token)
        self._waiting[token] = entry
        headers = {"Nats-Msg-Id": entry.msg_id}
        if entry.expect_empty:
            headers["Nats-Expected-Last-Subject-Sequence"] = "0"
        try:
            await self._nc.publish(subject, self.core.wire_payload(entry), reply=f"{self._inbox}.{token}",
                                   headers=headers)
        except Exception as exc:                 # disconnected with a full client buffer, closed, ...
            self._waiting.pop(token, None)
            with self._lock:
                self.core.failed(entry, f"publish: {type(exc).__name__}: {exc}", self._loop.time())

    async def _on_reply(self, msg: Any) -> None:
        entry = self._waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if entry is None:
            return                               # the ack of an attempt given up (expired)
        duplicate, error = parse_ack(msg.data, msg.headers)
        with self._lock:
            if error is None:
                self.core.acked_ok(entry, duplicate)
            elif WRONG_LAST in error and entry.expect_empty:
                self.core.lost_race(entry, self._loop.time())
            else:
                self.core.failed(entry, error, self._loop.time(), transient=IN_PROCESS in error)
        self._wake.set()

    async def _sleep(self) -> None:
        if self._handoff or self._stopping and not self.core.pending:
            return
        self._idle = True
        if self._handoff:                        # offered between the check and the flag
            self._idle = False
            return
        try:
            await asyncio.wait_for(self._wake.wait(), IDLE_WAKE_S)
        except asyncio.TimeoutError:
            pass
        self._idle = False
        self._wake.clear()

    async def _connect(self) -> Any:
        import nats                              # only here: see module docstring

        options = self._options()
        while not self._stopping:
            # nats-py retries the first connection for ever too: keep the
            # buffer moving (and counting losses) while it does.
            attempt = asyncio.ensure_future(nats.connect(**options))
            while not attempt.done() and not self._stopping:
                await self._pause(CONNECT_RETRY_S)
            if not attempt.done():
                attempt.cancel()
                return None
            try:
                nc = attempt.result()
            except Exception as exc:
                self.core.last_error = f"connect: {exc!r}"
                logs.event(log, "sink connect failed", logging.WARNING, servers=",".join(self.conf.servers),
                           error=repr(exc))
                await self._pause(CONNECT_RETRY_S)
                continue
            self._nc = nc
            logs.event(log, "sink connected", server=self.status()["connected"])
            return nc
        return None

    async def _ensure_stream(self, js: Any) -> None:
        """Create the stream if missing; an existing one is used as it is."""
        from nats.js.errors import NotFoundError

        c = self.conf
        while not self._stopping:
            try:
                try:
                    info = await js.stream_info(c.stream)
                    subjects = info.config.subjects or []
                    if f"{c.subject_prefix}.>" not in subjects:
                        logs.event(log, "sink stream subjects differ", logging.WARNING, stream=c.stream,
                                   subjects=",".join(subjects), expected=f"{c.subject_prefix}.>")
                except NotFoundError:
                    await js.add_stream(name=c.stream, subjects=[f"{c.subject_prefix}.>"],
                                        num_replicas=c.replicas, duplicate_window=c.duplicate_window)
                    logs.event(log, "sink stream created", stream=c.stream, replicas=c.replicas)
                self.stream_ready = True
                return
            except Exception as exc:             # cluster still forming, no quorum, timeout
                self.core.last_error = f"stream: {exc!r}"
                logs.event(log, "sink stream not ready", logging.WARNING, stream=c.stream, error=repr(exc))
                await self._pause(CONNECT_RETRY_S)

    async def _learn_seed(self, js: Any) -> None:
        from nats.js.errors import NotFoundError

        sem = asyncio.Semaphore(SEED_CONCURRENCY)
        c = self.conf

        async def last(topic: str) -> tuple[str, Key | None]:
            async with sem:
                while True:                      # a new stream may have no leader yet
                    try:
                        msg = await js.get_last_msg(c.stream, c.subject(topic))
                    except NotFoundError:
                        return topic, None
                    except Exception:
                        await asyncio.sleep(0.2)
                        continue
                    return topic, key_of(topic, (msg.headers or {}).get("Nats-Msg-Id", ""))
        try:
            found = await asyncio.wait_for(asyncio.gather(*(last(t) for t in self.topics)), SEED_WAIT_S)
        except Exception as exc:
            logs.event(log, "sink seed failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            self._seed = {}
            with self._lock:        # unknown: the first publish of each topic checks
                self.core.set_fresh(t.encode() for t in self.topics)
            return
        self._seed = {t: k for t, k in found if k is not None}
        with self._lock:
            self.core.set_fresh(t.encode() for t in self.topics if t not in self._seed)
        logs.event(log, "sink seeded", topics=len(self._seed))

    async def _pause(self, seconds: float) -> None:
        """Wait while NATS or the stream is unavailable; meanwhile offered
        frames still enter the bounded buffer (and past it, count as lost)."""
        with self._lock:
            self._pull()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    def _options(self) -> dict[str, Any]:
        c = self.conf

        async def on_error(exc: Exception) -> None:
            self.core.last_error = f"{type(exc).__name__}: {exc}"
            logs.event(log, "sink error", logging.WARNING, error=f"{type(exc).__name__}: {exc}")

        async def on_disconnected() -> None:
            logs.event(log, "sink disconnected", logging.WARNING)

        async def on_reconnected() -> None:
            # Acks of what was in flight on the old connection will not come:
            # resend those now (same ids) instead of after ack_timeout.
            with self._lock:
                now = self._loop.time()
                for entry in self.core.in_flight():
                    self.core.failed(entry, "reconnected", now, transient=True)
                self._waiting.clear()
            self._wake.set()
            logs.event(log, "sink reconnected", server=self.status()["connected"])

        options: dict[str, Any] = {
            "servers": list(c.servers), "name": f"feedsup-{self.source}",
            "max_reconnect_attempts": -1, "reconnect_time_wait": RECONNECT_WAIT_S,
            "connect_timeout": 2, "allow_reconnect": True, "error_cb": on_error,
            "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected,
            # Frames written while reconnecting wait in the client; our core
            # already bounds what is in flight, so this only has to hold that.
            "pending_size": 64 * 1024 * 1024,
        }
        if c.creds_file:
            options["user_credentials"] = c.creds_file
        if c.nkey_seed_file:
            options["nkeys_seed"] = c.nkey_seed_file
        if c.user:
            options["user"] = c.user
            options["password"] = os.environ.get(c.password_env, "") if c.password_env else None
        if c.token_env:
            options["token"] = os.environ.get(c.token_env, "")
        if c.tls_ca_file or c.tls_cert_file or any(s.startswith("tls://") for s in c.servers):
            ctx = ssl.create_default_context(cafile=c.tls_ca_file or None)
            if c.tls_cert_file:
                ctx.load_cert_chain(c.tls_cert_file, c.tls_key_file)
            options["tls"] = ctx
        return options


def parse_ack(data: bytes, headers: dict[str, str] | None) -> tuple[bool, str | None]:
    """A JetStream publish reply: (duplicate, error or None)."""
    if headers and headers.get("Status") == "503":
        return False, "no responders: stream unavailable (no leader yet?)"
    try:
        reply = json.loads(data)
    except ValueError:
        return False, "unreadable ack"
    err = reply.get("error")
    if err:
        # 10158 "duplicate message id is in process": the other instance's
        # copy is being stored; the resend will be acked as a duplicate.
        return False, f"JetStream {err.get('code')}/{err.get('err_code')}: {err.get('description')}"
    return bool(reply.get("duplicate")), None


def summarise(batch: list[Offer]) -> dict[bytes, tuple[Offer, Offer, int]]:
    """Per topic: first frame, last frame, count (what a gap notice needs)."""
    out: dict[bytes, tuple[Offer, Offer, int]] = {}
    for item in batch:
        seen = out.get(item[0])
        out[item[0]] = (item, item, 1) if seen is None else (seen[0], item, seen[2] + 1)
    return out


def merge(into: dict[bytes, tuple[Offer, Offer, int]], more: dict[bytes, tuple[Offer, Offer, int]]) -> None:
    for topic, (first, last, count) in more.items():
        seen = into.get(topic)
        into[topic] = (first, last, count) if seen is None else (seen[0], last, seen[2] + count)
