"""A consumer that resumes: frames from JetStream, as ``Subscriber`` gives them.

The sink (``[sink.nats]``) stores every frame on subject
``<subject_prefix>.<topic>``, with the PUB payload plus ``source``.
``JetStreamConsumer`` reads them back as the same frame dicts, plus

* ``js_seq``: the JetStream stream sequence (the order in the stream, the
  same for every consumer and across feedsup instances);
* ``redelivered: True`` on a frame delivered before and not acknowledged
  (the consumer died while processing it).

With a ``durable`` name the position is kept by the server: a consumer that
restarts with the same name continues after its last acknowledgement. A
frame is acknowledged when the next one is asked for (or on ``close``), so a
clean stop repeats nothing and a kill repeats at most the frame being
processed, flagged ``redelivered``. Without ``durable`` the consumer is
ephemeral and starts at ``start`` ("all", "new", or a datetime/epoch
seconds). ``start_seq`` resumes after a position the application stored
itself (exactly once if it stores ``js_seq`` with its own data).

Frames come in stream order, each once, also when deliveries are lost on
the way (the node the consumer is connected to dies with frames in flight):
JetStream would resend those only after ``ack_wait`` (30 s), behind newer
frames. A jump in the consumer's delivery count, or a reconnect, moves the
consumer back to right after the last frame handed out (``_resync``).

Synchronous, like ``Subscriber``: each call runs the client's asyncio loop
until a frame arrives or the timeout passes. Needs ``feedsup[nats]``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any, Iterator

import msgpack

FETCH_BATCH = 256
# Consumer resets left unanswered in a row before re-creating the consumer
# instead (a leader election answers within a few tries; an old server never).
RESET_TRIES = 3
RESET_API = "$JS.API.CONSUMER.RESET.{stream}.{consumer}"


def _has_consumer_reset(nc: Any) -> bool:
    version = nc.connected_server_version
    return (version.major, version.minor) >= (2, 14)


def _floor(info: Any) -> int | None:
    """The stream seq a consumer has finished with, from its info: its ack
    floor, or for one created at a start seq that start - 1 (a fresh
    consumer's floor reads 0); None while nothing was acknowledged and its
    own start (all, new, a time) still holds."""
    from nats.js import api

    floor = info.ack_floor.stream_seq
    if info.config.deliver_policy == api.DeliverPolicy.BY_START_SEQUENCE and info.config.opt_start_seq:
        return max(floor, info.config.opt_start_seq - 1)
    return floor or None


def subjects_for(topics: list[str] | tuple[str, ...], prefix: str = "feedsup") -> list[str]:
    """NATS subject filters for ZeroMQ-style topic prefixes.

    NATS matches whole tokens: ``"aggTrade."`` becomes ``feedsup.aggTrade.>``,
    ``"kline.BTCUSDT"`` the topic itself and everything below it (its
    intervals), ``""`` everything."""
    out: list[str] = []
    for topic in topics or [""]:
        if not topic:
            out.append(f"{prefix}.>")
        elif topic.endswith("."):
            out.append(f"{prefix}.{topic}>")
        else:
            out += [f"{prefix}.{topic}", f"{prefix}.{topic}.>"]
    return list(dict.fromkeys(out))


class JetStreamConsumer:
    def __init__(self, servers: list[str] | str, topics: list[str] | tuple[str, ...] = ("",), *,
                 durable: str | None = None, stream: str = "FEEDSUP", subject_prefix: str = "feedsup",
                 start: "str | float | dt.datetime" = "all", start_seq: int | None = None,
                 batch: int = FETCH_BATCH, connect_options: dict[str, Any] | None = None,
                 open_timeout: float = 30.0) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.subjects = subjects_for(list(topics), subject_prefix)
        self.durable = durable
        self.stream = stream
        self.start = start
        self.start_seq = start_seq
        self.batch = batch
        self.connect_options = connect_options or {}
        self._loop = asyncio.new_event_loop()
        self._nc: Any = None
        self._sub: Any = None
        self._buffer: list[Any] = []
        self._unacked: Any = None
        self.received = 0
        self._maybe_seen = 0
        self._js: Any = None
        self._config: Any = None
        self._resume_seq: int | None = None       # learned from a durable's ack floor, kept across retries
        self._handed: int | None = None           # stream seq of the last frame handed out
        self._delivered = 0                       # the consumer's delivery count (its consumer seq) seen so far
        self._lost = False                        # deliveries may have been lost on the way: resync
        self._stale: str | None = None            # the consumer being resynced, kept across a failed attempt
        self._unanswered_resets = 0               # in a row: past RESET_TRIES, re-create instead
        self._run(self._open_retrying(open_timeout))

    # -- public ----------------------------------------------------------------

    def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, or None if none came within ``timeout`` seconds
        (None: wait for ever)."""
        return self._run(self._next(timeout))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            frame = self.next(None)
            if frame is not None:
                yield frame

    def close(self) -> None:
        """Acknowledge the last frame handed out, then disconnect."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._close())
        finally:
            self._loop.close()

    def __enter__(self) -> "JetStreamConsumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    async def _open_retrying(self, timeout: float) -> None:
        """Open, waiting out what a cluster goes through: the stream not
        created yet (feedsup creates it on its first start), a leader
        election (requests time out), a node down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                return await self._open()
            except Exception:
                if self._nc is not None:
                    await self._nc.close()
                    self._nc = None
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _open(self) -> None:
        import nats
        from nats.js import api

        self._nc = await nats.connect(self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                      reconnected_cb=self._on_reconnected, **self.connect_options)
        js = self._nc.jetstream()
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=10 * self.batch)
        if len(self.subjects) > 1:
            config.filter_subjects = self.subjects
        if self.start_seq is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.start_seq + 1
        elif self.start == "new":
            config.deliver_policy = api.DeliverPolicy.NEW
        elif self.start != "all":
            when = self.start if isinstance(self.start, dt.datetime) else \
                dt.datetime.fromtimestamp(float(self.start), dt.timezone.utc)
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._js, self._config = js, config
        if self.durable is None:
            config.inactive_threshold = 60.0     # the server forgets an ephemeral consumer left behind
        else:
            await self._resume_durable(js, config)
        await self._subscribe()

    async def _subscribe(self) -> None:
        self._sub = await self._js.pull_subscribe(self.subjects[0], durable=self.durable, stream=self.stream,
                                                  config=self._config)
        # A durable that already existed has counted deliveries before ours.
        self._delivered = (await self._sub.consumer_info()).delivered.consumer_seq

    async def _on_reconnected(self) -> None:
        # Frames the server sent through the connection that broke are
        # counted delivered but never arrived.
        self._lost = True

    async def _resync(self) -> None:
        """Deliveries were lost on the way (the consumer's delivery count
        jumped, or the connection broke with frames in flight, as when a
        cluster node dies). The server would resend them only after
        ``ack_wait``, behind newer frames: out of order and late. So move the
        consumer back to right after the last frame handed out, dropping what
        was fetched and not handed out yet, and read on a fresh inbox (frames
        still in flight to the old one are not mistaken for new ones)."""
        self._lost = False
        self._buffer = []
        if self._sub is not None:
            self._stale = self._sub._consumer     # kept across a failed attempt
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
            self._sub = None
        info = await self._info(self._stale)
        resume = self._resume_point(info)
        if (resume is not None and info is not None and _has_consumer_reset(self._nc)
                and self._unanswered_resets < RESET_TRIES and await self._reset(self._stale, resume)):
            self._sub = await self._js.pull_subscribe_bind(self._stale, stream=self.stream)
        else:
            await self._recreate(resume)
        self._stale = None

    def _resume_point(self, info: Any) -> int | None:
        """The stream seq to go on from: right after the last frame handed
        out; before this process handed out any (a reopened durable), right
        after the consumer's ack floor, where the last process left it;
        None while nothing was acknowledged: its own start still holds."""
        if self._handed is not None:
            return self._handed + 1
        if info is None:
            return self._resume_seq
        floor = _floor(info)
        return None if floor is None else floor + 1

    async def _info(self, name: str | None) -> Any:
        """The consumer's info, or None if it is gone (a reset of a deleted
        one gets no answer at all, like one whose leader is being elected)."""
        from nats.js.errors import NotFoundError

        if name is None:
            return None
        try:
            return await self._js.consumer_info(self.stream, name)
        except NotFoundError:
            return None

    async def _reset(self, name: str, seq: int) -> bool:
        """The server's consumer reset (nats-server 2.14+): the next delivery
        is stream seq ``seq`` or later, delivery count from 0. Handled by the
        consumer's own leader, so it needs no new consumer while a node is
        down (deleting and re-creating one needs a new replica group). False
        if the server refused it (the consumer deleted meanwhile, say)."""
        self._unanswered_resets += 1              # a consumer leader older than 2.14 never answers
        reply = await self._nc.request(RESET_API.format(stream=self.stream, consumer=name),
                                       json.dumps({"seq": seq}).encode(), timeout=2.0)
        self._unanswered_resets = 0
        answer = json.loads(reply.data)
        if "error" in answer:
            return False
        self._delivered = answer["delivered"]["consumer_seq"]
        return True

    async def _recreate(self, resume: int | None) -> None:
        """Delete the consumer and create it again at stream seq ``resume``
        (servers before 2.14, a deleted consumer); ``resume`` None: with its
        own start, nothing having been acknowledged."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        if self._stale is not None:
            try:
                await self._js.delete_consumer(self.stream, self._stale)
            except NotFoundError:
                pass
        if resume is not None:
            self._config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            self._config.opt_start_seq = resume
            self._config.opt_start_time = None
        await self._subscribe()

    async def _resume_durable(self, js: Any, config: Any) -> None:
        """Re-create the durable consumer right after its acknowledgement floor.

        A consumer killed with fetched, unacknowledged frames would get them
        back only after ``ack_wait``, after newer ones: out of order. Its
        position is its ack floor, so start a fresh consumer there. A clean
        ``close`` leaves it re-created at its floor too, so only a killed
        consumer's next frame can come flagged ``redelivered``."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        try:
            info = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            if self._resume_seq is not None:     # deleted by an earlier attempt that then failed
                config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = self._resume_seq
            return
        floor = _floor(info)
        if floor is None:
            return          # nothing acknowledged yet: its own start (all, new, a time) still holds
        if info.delivered.stream_seq <= floor:
            return          # nothing handed out past the floor: the consumer is right as it is
        self._resume_seq = floor + 1
        # We ack each frame before handing out the next, so at most the
        # first one after the floor was being processed when it died.
        self._maybe_seen = floor + 1
        await js.delete_consumer(self.stream, self.durable)
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor + 1
        config.opt_start_time = None

    async def _next(self, timeout: float | None) -> dict[str, Any] | None:
        if self._unacked is not None:
            await self._unacked.ack()
            self._unacked = None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            msg = await self._take(deadline)
            if msg is None:
                return None
            meta = msg.metadata
            if meta.sequence.consumer != self._delivered + 1:
                self._lost = True                # a delivery between went missing
                continue
            self._delivered += 1
            if self._handed is not None and meta.sequence.stream <= self._handed:
                await msg.ack()                  # handed out already (its ack was lost): once is enough
                continue
            break
        self._unacked = msg
        self._handed = meta.sequence.stream
        self.received += 1
        frame = msgpack.unpackb(msg.data)
        frame["js_seq"] = meta.sequence.stream
        if meta.num_delivered > 1 or meta.sequence.stream == self._maybe_seen:
            frame["redelivered"] = True
        return frame

    async def _take(self, deadline: float | None) -> Any:
        """The next fetched message, or None at the deadline; resyncs first
        when deliveries may have been lost."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import ServiceUnavailableError

        loop = asyncio.get_running_loop()
        while True:
            left = 1.0 if deadline is None else deadline - loop.time()
            if left <= 0:
                return None
            try:
                if self._lost or self._sub is None:
                    await self._resync()
                if self._buffer:
                    return self._buffer.pop(0)
                self._buffer = await self._sub.fetch(self.batch, timeout=min(max(left, 0.05), 1.0))
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            except ServiceUnavailableError:
                # Nobody serves the consumer: deleted (an ephemeral one idle
                # past inactive_threshold, an operator) or its leader moving.
                # Resync: a reset, else re-created at our position.
                self._lost = True
                await asyncio.sleep(0.1)
            except Exception:                    # reconnecting, leader election: try again
                await asyncio.sleep(0.1)

    async def _close(self) -> None:
        if self._unacked is not None:
            try:
                await self._unacked.ack_sync()
            except Exception:
                pass
        if self.durable is not None and self._buffer:
            try:                                  # fetched but never handed out: not "delivered"
                await self._resume_durable(self._js, self._config)
                await self._js.add_consumer(self.stream, config=self._config)
            except Exception:
                pass                              # then the next start flags one frame, no harm
        if self._nc is not None:
            await self._nc.close()
