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
