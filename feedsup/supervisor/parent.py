"""The parent's I/O shell: sockets, processes and signals around the policy.

Everything the parent *decides* lives in ``policy.py`` (restarts) and
``sequencer.py`` (what is published, with which seq). This loop only feeds
them facts and carries out their actions:

    worker PUSH --> [PULL] --sequencer--> [PUB] --> consumers
    worker control --> policy --> Spawn / Terminate / Kill / Exit
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import struct
import tempfile
import time
from typing import Any

import msgpack
import zmq

from feedsup import curve, endpoints, logs, universe
from feedsup.config import ANY_PORT, Config, read_regular_file
from feedsup.ipc import frames, topics
from feedsup.ipc.frames import Control
from feedsup.supervisor import control, fdlimit, gaps, policy as pol, refresh, state as saved
from feedsup.supervisor import fdwatch
from feedsup.supervisor.relay import READY_TIMEOUT_S, RELAY_ID, Relay, RelaySpec
from feedsup.supervisor.metrics import Metrics
from feedsup.supervisor.sequencer import Sequencer
from feedsup.supervisor.spawn import WorkerProcess, credential_env_names, describe_exit, spawn
from feedsup import restlimit
from feedsup.ipc.spec import WorkerSpec

log = logging.getLogger("feedsup.parent")

# Frames handled per poll wake-up before timers and children get a turn.
DRAIN_BATCH = 2000
# Records published between two looks at the uplink socket's commands. The
# PULL takes turns among workers' pipes, but a pipe that ran empty rejoins
# only when the socket processes ZeroMQ's "activate" command, which recv
# does once per 100 messages while messages wait: behind a blasting worker
# (32-record batches) a quiet worker's next frame waited 3,200 records, 1-6
# ms. A look (getsockopt EVENTS, one poll syscall) every 64 records bounds
# that to about 0.1 ms, for 0.02-0.03 us per record (bench/funnel.py).
FAIR_RECORDS = 64
# Longest the loop sleeps: bounds how late a child's exit is noticed.
MAX_POLL_S = 0.1
METRICS_PERIOD_S = 1.0
STATE_PERIOD_S = 1.0
# How often the relay's reports and exit are looked at.
RELAY_PERIOD_S = 0.2
PUB_FLUSH_MS = 1000
# A parent resuming from saved state waits this long before its first spawn:
# subscribers of the previous parent reconnect (ZeroMQ retries every 100 ms)
# before the backfill of the outage is published, or PUB would drop it.
REJOIN_GRACE_S = 1.0
STATE_DROPS_LOGGED = 20
# A client gets this long to complete the ZeroMQ (and CURVE) handshake.
HANDSHAKE_MS = 5000
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: could not bind a socket
EXIT_REPORT_GRACE_S = 0.25
MAX_SUPERSEDED = 256    # rotated-out workers whose late batches are ignored
# The parent's receive queue per worker, in messages (each a batch of up to
# uplink.MAX_BATCH records): bounded, so a slow parent makes the workers
# queue, then drop and report gaps, instead of growing without limit.
UPLINK_RCVHWM = 1000
# Control requests and subscriptions are small; anything bigger is refused by ZeroMQ.
CONTROL_MAX_MESSAGE = 1 << 20
# Recent hello tokens seen subscribing on the PUB socket (catch_up's proof
# that a subscription is live); the oldest are forgotten past this.
MAX_HELLOS = 1024
# The head of a published payload: map header, "seq", uint32 marker, seq,
# then "epoch" with its uint32 marker and value (one pack per frame).
_SEQ_HEAD = struct.Struct(">B4sBI11s")
assert len(frames.SEQ_KEY) == 4 and len(frames.EPOCH_KEY) == 6


class Parent:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.config = config
        self.pid = os.getpid()
        self.policy = pol.Policy(config.streams, config.restart, rng or random.Random())
        self.sequencer = Sequencer()
        # Seqs start at 1 again in every parent; the epoch in each frame
        # lets consumers tell this parent's frames from its predecessor's.
        self.epoch = frames.new_epoch()
        self._epoch_kv = frames.epoch_field(self.epoch)
        assert len(self._epoch_kv) == _SEQ_HEAD.size - 10
        self.workers: dict[int, WorkerProcess] = {}
        self.rates: dict[int, tuple[float, int, float]] = {}   # instance -> (t, msgs, msgs/s)
        self.rundir = tempfile.mkdtemp(prefix="feedsup-")
        self.uplink = f"ipc://{self.rundir}/uplink"
        self.started = time.monotonic()
        self.published = 0
        self._signalled: int | None = None
        self._pending: list[Any] = []
        self._streams = {s.name: s for s in config.streams}
        self._credential_env = credential_env_names(config.streams)   # kept out of other workers' env
        # Config guarantees each topic has one owner (see topic_prefix).
        self._topic_owner = {t: s.name for s in config.streams
                             for t in topics.stream_topics(s.channel, s.symbols, s.intervals, s.topic_prefix)}
        self.metrics = (Metrics(0 if config.metrics_port == ANY_PORT else config.metrics_port)
                        if config.metrics_port else None)
        self._metrics_due = 0.0
        self.last_values: dict[bytes, bytes] = {}    # topic -> last payload published
        self.open_gaps: dict[bytes, dict[str, Any]] = {}
        self.pub: zmq.Socket | None = None
        # tcp:// pub or control: served by the relay process; the parent binds
        # private ipc endpoints for it and never listens on TCP (relay.py).
        self._relay: Relay | None = None
        self._relay_due = 0.0
        self._state_due = 0.0
        self._marks_behind: dict[str, Any] = {}
        self._origins = saved.Origins(config)    # where each topic's marks come from
        self._auth: Any = None                      # CURVE: the ZAP handler thread, and
        self._gate: curve.Gatekeeper | None = None  # its allow-list and refusal count
        # What workers may send: the topics each stream owns (bytes, for the
        # hot loop), and who is being restarted for sending something else.
        self._owner_b = {t.encode(): s for t, s in self._topic_owner.items()}
        self._owned: dict[str, frozenset[bytes]] = {
            name: frozenset(t for t, s in self._owner_b.items() if s == name) for name in self._streams}
        self._misbehaving: set[int] = set()
        self._vetted: set[int] = set()      # instances whose first batch was decoded in full
        # Workers retired by a rotation: their successor streams everything
        # from its subscription on, so what they still send is dropped (an
        # account event could otherwise repeat one the successor's snapshot
        # holds, unflagged). The newest few are kept: their batches may
        # still be queued after they are reaped.
        self._superseded: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.rejected = 0
        self._hellos: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._drains = 0
        self.sink = None
        if config.sink is not None:     # nats is imported only then (feedsup/sinks/nats.py)
            from feedsup.sinks.nats import NatsSinkThread
            self.sink = NatsSinkThread(config.sink, config.instance or socket.gethostname(), list(self._topic_owner))
        self._seeded = False
        self._sink_batch: list[Any] = []    # frames published, in order, not yet handed to the sink
        # symbols = "*" streams: their live universes, and the thread that
        # re-reads exchangeInfo for them (listings and delistings).
        self._universes = universe.universes_of(config)
        self._refresher = self._make_refresher()

    # -- public surface used by control commands ------------------------------

    def stream_names(self) -> list[str]:
        return list(self._streams)

    def restart(self, stream: str) -> None:
        self._pending += self.policy.request_restart(stream, time.monotonic())

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        rows = []
        for row in self.policy.status(now):
            inst = row.get("instance")
            worker = self.workers.get(inst) if inst is not None else None
            stats = row.get("stats") or {}
            rows.append({
                **row,
                "pid": worker.pid if worker else None,
                "msgs_per_s": self.rates.get(inst, (0, 0, 0.0))[2] if inst is not None else 0.0,
                "last_msg_age": stats.get("idle"),
                "lag_ms": stats.get("lag_ms"),
                "drops": stats.get("drops", 0),
            })
        return {
            "pid": self.pid,
            "epoch": self.epoch,
            "uptime": now - self.started,
            "published": self.published,
            "suppressed": self.sequencer.suppressed,
            "curve_refused": self._curve_refused(),
            "rejected": self.rejected,
            **self._tcp_status(),
            "metrics_port": self.metrics.port if self.metrics is not None else None,
            "streams": rows,
            "sink": self.sink.status() if self.sink is not None else None,
        }

    def _curve_refused(self) -> int | None:
        if not self.config.curve_server_key_file:
            return None
        relayed = self._relay.total("curve_refused") if self._relay is not None else 0
        return (self._gate.refused if self._gate is not None else 0) + relayed

    def _tcp_status(self) -> dict[str, Any]:
        """The parent's descriptors, and the relay's fd guard and state."""
        relay = self._relay
        limit = fdwatch.fd_limit()
        return {"fds": {"open": fdwatch.count_open_fds(limit), "limit": limit},
                "tcp_refusing": relay.report.get("tcp_refusing") if relay is not None else None,
                "tcp_closures": relay.total("tcp_closures") if relay is not None else 0,
                "tcp_refused": relay.total("tcp_refused") if relay is not None else 0,
                "relay": relay.status() if relay is not None else None}

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        fds_before, fds = fdlimit.raise_fd_limit()
        if fds != fds_before or fds < 4096:
            logs.event(log, "fd limit", logging.WARNING if fds < 4096 else logging.INFO, soft=fds,
                       was=fds_before)
        ctx = zmq.Context()
        try:
            sockets = self._bind(ctx)
            self._start_relay()
            if self.metrics is not None:
                self.metrics.start()
        except (zmq.ZMQError, OSError) as exc:
            # pub, control or metrics_port is taken or invalid: say which, exit 69.
            logs.event(log, "bind failed", logging.ERROR, error=str(exc), pub=self.config.pub,
                       control=self.config.control, metrics_port=self.config.metrics_port or None)
            if self._relay is not None:
                self._relay.stop()
            self._stop_auth()
            ctx.destroy(linger=0)
            shutil.rmtree(self.rundir, ignore_errors=True)
            return EXIT_UNAVAILABLE
        pull, pub, ctl = sockets
        self.pub = pub
        if self.sink is not None:
            self.sink.start()
        if self._refresher is not None:
            self._refresher.start()
        old_handlers = self._install_signals()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(ctl, zmq.POLLIN)
        start_at = time.monotonic() + (REJOIN_GRACE_S if self._restore_state() else 0.0)
        logs.event(log, "started", pid=self.pid, pub=self.config.pub, control=self.config.control,
                   streams=len(self.config.streams))
        code = None
        gc.freeze()   # long-lived start-up objects: keep them out of GC pauses
        try:
            started = False
            while code is None:
                if not started and time.monotonic() >= start_at and self._sink_seeded():
                    started = True
                    code = self._execute(self.policy.start(time.monotonic()))
                    continue
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if pull in ready:
                    self._drain(pull, pub)
                if ctl in ready:
                    self._serve_control(ctl)
                code = self._housekeeping()
        finally:
            if self._refresher is not None:
                self._refresher.stop()
            if self.metrics is not None:
                self.metrics.stop()
            self._kill_all()
            # Let PUB hand its queue to subscribers before the last save.
            pub.close(linger=PUB_FLUSH_MS)
            # Every seq given out: a subscriber that got them all sums its topics' last seqs to this.
            logs.event(log, "stopped", published=self.published)
            if self._relay is not None:     # after the flush: it passes the last frames on
                self._relay.stop()
            if self.sink is not None:
                self._flush_sink()
                self.sink.stop()
            self._save_state(final=True)
            for sock in sockets:
                sock.close(linger=0)
            self._stop_auth()
            ctx.term()
            shutil.rmtree(self.rundir, ignore_errors=True)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
        logs.event(log, "exited", code=code)
        return code

    def _bind(self, ctx: zmq.Context) -> tuple[zmq.Socket, zmq.Socket, zmq.Socket]:
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, UPLINK_RCVHWM)   # workers queue the rest, then drop and say so
        pull.setsockopt(zmq.MAXMSGSIZE, frames.MAX_MESSAGE)
        pull.bind(self.uplink)
        # XPUB sends like PUB; it also shows us subscriptions (catch_up's hello).
        pub = ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.SNDHWM, self.config.pub_hwm)
        pub.setsockopt(zmq.LINGER, 0)
        ctl = ctx.socket(zmq.ROUTER)
        ctl.setsockopt(zmq.LINGER, 0)
        pub_at, ctl_at = self._parent_endpoints()
        # CURVE where clients meet the parent itself (ipc); on tcp the relay serves it.
        keys = self._curve_keys(ctx) if (pub_at, ctl_at) != self._relayed_endpoints() else None
        for sock in (pub, ctl):
            # A peer that never completes the ZeroMQ handshake (an idle TCP
            # connection, a port scanner) is dropped after this, not kept
            # holding an fd forever; dead peers are found by keepalive.
            sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
            # What a peer may send us: subscriptions (XPUB) and requests.
            sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_MESSAGE)
        for sock, at in ((pub, pub_at), (ctl, ctl_at)):
            if keys is not None and at not in self._relayed_endpoints():
                curve.serve(sock, *keys)
            endpoints.bind_private(sock, at)
        return pull, pub, ctl

    def _relayed_endpoints(self) -> tuple[str, str]:
        """The private ipc endpoints the relay connects to."""
        return f"ipc://{self.rundir}/pub-relay", f"ipc://{self.rundir}/ctl-relay"

    def _parent_endpoints(self) -> tuple[str, str]:
        """Where the parent binds PUB and control: a tcp:// one is the relay's."""
        relay_pub, relay_ctl = self._relayed_endpoints()
        return (relay_pub if self.config.pub.startswith("tcp://") else self.config.pub,
                relay_ctl if self.config.control.startswith("tcp://") else self.config.control)

    def _start_relay(self) -> None:
        """With a tcp:// endpoint, start the relay and wait until it bound it
        (OSError with the reason if it could not: exit 69 as for our own binds)."""
        pub_at, ctl_at = self._parent_endpoints()
        relay_pub, relay_ctl = self._relayed_endpoints()
        if pub_at != relay_pub and ctl_at != relay_ctl:
            return
        spec = RelaySpec(
            parent_pid=self.pid,
            pub=self.config.pub if pub_at == relay_pub else None, pub_upstream=relay_pub,
            control=self.config.control if ctl_at == relay_ctl else None, control_upstream=relay_ctl,
            pub_hwm=self.config.pub_hwm, handshake_ms=HANDSHAKE_MS, max_message=CONTROL_MAX_MESSAGE,
            curve_key_file=self.config.curve_server_key_file or "",
            curve_allowed=tuple(self.config.curve_allowed_clients or ()), log_format=self.config.log_format)
        self._relay = Relay(spec, self._credential_env)
        self._relay.start(time.monotonic())
        problem = self._relay.wait_ready(READY_TIMEOUT_S)
        if problem is not None:
            raise OSError(f"relay: {problem}")

    def _curve_keys(self, ctx: zmq.Context) -> tuple[bytes, bytes] | None:
        """The server key pair, with the ZAP handler started (before any bind)."""
        if not self.config.curve_server_key_file:
            return None
        try:
            public, secret = curve.parse_certificate(
                read_regular_file(self.config.curve_server_key_file, curve.MAX_CERT_BYTES, private=True),
                self.config.curve_server_key_file)
        except curve.CurveKeyError as exc:
            raise OSError(str(exc)) from None
        self._auth, self._gate = curve.start_authenticator(ctx, self.config.curve_allowed_clients)
        return public, secret

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _install_signals(self) -> dict[int, Any]:
        def on_signal(signum: int, frame: Any) -> None:
            self._signalled = signum
        return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def _poll_timeout_ms(self) -> int:
        deadline = self.policy.next_deadline()
        wait = MAX_POLL_S if deadline is None else min(MAX_POLL_S, deadline - time.monotonic())
        return max(0, int(wait * 1000))

    def _drain(self, pull: zmq.Socket, pub: zmq.Socket) -> None:
        # The hot path: kept flat, with locals, because every record passes
        # here. A message is one control map or a batch of records (frames.py).
        # Nothing a worker sends is trusted: a record out of bounds, on a
        # topic its stream does not own, or whose body is not a fixmap of at
        # most MAX_BODY_KEYS keys ends the batch and gets the worker restarted
        # (``_reject``). The checks cost a few comparisons per record.
        recv = pull.recv
        look = pull.getsockopt
        events = zmq.EVENTS
        send = pub.send
        sequencer = self.sequencer
        admit = sequencer.admit
        # Sequencer.admit inlined for the common case (a topic's next frame):
        # one dict read and two dict writes instead of three calls.
        marks = sequencer._marks
        seqs = sequencer._seq
        splice = _SEQ_HEAD.pack
        unpack_header = frames.HEADER.unpack_from
        unpack_batch = frames.BATCH_HEAD.unpack_from
        header_end = frames.HEADER_END
        batch_start = frames.BATCH_START
        seq_key = frames.SEQ_KEY
        epoch_kv = self._epoch_kv
        packb = msgpack.packb
        last_values = self.last_values
        open_gaps = self.open_gaps
        owned_by = self._owned
        nothing: frozenset[bytes] = frozenset()
        workers = self.workers
        misbehaving = self._misbehaving
        superseded = self._superseded
        vetted = self._vetted
        sndmore = zmq.SNDMORE
        DATA, GAP, BATCH = frames.DATA, frames.GAP, frames.BATCH
        max_map = 0x80 + frames.MAX_BODY_KEYS
        published = 0
        next_look = FAIR_RECORDS
        self._drains += 1
        if not self._drains & 255:
            # The XPUB's subscription messages queue until read; reading them
            # here (and on control requests) keeps that queue short without
            # polling one more socket per wake-up (0.45 us a poll).
            self._note_subscriptions(pub)
        to_sink = self._sink_batch if self.sink is not None else None
        for _ in range(DRAIN_BATCH):
            if published >= next_look:
                look(events)        # lets a pipe that ran empty take its turn again
                next_look = published + FAIR_RECORDS
            try:
                message = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            end = len(message)
            if not end or message[0] != BATCH or end < batch_start:
                if end and message[0] == frames.CONTROL:
                    self._control_message(message)
                else:
                    self._reject(None, "neither a batch nor a control message")
                continue
            inst = unpack_batch(message, 1)[0]
            if misbehaving and inst in misbehaving:
                continue                    # being restarted for what it sent
            if superseded and inst in superseded:
                continue                    # retired by a rotation
            worker = workers.get(inst)
            # A reaped worker's last batches may still be queued: any stream's
            # topics pass then ("" is no stream's name, so _owns decides).
            stream = worker.stream if worker is not None else ""
            owned = owned_by.get(stream, nothing)
            pos = batch_start
            bad = None
            if inst not in vetted and worker is not None:
                # A worker's first batch is decoded in full, once: a wrong
                # encoder shows at once, at no cost per frame afterwards.
                bad = self._vet(inst, stream, message)
                if bad:
                    self._reject(inst, bad)
                    continue
            try:
                while pos < end:
                    kind = message[pos]
                    major, minor, final, tlen, blen = unpack_header(message, pos + 1)
                    start = pos + header_end
                    body_at = start + tlen
                    pos = body_at + blen
                    topic = message[start:body_at]
                    head = message[body_at]
                    if pos > end or not 0x80 <= head <= max_map:
                        bad = f"record out of bounds, or its body is not a msgpack map of at most {frames.MAX_BODY_KEYS} keys"
                        break
                    if topic not in owned and not self._owns(stream, topic):
                        bad = "record on a topic its stream does not own"
                        break
                    if kind != DATA:
                        if kind != GAP:
                            bad = "record of unknown kind"
                            break
                        bad = self._worker_gap(topic, message[body_at:pos])
                        if bad:
                            break
                        continue
                    mark = marks.get(topic)
                    if mark is not None and (major > mark[0] or (major == mark[0] and not mark[2]
                                                                 and (final or minor > mark[1]))):
                        # is_newer, inlined: strictly after the topic's mark
                        marks[topic] = (major, minor, final)
                        seq = seqs.get(topic, 0) + 1
                        seqs[topic] = seq
                    else:
                        seq = admit(topic, major, minor, final)   # first of its topic, or a repeat
                        if not seq:
                            continue
                    if open_gaps and topic in open_gaps:
                        # The notice takes this seq, the frame the next one.
                        self._close_gap(topic, message[body_at:pos], seq)
                        seq = sequencer.next_seq(topic)
                    # Splice seq and epoch into the body's msgpack map
                    # (frames.with_seq, inlined): one struct pack.
                    if seq <= 0xFFFFFFFF:
                        payload = splice(head + 2, seq_key, 0xCE, seq, epoch_kv) + message[body_at + 1:pos]
                    else:
                        payload = b"".join((bytes((head + 2,)), seq_key, packb(seq), epoch_kv,
                                            message[body_at + 1:pos]))
                    send(topic, sndmore)
                    send(payload)
                    last_values[topic] = payload
                    published += 1
                    if to_sink is not None:
                        to_sink.append((topic, major, minor, final, payload))
            except (struct.error, IndexError):
                bad = "truncated record"
            if bad:
                self._reject(inst, bad)
        self.published += published
        if to_sink:
            self._flush_sink()

    def _vet(self, inst: int, stream: str, message: bytes) -> str | None:
        """Decode every data record body of a batch in full; say what is
        wrong with one, if anything. Framing (bounds, fixmap, ownership) and
        gap records are left to ``_drain``'s own checks."""
        pos, end = frames.BATCH_START, len(message)
        try:
            while pos < end:
                kind = message[pos]
                tlen, blen = frames.HEADER.unpack_from(message, pos + 1)[3:]
                start = pos + frames.HEADER_END
                pos = start + tlen + blen
                topic, body = message[start:start + tlen], message[start + tlen:pos]
                if pos > end:
                    return None     # a framing error: _drain names it
                if kind != frames.DATA or not body or not 0x80 <= body[0] <= 0x80 + frames.MAX_BODY_KEYS:
                    continue
                try:
                    fields = msgpack.unpackb(body)
                except Exception:
                    return "record body is not msgpack"
                if type(fields) is not dict or fields.get("topic") != topic.decode(errors="replace") \
                        or fields.get("stream") != stream or type(fields.get("recv_ns")) is not int \
                        or "data" not in fields:
                    return "record body is not {topic, stream, recv_ns, data} of its own topic and stream"
        except (struct.error, IndexError):
            return None         # a framing error: _drain names it
        self._vetted.intersection_update(self.workers)    # forget reaped ones: bounded
        self._vetted.add(inst)
        return None

    def _owns(self, stream: str, topic: bytes) -> bool:
        """Slow path of the ownership check. Market topics are all in
        ``_owner_b``; account topics carry the stream's name,
        ``account.<event>.<stream>``."""
        if not stream:          # sender already reaped: any stream's topic
            return topic in self._owner_b or any(self._owns(s, topic) for s in self._streams)
        conf = self._streams.get(stream)
        if conf is None or conf.channel != "account" or len(topic) > 256 or not topic.startswith(b"account."):
            return False
        event, dot, name = topic[len(b"account."):].partition(b".")
        return bool(dot) and event.replace(b"_", b"").isalnum() and name == stream.encode()

    def _worker_gap(self, topic: bytes, body: bytes) -> str | None:
        """Publish a worker's gap record, or say why it is malformed."""
        try:
            fields = msgpack.unpackb(body)
        except Exception:
            return "gap record body is not msgpack"
        if type(fields) is not dict or type(fields.get("gap")) is not dict or fields.get("data") is not None:
            return "gap record body is not a gap notice"
        stream = self._streams.get(self._topic_owner.get(topic.decode(errors="replace"), ""))
        if stream is not None and stream.channel not in gaps.NO_HISTORY:
            # What this topic already delivered is no loss (a rotation
            # successor whose REST failed names ids its predecessor published).
            gap = self.sequencer.trim_gap(topic, fields["gap"], kline=stream.channel == "kline")
            if gap is None:
                return None
            if gap is not fields["gap"]:
                body = msgpack.packb({**fields, "gap": gap})
        self._publish(topic, body)
        return None

    def _reject(self, inst: int | None, reason: str) -> None:
        """Count and log what a worker sent that cannot be used; restart the
        worker when we know which one sent it. The log fields stay few and
        fixed, so the log's rate limit folds repeats into one line."""
        self.rejected += 1
        worker = self.workers.get(inst) if inst is not None else None
        logs.event(log, "rejected", logging.WARNING, stream=worker.stream if worker else None,
                   instance=inst if worker else None, reason=reason)
        if worker is None or inst in self._misbehaving:
            return
        self._misbehaving.intersection_update(self.workers)   # forget reaped ones: bounded
        self._misbehaving.add(inst)
        # The restart carries this reason: ``_reap`` takes it from the exit report.
        worker.exit_report = {"reason": f"refused: {reason}", "fatal": False}
        self._pending.append(pol.Kill(inst, f"refused: {reason}"))

    def _publish(self, topic: bytes, body: bytes, seq: int | None = None) -> None:
        """Publish outside the hot path (gap notices)."""
        payload = frames.with_seq(body, seq if seq is not None else self.sequencer.next_seq(topic), self.epoch)
        self.pub.send(topic, zmq.SNDMORE)
        self.pub.send(payload)
        self.last_values[topic] = payload
        if self.sink is not None:
            self._sink_batch.append((topic, None, 0, False, payload))
        self.published += 1

    def _sink_seeded(self) -> bool:
        """Topics without a saved watermark resume from the newest event
        JetStream holds (stored by this instance or its A/B partner)."""
        if self.sink is None or self._seeded:
            return True
        seed = self.sink.seed_marks(time.monotonic())
        if seed is None:
            return False
        known = self.sequencer.marks()
        self.sequencer.restore({t: k for t, k in seed.items() if t not in known})
        self._seeded = True
        return True

    def _flush_sink(self) -> None:
        self.sink.offer(self._sink_batch)
        self._sink_batch = []

    def _announce_loss(self, stream_name: str, reason: str, fatal: bool = False) -> None:
        """The stream's source is gone: publish the gap notices ``gaps.on_loss``
        decides (a restart by the operator backfills the others, so its next
        frame ends their gap)."""
        stream = self._streams[stream_name]
        names = topics.stream_topics(stream.channel, stream.symbols, stream.intervals, stream.topic_prefix)
        for topic, gap, keep_open in gaps.on_loss(stream.channel, names, self.open_gaps, self._last_ms,
                                                  reason, fatal):
            tb = topic.encode()
            if keep_open:
                self.open_gaps[tb] = gap
            self._publish(tb, frames.encode_gap_body(topic, stream_name, time.time_ns(), **gap))

    def _last_ms(self, topic: bytes) -> int | None:
        last = self.last_values.get(topic)
        return msgpack.unpackb(last)["recv_ns"] // 1_000_000 if last else None

    def _close_gap(self, topic: bytes, body: bytes, seq: int) -> None:
        """The first regular frame after a loss: say exactly what was lost."""
        gap = self.open_gaps.pop(topic)
        try:
            first = msgpack.unpackb(body)
            recv_ns, stream = int(first["recv_ns"]), str(first["stream"])
        except Exception:   # the frame's own checks are the worker's; the notice must go out
            recv_ns, stream = time.time_ns(), self._owner_b.get(topic, "")
        gap = gaps.closed(gap, recv_ns)
        self._publish(topic, frames.encode_gap_body(topic.decode(errors="replace"), stream, recv_ns, **gap),
                      seq)

    def last_frames(self, prefix: str) -> list[bytes]:
        p = prefix.encode()
        return [payload for topic, payload in sorted(self.last_values.items()) if topic.startswith(p)]

    def hello(self, token: str) -> bool:
        """Has a subscription to ``HELLO_PREFIX + token`` reached our PUB
        socket? Subscriptions of one SUB socket travel in order, so once this
        one has, every earlier one of that socket is live too. Nothing is
        published: consumers never see a marker."""
        if self.pub is not None:
            self._note_subscriptions(self.pub)
        return token.encode() in self._hellos

    def _note_subscriptions(self, pub: zmq.Socket) -> None:
        """Read the XPUB's subscription messages; keep recent hello tokens."""
        prefix = b"\x01" + topics.HELLO_PREFIX.encode()
        hellos = self._hellos
        for _ in range(DRAIN_BATCH):
            try:
                msg = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg.startswith(prefix) and len(msg) <= len(prefix) + 64:
                hellos[msg[len(prefix):]] = None
                if len(hellos) > MAX_HELLOS:
                    hellos.popitem(last=False)

    def _control_message(self, message: bytes) -> None:
        """Decode and check one control message, then act on it; anything
        malformed is rejected (and its sender restarted, if known)."""
        try:
            msg = frames.decode_control(message)
        except Exception:
            self._reject(None, "control message is not msgpack")
            return
        problem = frames.check_control(msg)
        inst = msg.get("instance") if type(msg) is dict and type(msg.get("instance")) is int else None
        if problem is not None:
            self._reject(inst, problem)
            return
        if inst not in self.workers or inst in self._misbehaving:
            return      # a worker already reaped, or being restarted: nothing to act on
        try:
            self._on_control(msg)
        except Exception as exc:   # a value the checks let through must not take the parent down
            self._reject(inst, f"control message not usable: {exc.__class__.__name__}")

    def _on_control(self, msg: dict[str, Any]) -> None:
        """Act on a checked control message (``frames.check_control``)."""
        kind = msg["type"]
        inst = msg["instance"]
        now = time.monotonic()
        p = self.policy
        if kind == Control.LIVE:
            stats = msg["stats"]
            self._note_rate(inst, stats, now)
            if self.metrics is not None and stats.get("lag_ms") is not None:
                self.metrics.observe_lag(msg["stream"], stats["lag_ms"])
            self._pending += p.on_liveness(inst, stats, now)
        elif kind == Control.READY:
            self._pending += p.on_ready(inst, now)
        elif kind == Control.STREAMING:
            self._pending += p.on_streaming(inst, now)
        elif kind == Control.NOTICE:
            logs.event(log, "notice", stream=msg["stream"], instance=inst, notice=msg["event"])
            self._pending += p.on_notice(inst, msg["event"], now)
        elif kind == Control.EXIT:
            worker = self.workers.get(inst)
            if worker is not None:
                worker.exit_report = msg

    def _note_rate(self, inst: int, stats: dict[str, Any], now: float) -> None:
        msgs = stats.get("msgs", 0)
        prev = self.rates.get(inst)
        rate = 0.0
        if prev is not None and now > prev[0]:
            rate = (msgs - prev[1]) / (now - prev[0])
        self.rates[inst] = (now, msgs, rate)

    def _serve_control(self, ctl: zmq.Socket) -> None:
        if self.pub is not None:
            self._note_subscriptions(self.pub)
        # Bounded per wake-up, so a flood of requests cannot starve the workers.
        for _ in range(DRAIN_BATCH):
            try:
                parts = ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) < 2 or len(parts) > 4:
                continue        # not a request envelope: nothing sensible to answer
            body = parts[-1]
            try:
                request = msgpack.unpackb(body)
            except Exception:
                request = None
            try:
                reply = msgpack.packb(control.dispatch(self, request), default=str)
            except Exception as exc:   # a command must never take the parent down
                logs.event(log, "control error", logging.WARNING, error=exc.__class__.__name__)
                reply = msgpack.packb({"ok": False, "error": f"internal error: {exc.__class__.__name__}"})
            try:
                # Through the relay's DEALER the envelope is [relay, client, ""]:
                # all of it goes back, so the relay can route the reply.
                envelope = parts[:2] if parts[0] == RELAY_ID and len(parts) == 4 else parts[:1]
                ctl.send_multipart(envelope + [b"", reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass            # the client is gone or not reading: drop the reply

    def _housekeeping(self) -> int | None:
        now = time.monotonic()
        actions = self._pending
        self._pending = []
        if self._signalled is not None:
            logs.event(log, "stop requested", signal=signal.Signals(self._signalled).name)
            self._signalled = None
            actions += self.policy.request_stop(now)
        actions += self._reap(now)
        if self._refresher is not None and self._refresher.pending:
            actions += self._refresh_universes(now)
        actions += self.policy.tick(now)
        if self._relay is not None and now >= self._relay_due:
            self._relay_due = now + RELAY_PERIOD_S
            self._relay.poll(now)
        if self._sink_batch:
            self._flush_sink()
        if self.config.state_file and now >= self._state_due:
            self._state_due = now + STATE_PERIOD_S
            self._save_state()
        if self.metrics is not None and now >= self._metrics_due:
            self._metrics_due = now + METRICS_PERIOD_S
            self.metrics.update(self.status())
        return self._execute(actions)

    def _reap(self, now: float) -> list[Any]:
        actions: list[Any] = []
        for inst, worker in list(self.workers.items()):
            code = worker.poll()
            if code is None:
                continue
            if worker.exited_at is None:
                worker.exited_at = now
            # A worker's last frames and its EXIT report may still be in
            # flight through the I/O thread; wait for the report briefly so
            # the restart carries the real reason.
            if worker.exit_report is None and now - worker.exited_at < EXIT_REPORT_GRACE_S:
                continue
            del self.workers[inst]
            self.rates.pop(inst, None)
            report = worker.exit_report or {}
            reason = report.get("reason") or describe_exit(code)
            actions += self.policy.on_exit(inst, code, reason, bool(report.get("fatal")), now)
        return actions

    def _execute(self, actions: list[Any]) -> int | None:
        code = None
        for action in actions:
            if isinstance(action, pol.Spawn):
                self._spawn(action)
            elif isinstance(action, pol.Terminate):
                if action.reason == pol.ROTATED:
                    self._supersede(action.instance)
                self._signal(action.instance, action.reason, kill=False)
            elif isinstance(action, pol.Kill):
                self._signal(action.instance, action.reason, kill=True)
            elif isinstance(action, pol.Restarted):
                if self.metrics is not None:
                    self.metrics.count_restart(action.stream, action.reason)
            elif isinstance(action, pol.StateChanged):
                if self.pub is not None:
                    if action.new is pol.State.FATAL:
                        self._announce_loss(action.stream, f"stream FATAL: {action.reason}", fatal=True)
                    elif action.old is pol.State.RUNNING:
                        self._announce_loss(action.stream, action.reason)
                logs.event(log, "state", logging.WARNING if action.new.name == "FATAL" else logging.INFO,
                           stream=action.stream, old=action.old.name, new=action.new.name,
                           reason=action.reason)
            elif isinstance(action, pol.Exit):
                logs.event(log, "exit", code=action.code, reason=action.reason)
                code = action.code
        return code

    # -- symbols = "*": listings and delistings while running ------------------------

    def _make_refresher(self) -> refresh.Refresher | None:
        if not self._universes or self.config.universe_refresh <= 0:
            return None
        sources = []
        for market in dict.fromkeys(u.template.market for u in self._universes):
            rest_url = self.config.endpoint(market).rest_url
            sources.append(refresh.Source(market, rest_url,
                                          restlimit.budget_dir(self.config.state_file, self.rundir, rest_url)))
        return refresh.Refresher(sources, self.config.universe_refresh)

    def _refresh_universes(self, now: float) -> list[Any]:
        """New exchangeInfo answers: carry out ``universe.plan``'s decisions.
        Only the connections whose symbols changed are touched."""
        actions: list[Any] = []
        for answer in self._refresher.take():
            if answer.body is None:
                continue            # logged by the thread; retried next period
            for u in self._universes:
                if u.template.market != answer.market:
                    continue
                try:
                    steps = universe.plan(u, u.update(answer.body))
                except Exception as exc:     # a body we cannot read must not take the parent down
                    logs.event(log, "exchangeInfo unusable", logging.WARNING, error=repr(exc)[:300])
                    continue
                for step in steps:
                    try:
                        actions += self._carry_out(u, step, now)
                    except (pol.UnknownStream, ValueError) as exc:   # a slot still stopping
                        logs.event(log, "universe change skipped", logging.WARNING, error=str(exc))
        return actions

    def _carry_out(self, u: universe.Universe, step: Any, now: float) -> list[Any]:
        if isinstance(step, universe.RemoveSlot):
            logs.event(log, "universe", stream=step.name, action="remove", delisted=",".join(step.delisted))
            self._announce_delisted(step.name, u.template, step.delisted)
            return self.policy.remove_stream(step.name, "delisted: every symbol left", now)
        self._adopt(step.stream)
        if isinstance(step, universe.AddSlot):
            logs.event(log, "universe", stream=step.stream.name, action="add", listed=",".join(step.stream.symbols))
            return self.policy.add_stream(step.stream, now)
        logs.event(log, "universe", stream=step.stream.name, action="rotate", listed=",".join(step.listed),
                   delisted=",".join(step.delisted))
        self._announce_delisted(step.stream.name, u.template, step.delisted)
        return self.policy.reconfigure(step.stream, now)

    def _adopt(self, stream: Any) -> None:
        """A stream's new config: its new topics become its own. Topics it
        had stay allowed to it (its current worker may still send them until
        its successor takes over)."""
        self._streams[stream.name] = stream
        names = topics.stream_topics(stream.channel, stream.symbols, stream.intervals, stream.topic_prefix)
        if self.sink is not None:
            self.sink.add_topics([t for t in names if t not in self._topic_owner])
        for t in names:
            self._topic_owner[t] = stream.name
            self._owner_b[t.encode()] = stream.name
        # In place: _drain holds this dict as a local.
        self._owned[stream.name] = self._owned.get(stream.name, frozenset()) | {t.encode() for t in names}
        self._origins.add(stream, self.config.endpoint(stream.market))

    def _announce_delisted(self, stream_name: str, template: Any, symbols: tuple[str, ...]) -> None:
        for symbol in symbols:
            names = topics.stream_topics(template.channel, (symbol,), template.intervals, template.topic_prefix)
            reason = f"delisted: {symbol} is no longer TRADING in exchangeInfo"
            for topic, gap, _ in gaps.on_delisting(names, self._last_ms, reason):
                tb = topic.encode()
                self.open_gaps[tb] = gap
                self._publish(tb, frames.encode_gap_body(topic, stream_name, time.time_ns(), **gap))

    def _supersede(self, inst: int) -> None:
        self._superseded[inst] = None
        if len(self._superseded) > MAX_SUPERSEDED:
            self._superseded.popitem(last=False)

    def _restore_state(self) -> bool:
        """Load the saved state, if any; say whether there were watermarks."""
        if not self.config.state_file:
            return False
        try:
            state = saved.load(self.config.state_file)
        except saved.StateError as exc:
            logs.event(log, "state ignored", logging.WARNING, file=self.config.state_file, error=str(exc))
            return False
        if state is None:
            return False
        marks, dropped = saved.usable_marks(state, self._origins, time.time_ns() // 1_000_000)
        for topic, reason in dropped[:STATE_DROPS_LOGGED]:   # the total is in "state restored"
            logs.event(log, "state mark dropped", logging.WARNING, file=self.config.state_file, topic=topic,
                       mark=state.marks[topic], reason=reason)
        self.sequencer.restore(marks)
        self._marks_behind = dict(marks)
        now_wall, now_mono = time.time(), time.monotonic()
        self.policy.restore_connect_attempts(saved.to_monotonic(state.attempts, now_wall, now_mono), now_mono)
        logs.event(log, "state restored", file=self.config.state_file, topics=len(marks), dropped=len(dropped),
                   recent_attempts=len(state.attempts), age=f"{now_wall - state.saved_at:.1f}s")
        return bool(marks)

    def _save_state(self, final: bool = False) -> None:
        """Save watermarks and recent connection attempts.

        The watermarks written are always those of the previous save, one
        period old: frames still queued in PUB die with a crashed parent, and
        even a clean stop's flush drops frames for a subscriber at its
        high-water mark, with no later seq to reveal it. The older marks make
        a new parent replay that last second (flagged backfill) instead of
        losing it. ``final``: the last save, after PUB's flush.
        """
        if not self.config.state_file:
            return
        now_wall, now_mono = time.time(), time.monotonic()
        attempts = saved.to_wall(self.policy.connect_attempts(now_mono), now_wall, now_mono)
        current = self.sequencer.marks()
        # A topic first delivered since the previous save has no older mark:
        # its newest one still makes the next parent backfill the downtime.
        marks = {**current, **self._marks_behind}
        if not final:
            self._marks_behind = current
        if self.sink is not None:       # never past what JetStream acknowledged
            marks = self.sink.cap_marks(marks)
        try:
            saved.save(self.config.state_file, saved.SavedState(marks, attempts, now_wall), self._origins)
        except OSError as exc:
            logs.event(log, "state not saved", logging.WARNING, file=self.config.state_file, error=str(exc))

    def _spawn(self, action: Any) -> None:
        stream = self._streams[action.stream]
        spec = WorkerSpec(
            stream=stream,
            endpoint=self.config.endpoint(stream.market),
            uplink=self.uplink,
            parent_pid=self.pid,
            instance=action.instance,
            resume=self._resume_marks(stream.name),
            log_format=self.config.log_format,
            rundir=self.rundir,
            restdir=restlimit.budget_dir(self.config.state_file, self.rundir,
                                         self.config.endpoint(stream.market).rest_url),
        )
        try:
            worker = spawn(spec, self._credential_env)
        except (OSError, MemoryError, subprocess.SubprocessError) as exc:
            # EAGAIN (process limit), ENOMEM: a failed start, not a parent
            # crash. The policy sees an exit with no process behind it.
            reason = f"spawn failed: {exc}"
            logs.event(log, "spawn failed", logging.WARNING, stream=stream.name, instance=action.instance,
                       error=str(exc))
            self._pending += self.policy.on_exit(action.instance, None, reason, False, time.monotonic())
            return
        self.workers[action.instance] = worker
        logs.event(log, "spawn", stream=stream.name, instance=action.instance, pid=worker.pid,
                   reason=action.reason)

    def _resume_marks(self, stream: str) -> dict[str, int]:
        return {t: m for t, m in self.sequencer.watermarks().items() if self._topic_owner.get(t) == stream}

    def _signal(self, inst: int, reason: str, kill: bool) -> None:
        worker = self.workers.get(inst)
        if worker is None:
            return
        logs.event(log, "kill" if kill else "terminate", stream=worker.stream, instance=inst,
                   pid=worker.pid, reason=reason)
        worker.kill() if kill else worker.terminate()

    def _kill_all(self) -> None:
        """Never leave an orphan: whatever is still running gets SIGKILL."""
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.kill()
        for worker in self.workers.values():
            try:
                worker.proc.wait(timeout=5)
            except Exception:
                pass
