"""What crosses into the parent from workers and clients cannot take it down.

The parent's loop feeds ``_drain`` (worker uplink) and ``_serve_control``
(control ROUTER) whatever arrives. These tests drive both with fake sockets:
any bytes, any multipart message, and the specific malformations that used
to escape ``Parent.run()`` (whose ``finally`` then killed every worker).
"""

from __future__ import annotations

import types
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from feedsup.config import load_config
from feedsup.ipc import frames
from feedsup.ipc.frames import Control
from feedsup.supervisor import policy as pol
from feedsup.supervisor.parent import MAX_HELLOS, Parent
from harness import write_config
from fakes import FakePub, FakePull

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}
BOOK = {"name": "book", "market": "spot", "channel": "bookTicker", "symbols": ["BTCUSDT"]}
ACCT = {"name": "acct", "market": "spot", "channel": "account", "api_key_env": "K", "api_secret_env": "S"}
TOPIC = b"aggTrade.BTCUSDT"


@pytest.fixture
def parent(tmp_path: Path):
    sim = types.SimpleNamespace(ws_url="ws://127.0.0.1:1", base_url="http://127.0.0.1:1")
    p = Parent(load_config(str(write_config(tmp_path, sim, [PRICE, BOOK, ACCT]))))
    p.pub = FakePub()
    for inst, stream in ((1, "price"), (2, "book"), (3, "acct")):
        p.workers[inst] = types.SimpleNamespace(stream=stream, exit_report=None, pid=1000 + inst)
    yield p


def drain(parent: Parent, *messages: bytes) -> FakePub:
    parent._drain(FakePull(list(messages)), parent.pub)
    return parent.pub


def data(agg_id: int, topic: bytes = TOPIC, body: bytes | None = None, stream: str = "price") -> bytes:
    body = body if body is not None else frames.encode_body(topic.decode(), stream, 1_000_000 * agg_id,
                                                            {"agg_id": agg_id})
    return frames.encode_data(topic, agg_id, 0, True, body)


def killed(parent: Parent) -> dict[int, str]:
    return {a.instance: a.reason for a in parent._pending if isinstance(a, pol.Kill)}


def test_a_valid_batch_is_published_with_seq(parent):
    pub = drain(parent, frames.encode_batch(1, [data(1), data(2)]))
    assert [(f["seq"], f["data"]["agg_id"]) for f in pub.payloads()] == [(1, 1), (2, 2)]
    assert parent.rejected == 0 and not killed(parent)


@pytest.mark.parametrize("message, why", [
    (frames.encode_batch(1, [data(1)])[:-3], "out of bounds"),
    (frames.encode_batch(1, [data(1)[:10]]), "truncated"),
    (frames.encode_batch(1, [data(1, body=msgpack.packb({str(i): i for i in range(16)}))]), "map"),
    (frames.encode_batch(1, [data(1, body=msgpack.packb([1, 2]))]), "map"),
    (frames.encode_batch(1, [data(1, topic=b"bookTicker.BTCUSDT")]), "does not own"),
    (frames.encode_batch(1, [data(1, topic=b"_feedsup.hello.x")]), "does not own"),
    (frames.encode_batch(1, [b"X" + data(1)[1:]]), "unknown kind"),
    (frames.encode_batch(1, [data(1, body=b"\x84\xc1\xc1\xc1")]), "not msgpack"),        # first batch: decoded
    (frames.encode_batch(1, [data(1, stream="book")]), "own topic and stream"),
    (frames.encode_batch(1, [frames.encode_gap(TOPIC, msgpack.packb({"data": None}))]), "gap"),
    (b"C" + msgpack.packb([1, 2, 3]), "not a map"),
    (b"C" + b"\xc1\xc1", "not msgpack"),
    (frames.encode_control(Control.LIVE, instance=1, stream="price", stats=[1, 2]), "stats"),
    (frames.encode_control(Control.LIVE, instance=1, stream="price", stats={"msgs": "many"}), "msgs"),
    (frames.encode_control(Control.LIVE, instance=1, stream="price", stats={"idle": "x"}), "idle"),
    (frames.encode_control(Control.READY, instance=1, stream="price", v=1), "protocol version mismatch"),
    (frames.encode_control("dance", instance=1, stream="price"), "unknown control type"),
    (frames.encode_control(Control.EXIT, instance=1, stream="price", reason=5, fatal=True), "exit"),
])
def test_a_malformed_message_is_rejected_and_its_sender_restarted(parent, message, why):
    pub = drain(parent, message, frames.encode_batch(1, [data(9)]))
    assert parent.rejected == 1
    kills = killed(parent)
    if kills:                         # attributable: the sender is killed with the reason
        assert why in kills[1] and kills[1].startswith("refused:")
        assert parent.workers[1].exit_report["reason"] == kills[1]
        assert pub.sent == [], "nothing more is taken from a refused worker"
    else:
        assert why in ("not a map", "not msgpack")
    # Whatever was published is well-formed.
    assert all(type(f) is dict and "seq" in f for f in pub.payloads())


def test_empty_and_unknown_messages_are_rejected_without_a_culprit(parent):
    drain(parent, b"", b"Z", b"B\x01", frames.encode_batch(99, [b"garbage"]))
    assert parent.rejected == 4 and not killed(parent)


def test_a_reaped_workers_last_batch_still_counts(parent):
    pub = drain(parent, frames.encode_batch(42, [data(1)]))
    assert len(pub.payloads()) == 1 and parent.rejected == 0


def test_account_topics_belong_to_the_stream_named_in_them(parent):
    ok = [data(5, topic=b"account.executionReport.acct", stream="acct"),
          data(6, topic=b"account.ORDER_TRADE_UPDATE.acct", stream="acct")]
    other = data(7, topic=b"account.executionReport.other", stream="acct")
    pub = drain(parent, frames.encode_batch(3, ok), frames.encode_batch(3, [other]))
    assert [f["topic"] for f in pub.payloads()] == ["account.executionReport.acct", "account.ORDER_TRADE_UPDATE.acct"]
    assert "does not own" in killed(parent)[3]


def test_valid_controls_reach_the_policy(parent):
    drain(parent, frames.encode_control(Control.LIVE, instance=1, stream="price",
                                        stats={"msgs": 5, "idle": 0.1, "lag_ms": None}))
    assert parent.rejected == 0 and parent.rates[1][1] == 5


# -- fuzz: any bytes ------------------------------------------------------------

@st.composite
def uplink_messages(draw):
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        return frames.batch_prefix(draw(st.sampled_from([1, 2, 3, 7]))) + draw(st.binary(max_size=200))
    if choice == 2:                   # a valid batch with bytes flipped, cut or appended
        raw = bytearray(frames.encode_batch(1, [data(i) for i in range(draw(st.integers(1, 4)))]))
        for _ in range(draw(st.integers(0, 4))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.integers(0, 255))
        return bytes(raw[:draw(st.integers(0, len(raw)))]) + draw(st.binary(max_size=8))
    return b"C" + draw(st.one_of(st.binary(max_size=60), st.builds(msgpack.packb, st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(), st.text(max_size=5)),
        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                st.dictionaries(st.sampled_from(["type", "instance", "stream", "stats", "v",
                                                                 "msgs", "idle", "event", "reason", "fatal"]),
                                                inner, max_size=6)), max_leaves=12))))


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(uplink_messages(), max_size=5))
def test_fuzz_any_uplink_bytes_never_escape_the_parent(parent, messages):
    parent.pub = FakePub()
    drain(parent, *messages)
    # What passes is a fixmap with seq first, on a configured topic. (The
    # map's content is not decoded on the hot path: it would double the
    # parent's cost per record; a worker is checked to be of our version.)
    for topic, payload in zip(parent.pub.sent[::2], parent.pub.sent[1::2]):
        assert 0x81 <= payload[0] <= 0x8F and payload[1:1 + len(frames.SEQ_KEY)] == frames.SEQ_KEY
        assert topic in parent._owner_b or (topic.startswith(b"account.") and topic.endswith(b".acct"))


# -- control socket -----------------------------------------------------------

class FakeRouter:
    def __init__(self, requests: list[list[bytes]]) -> None:
        self.requests = list(requests)
        self.replies: list[list[bytes]] = []

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.requests:
            raise zmq.Again()
        return self.requests.pop(0)

    def send_multipart(self, parts: list[bytes], flags: int = 0) -> None:
        self.replies.append(parts)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.one_of(st.binary(max_size=40), st.builds(msgpack.packb, st.dictionaries(
    st.sampled_from(["cmd", "stream", "prefix", "token"]),
    st.one_of(st.sampled_from(["status", "restart", "ping", "last", "hello", "price"]), st.none(),
              st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=70),
              st.lists(st.integers(0, 9), max_size=2)), max_size=3))),
    min_size=1, max_size=6), max_size=4))
def test_fuzz_control_requests_get_an_answer_or_nothing(parent, requests):
    router = FakeRouter(requests)
    parent._serve_control(router)
    for reply in router.replies:
        assert len(reply) == 3 and reply[1] == b""
        assert type(msgpack.unpackb(reply[2])["ok"]) is bool


def test_a_failing_command_is_an_error_reply(parent, monkeypatch):
    monkeypatch.setattr(parent, "status", lambda: 1 / 0)
    router = FakeRouter([[b"id", b"", msgpack.packb({"cmd": "status"})]])
    parent._serve_control(router)
    assert msgpack.unpackb(router.replies[0][2]) == {"ok": False, "error": "internal error: ZeroDivisionError"}


# -- hello: bounded, and invisible to consumers -----------------------------------

def test_hello_grows_neither_the_sequencer_nor_the_cache(parent):
    from feedsup.supervisor import control
    before = (len(parent.sequencer.seqs()), len(parent.last_values))
    for i in range(5000):
        reply = control.dispatch(parent, {"cmd": "hello", "token": f"t{i}"})
        assert reply["ok"] and reply["live"] is False
    assert (len(parent.sequencer.seqs()), len(parent.last_values)) == before
    assert parent.pub.sent == [], "nothing is published for a hello"


def test_hello_sees_a_real_subscription_and_a_raw_consumer_sees_nothing(parent, tmp_path):
    from feedsup.procs import wait_for
    ctx = zmq.Context()
    pull, pub, ctl = parent._bind(ctx)
    parent.pub = pub
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    raw.connect(parent.config.pub)
    # A SUB socket queues at most SNDHWM (1000) subscriptions: use three.
    subs = [ctx.socket(zmq.SUB) for _ in range(3)]
    try:
        n = 0
        for sub in subs:
            sub.connect(parent.config.pub)
            for _ in range(400):
                sub.setsockopt(zmq.SUBSCRIBE, f"_feedsup.hello.k{n}".encode())
                n += 1
            last = f"k{n - 1}"
            wait_for(lambda: parent.hello(last), 5, "the hello subscription")
        assert len(parent._hellos) == MAX_HELLOS < n
        assert not parent.hello("k0"), "the oldest tokens are forgotten"
        assert not parent.hello("never-subscribed")
        assert not raw.poll(100), "a raw subscriber to everything gets no marker"
    finally:
        for sock in (raw, *subs, pull, pub, ctl):
            sock.close(linger=0)
        ctx.term()


def test_a_worker_retired_by_a_rotation_publishes_nothing_more(parent):
    # Once the successor streams, it has every event from its subscription on;
    # what the retiring worker still sends could only repeat those, or (an
    # account event the successor's snapshot already holds) arrive unflagged.
    parent.workers[4] = types.SimpleNamespace(stream="price", exit_report=None, pid=1004)
    parent.workers[1].terminate = lambda: None
    drain(parent, frames.encode_batch(1, [data(1)]))
    parent._execute([pol.Terminate(1, "rotated")])
    pub = drain(parent, frames.encode_batch(1, [data(2)]), frames.encode_batch(4, [data(3)]))
    assert [p["data"]["agg_id"] for p in pub.payloads()] == [1, 3]
    assert killed(parent) == {}


def test_a_worker_terminated_for_another_reason_still_delivers_what_it_has(parent):
    parent.workers[1].terminate = lambda: None
    drain(parent, frames.encode_batch(1, [data(1)]))
    parent._execute([pol.Terminate(1, "restart requested")])
    pub = drain(parent, frames.encode_batch(1, [data(2)]))
    assert [p["data"]["agg_id"] for p in pub.payloads()] == [1, 2]


def test_a_worker_gap_notice_for_ids_already_delivered_is_not_published(parent):
    # A rotation successor whose REST failed announces what the old worker
    # published meanwhile; only the part past the watermark is a loss.
    def gap_record(lo: int, hi: int) -> bytes:
        return frames.encode_gap(TOPIC, frames.encode_gap_body(TOPIC.decode(), "price", 1, None, None,
                                                               "backfill failed", from_id=lo, to_id=hi))
    pub = drain(parent, frames.encode_batch(1, [data(1), data(2), data(3)]),
                frames.encode_batch(1, [gap_record(1, 3), gap_record(2, 5)]))
    gaps = [p["gap"] for p in pub.payloads() if p.get("gap")]
    assert [(g["from_id"], g["to_id"]) for g in gaps] == [(4, 5)]
    assert killed(parent) == {}
