"""The parent hands the sink exactly what it publishes on PUB, in PUB order
(frames, worker gap records and the parent's own gap notices interleaved),
with each frame's exchange key; and saves watermarks capped by the sink."""

from __future__ import annotations

import shutil
import types

import msgpack

from feedsup.config import Config, Stream
from feedsup.ipc import frames
from feedsup.supervisor.parent import Parent
from fakes import FakePub, FakePull

PRICE = Stream(name="price", market="spot", channel="aggTrade", symbols=("BTCUSDT",))
BOOK = Stream(name="book", market="spot", channel="bookTicker", symbols=("BTCUSDT",))


class FakeSink:
    def __init__(self) -> None:
        self.offered: list[tuple] = []
        self.capped: dict = {}

    def offer(self, batch: list[tuple]) -> None:
        self.offered += batch

    def cap_marks(self, marks: dict) -> dict:
        self.capped = dict(marks)
        return {t: (1, 0, True) for t in marks}

    def status(self) -> dict:
        return {"acked": 0}


def data(topic: str, key: int, stream: str = "price") -> bytes:
    return frames.encode_data(topic.encode(), key, 0, True, frames.encode_body(topic, stream, 10**15 + key, {"k": key}))


def gap(topic: str) -> bytes:
    return frames.encode_gap(topic.encode(), frames.encode_gap_body(topic, "price", 10**15, 1, 2, "rest failed"))


def make_parent(tmp_path) -> Parent:
    p = Parent(Config(path="", streams=(PRICE, BOOK), state_file=str(tmp_path / "state")))
    p.sink = FakeSink()
    p.pub = FakePub()
    for inst, stream in ((1, "price"), (2, "book")):     # the senders of the batches below
        p.workers[inst] = types.SimpleNamespace(stream=stream, exit_report=None, pid=1000 + inst)
    return p


def test_sink_gets_every_published_frame_in_pub_order(tmp_path):
    p = make_parent(tmp_path)
    try:
        p._announce_loss("book", "closed")                   # parent's own notice: open gap
        prices = frames.encode_batch(1, [data("aggTrade.BTCUSDT", 1), gap("aggTrade.BTCUSDT"),
                                         data("aggTrade.BTCUSDT", 2),
                                         data("aggTrade.BTCUSDT", 2)])   # duplicate: neither published nor offered
        books = frames.encode_batch(2, [data("bookTicker.BTCUSDT", 7, "book")])   # closes the gap: notice, then frame
        p._drain(FakePull([prices, books]), p.pub)
        pub = list(zip(p.pub.sent[::2], p.pub.sent[1::2]))
        offered = p.sink.offered
        assert [(t, pl) for t, *_, pl in offered] == pub
        kinds = [(t.decode(), major) for t, major, *_ in offered]
        assert kinds == [("bookTicker.BTCUSDT", None), ("aggTrade.BTCUSDT", 1), ("aggTrade.BTCUSDT", None),
                         ("aggTrade.BTCUSDT", 2), ("bookTicker.BTCUSDT", None), ("bookTicker.BTCUSDT", 7)]
        assert msgpack.unpackb(offered[4][-1])["gap"]["to_ms"] is not None
    finally:
        shutil.rmtree(p.rundir, ignore_errors=True)


def test_saved_watermarks_are_capped_by_the_sink(tmp_path):
    from feedsup.supervisor import state as saved

    p = make_parent(tmp_path)
    try:
        p._drain(FakePull([frames.encode_batch(1, [data("aggTrade.BTCUSDT", 5)])]), p.pub)
        p._save_state(final=True)
        assert p.sink.capped == {"aggTrade.BTCUSDT": (5, 0, True)}
        assert saved.load(str(tmp_path / "state")).marks == {"aggTrade.BTCUSDT": (1, 0, True)}
    finally:
        shutil.rmtree(p.rundir, ignore_errors=True)
