"""Exactly-once ordering per topic: suppress what was already delivered,
number what goes out.

Every data frame carries an exchange ordering key ``(major, minor, final)``:
aggTrade id, trade id, book update id or event time as ``major``; for
klines the open time as ``major``, the event time as ``minor`` and the closed
flag as ``final``. Overlapping connections (rotation, restarts, backfill)
deliver some events twice; the watermark drops the second copy whatever the
timing, because the decision depends only on exchange ids.

It holds one entry per topic, and the parent only admits topics that the
config gives a stream (market topics) or that carry an account stream's name,
so its size is bounded by the config, not by clients or time.
"""

from __future__ import annotations

from typing import Any


class Sequencer:
    def __init__(self) -> None:
        self._marks: dict[bytes, tuple[int, int, bool]] = {}
        self._seq: dict[bytes, int] = {}
        self.suppressed = 0

    def admit(self, topic: bytes, major: int, minor: int, final: bool) -> int:
        """Return the frame's seq, or 0 when it duplicates or precedes what
        this topic already delivered."""
        mark = self._marks.get(topic)
        if mark is not None and not is_newer(mark, major, minor, final):
            self.suppressed += 1
            return 0
        self._marks[topic] = (major, minor, final)
        return self.next_seq(topic)

    def next_seq(self, topic: bytes) -> int:
        """Number a frame that bypasses the watermark (gap notices)."""
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        return seq

    def trim_gap(self, topic: bytes, gap: dict[str, Any], kline: bool) -> dict[str, Any] | None:
        """A worker's gap notice less what this topic already delivered: None
        when all of it was (a rotation successor whose REST failed announces
        ids the old worker had published), else the gap from after the
        watermark. Trades and aggTrades are judged by ``from_id``/``to_id``,
        klines by open times (``from_ms``/``to_ms``) against the last kline
        delivered closed. A gap without those bounds stands as sent."""
        mark = self._marks.get(topic)
        lo_key, hi_key = ("from_ms", "to_ms") if kline else ("from_id", "to_id")
        lo, hi = gap.get(lo_key), gap.get(hi_key)
        if mark is None or type(lo) is not int:
            return gap
        delivered = mark[0] if mark[2] else mark[0] - 1     # as watermarks() says
        if type(hi) is int and hi <= delivered:
            return None
        return {**gap, lo_key: delivered + 1} if lo <= delivered else gap

    def watermarks(self) -> dict[str, int]:
        """Last delivered final exchange id per topic, for resuming workers.

        For a kline topic that is the open time of the last *closed* kline
        only when the newest frame was closed; an open kline's time is not
        yet delivered in full, so resume from the one before it.
        """
        return {t.decode(): m[0] if m[2] else m[0] - 1 for t, m in self._marks.items()}

    def marks(self) -> dict[str, tuple[int, int, bool]]:
        return {t.decode(): m for t, m in self._marks.items()}

    def restore(self, marks: dict[str, tuple[int, int, bool]]) -> None:
        """Watermarks of a previous parent: what consumers already received."""
        for topic, mark in marks.items():
            self._marks[topic.encode()] = mark

    def seqs(self) -> dict[str, int]:
        return {t.decode(): s for t, s in self._seq.items()}


def is_newer(mark: tuple[int, int, bool], major: int, minor: int, final: bool) -> bool:
    m_major, m_minor, m_final = mark
    if major != m_major:
        return major > m_major
    if m_final:
        return False            # that key was delivered in its final form
    return final or minor > m_minor
