"""The parent's I/O shell: sockets, processes and signals around the policy.

Everything the parent *decides* lives in ``policy.py`` (restarts) and
``sequencer.py`` (what is published, with which seq). This loop only feeds
them facts and carries out their actions:

    worker PUSH --> [PULL] --sequencer--> [PUB] --> consumers
    worker control --> policy --> Spawn / Terminate / Kill / Exit
"""

from __future__ import annotations

import gc
import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import msgpack
import zmq

from feedsup import logs
from feedsup.config import ANY_PORT, Config
from feedsup.ipc import frames, topics
from feedsup.ipc.frames import Control
from feedsup.supervisor import control, policy as pol, state as saved
from feedsup.supervisor.metrics import Metrics
from feedsup.supervisor.sequencer import Sequencer
from feedsup.supervisor.spawn import WorkerProcess, credential_env_names, describe_exit, spawn
from feedsup.workers.runtime import EXIT_FATAL
from feedsup.workers.spec import WorkerSpec

log = logging.getLogger("feedsup.parent")

# Frames handled per poll wake-up before timers and children get a turn.
DRAIN_BATCH = 2000
# Longest the loop sleeps: bounds how late a child's exit is noticed.
MAX_POLL_S = 0.1
METRICS_PERIOD_S = 1.0
STATE_PERIOD_S = 1.0
PUB_FLUSH_MS = 1000
# A parent resuming from saved state waits this long before its first spawn:
# subscribers of the previous parent reconnect (ZeroMQ retries every 100 ms)
# before the backfill of the outage is published, or PUB would drop it.
REJOIN_GRACE_S = 1.0
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: could not bind a socket
EXIT_REPORT_GRACE_S = 0.25
# Channels whose history Binance does not serve: when their source is lost
# the parent announces a gap, and closes it with the next regular frame.
NO_HISTORY = frozenset({"bookTicker", "miniTicker", "ticker", "markPrice", "depth"})


class Parent:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.config = config
        self.pid = os.getpid()
        self.policy = pol.Policy(config.streams, config.restart, rng or random.Random())
        self.sequencer = Sequencer()
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
        self._state_due = 0.0
        self._marks_behind: dict[str, Any] = {}

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
            "uptime": now - self.started,
            "published": self.published,
            "suppressed": self.sequencer.suppressed,
            "metrics_port": self.metrics.port if self.metrics is not None else None,
            "streams": rows,
        }

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        ctx = zmq.Context()
        try:
            sockets = self._bind(ctx)
            if self.metrics is not None:
                self.metrics.start()
        except (zmq.ZMQError, OSError) as exc:
            # pub, control or metrics_port is taken or invalid: say which, exit 69.
            logs.event(log, "bind failed", logging.ERROR, error=str(exc), pub=self.config.pub,
                       control=self.config.control, metrics_port=self.config.metrics_port or None)
            ctx.destroy(linger=0)
            shutil.rmtree(self.rundir, ignore_errors=True)
            return EXIT_UNAVAILABLE
        pull, pub, ctl = sockets
        self.pub = pub
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
                if not started and time.monotonic() >= start_at:
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
            if self.metrics is not None:
                self.metrics.stop()
            self._kill_all()
            # Let PUB hand its queue to subscribers, so the exact watermarks
            # saved below are what they really received.
            pub.close(linger=PUB_FLUSH_MS)
            self._save_state(exact=True)
            for sock in sockets:
                sock.close(linger=0)
            ctx.term()
            shutil.rmtree(self.rundir, ignore_errors=True)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
        logs.event(log, "exited", code=code)
        return code

    def _bind(self, ctx: zmq.Context) -> tuple[zmq.Socket, zmq.Socket, zmq.Socket]:
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, 0)          # workers hold the backlog, not us
        pull.bind(self.uplink)
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.config.pub_hwm)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind(self.config.pub)
        ctl = ctx.socket(zmq.ROUTER)
        ctl.setsockopt(zmq.LINGER, 0)
        ctl.bind(self.config.control)
        return pull, pub, ctl

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
        recv = pull.recv
        send = pub.send
        admit = self.sequencer.admit
        unpack_header = frames.HEADER.unpack_from
        header_end = frames.HEADER_END
        seq_key = frames.SEQ_KEY
        packb = msgpack.packb
        last_values = self.last_values
        open_gaps = self.open_gaps
        sndmore = zmq.SNDMORE
        DATA, CONTROL = frames.DATA, frames.CONTROL
        published = 0
        for _ in range(DRAIN_BATCH):
            try:
                message = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message[0] == CONTROL:
                self._on_control(frames.decode_control(message))
                continue
            pos, end = 0, len(message)
            while pos < end:
                kind = message[pos]
                major, minor, final, tlen, blen = unpack_header(message, pos + 1)
                start = pos + header_end
                body_at = start + tlen
                pos = body_at + blen
                topic = message[start:body_at]
                if kind != DATA:
                    self._publish(topic, message[body_at:pos])
                    continue
                seq = admit(topic, major, minor, final)
                if not seq:
                    continue
                if open_gaps and topic in open_gaps:
                    # The notice takes this seq, the frame the next one.
                    self._close_gap(topic, message[body_at:pos], seq)
                    seq = self.sequencer.next_seq(topic)
                # Splice seq into the body's msgpack map (frames.with_seq, inlined).
                payload = b"".join((bytes((message[body_at] + 1,)), seq_key, packb(seq),
                                    message[body_at + 1:pos]))
                send(topic, sndmore)
                send(payload)
                last_values[topic] = payload
                published += 1
        self.published += published

    def _publish(self, topic: bytes, body: bytes, seq: int | None = None) -> None:
        """Publish outside the hot path (gap notices, hello)."""
        payload = frames.with_seq(body, seq if seq is not None else self.sequencer.next_seq(topic))
        self.pub.send(topic, zmq.SNDMORE)
        self.pub.send(payload)
        if not topic.startswith(topics.HELLO_PREFIX.encode()):
            self.last_values[topic] = payload
        self.published += 1

    def _announce_loss(self, stream_name: str, reason: str, fatal: bool = False) -> None:
        """The stream's source is gone: open a gap on each of its topics.

        On leaving RUNNING only channels without REST history get one (the
        next worker backfills the others). A FATAL stream has no next
        worker: every topic it owned gets one, and a topic whose gap is
        already open hears it again, with the FATAL reason. Gaps of channels
        without history close with their next regular frame; elsewhere a
        restart by the operator backfills, so its next frame ends the gap.
        """
        stream = self._streams[stream_name]
        no_history = stream.channel in NO_HISTORY
        if not (no_history or fatal):
            return
        for topic in topics.stream_topics(stream.channel, stream.symbols, stream.intervals, stream.topic_prefix):
            tb = topic.encode()
            gap = self.open_gaps.get(tb)
            if gap is not None and not fatal:
                continue
            if gap is None:
                last = self.last_values.get(tb)
                gap = {"from_ms": msgpack.unpackb(last)["recv_ns"] // 1_000_000 if last else None, "to_ms": None}
            gap = {**gap, "reason": reason}
            if no_history:
                self.open_gaps[tb] = gap
            self._publish(tb, frames.encode_gap_body(topic, stream_name, time.time_ns(), **gap))

    def _close_gap(self, topic: bytes, body: bytes, seq: int) -> None:
        """The first regular frame after a loss: say exactly what was lost."""
        gap = self.open_gaps.pop(topic)
        first = msgpack.unpackb(body)
        gap["to_ms"] = first["recv_ns"] // 1_000_000
        self._publish(topic, frames.encode_gap_body(first["topic"], first["stream"], first["recv_ns"], **gap),
                      seq)

    def last_frames(self, prefix: str) -> list[bytes]:
        p = prefix.encode()
        return [payload for topic, payload in sorted(self.last_values.items()) if topic.startswith(p)]

    def hello(self, token: str) -> None:
        """Publish a marker so a subscriber can tell its subscription is live."""
        topic = topics.HELLO_PREFIX + token
        self._publish(topic.encode(), msgpack.packb({"topic": topic, "stream": "", "recv_ns": time.time_ns(),
                                                     "data": None}))

    def _on_control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        inst = msg.get("instance")
        now = time.monotonic()
        p = self.policy
        if kind == Control.LIVE:
            stats = msg.get("stats") or {}
            self._note_rate(inst, stats, now)
            if self.metrics is not None and stats.get("lag_ms") is not None:
                self.metrics.observe_lag(msg.get("stream", "?"), stats["lag_ms"])
            self._pending += p.on_liveness(inst, stats, now)
        elif kind == Control.READY:
            self._pending += p.on_ready(inst, now)
        elif kind == Control.STREAMING:
            self._pending += p.on_streaming(inst, now)
        elif kind == Control.NOTICE:
            logs.event(log, "notice", stream=msg.get("stream"), instance=inst, notice=msg.get("event"))
            self._pending += p.on_notice(inst, msg.get("event", ""), now)
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
        while True:
            try:
                parts = ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident, body = parts[0], parts[-1]
            try:
                request = msgpack.unpackb(body)
            except Exception:
                request = None
            reply = control.dispatch(self, request)
            ctl.send_multipart([ident, b"", msgpack.packb(reply, default=str)])

    def _housekeeping(self) -> int | None:
        now = time.monotonic()
        actions = self._pending
        self._pending = []
        if self._signalled is not None:
            logs.event(log, "stop requested", signal=signal.Signals(self._signalled).name)
            self._signalled = None
            actions += self.policy.request_stop(now)
        actions += self._reap(now)
        actions += self.policy.tick(now)
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
            fatal = bool(report.get("fatal")) and code == EXIT_FATAL
            actions += self.policy.on_exit(inst, code, reason, fatal, now)
        return actions

    def _execute(self, actions: list[Any]) -> int | None:
        code = None
        for action in actions:
            if isinstance(action, pol.Spawn):
                self._spawn(action)
            elif isinstance(action, pol.Terminate):
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
        self.sequencer.restore(state.marks)
        self._marks_behind = dict(state.marks)
        now_wall, now_mono = time.time(), time.monotonic()
        self.policy.restore_connect_attempts(saved.to_monotonic(state.attempts, now_wall, now_mono), now_mono)
        logs.event(log, "state restored", file=self.config.state_file, topics=len(state.marks),
                   recent_attempts=len(state.attempts), age=f"{now_wall - state.saved_at:.1f}s")
        return bool(state.marks)

    def _save_state(self, exact: bool = False) -> None:
        """Save watermarks and recent connection attempts.

        While running, the watermarks written are those of the previous save,
        one period old. Frames still queued in PUB die with a crashed parent,
        so the newest marks may count frames no subscriber got; the older
        marks make a new parent replay that last second instead of losing
        it. On a clean exit PUB has been flushed and the marks are exact.
        """
        if not self.config.state_file:
            return
        now_wall, now_mono = time.time(), time.monotonic()
        attempts = saved.to_wall(self.policy.connect_attempts(now_mono), now_wall, now_mono)
        current = self.sequencer.marks()
        marks = current if exact else self._marks_behind
        self._marks_behind = current
        try:
            saved.save(self.config.state_file, saved.SavedState(marks, attempts, now_wall))
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
