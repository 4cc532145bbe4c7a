"""Gap decisions of the parent: which topics announce a loss, and how a gap
closes. Pure: the parent (``parent.py``) publishes what these return.

A channel whose history Binance serves (``binance/backfill.py``) is backfilled
by the next worker, so losing its source announces nothing, unless the
stream went FATAL and no next worker comes. A channel without history gets
an open gap on each topic, closed by its next regular frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from feedsup.binance.backfill import NO_HISTORY

Gap = dict[str, Any]


class Announce(NamedTuple):
    topic: str
    gap: Gap          # fields of the gap notice: from_ms, to_ms, reason
    keep_open: bool   # closed by the topic's next regular frame


def on_loss(channel: str, topics: Iterable[str], open_gaps: Mapping[bytes, Gap],
            last_ms: Callable[[bytes], int | None], reason: str, fatal: bool) -> list[Announce]:
    """The stream's source is gone: the gap notices to publish.

    On leaving RUNNING only channels without REST history get one. A FATAL
    stream has no next worker: every topic gets one, and a topic whose gap is
    already open hears it again, with the FATAL reason. ``last_ms``: the
    exchange-side receive time of the topic's last frame, if any."""
    no_history = channel in NO_HISTORY
    if not (no_history or fatal):
        return []
    out = []
    for topic in topics:
        tb = topic.encode()
        gap = open_gaps.get(tb)
        if gap is not None and not fatal:
            continue
        if gap is None:
            gap = {"from_ms": last_ms(tb), "to_ms": None}
        out.append(Announce(topic, {**gap, "reason": reason}, no_history))
    return out


def on_delisting(topics: Iterable[str], last_ms: Callable[[bytes], int | None], reason: str) -> list[Announce]:
    """A symbol left a ``symbols = "*"`` stream's universe (delisted): the
    last word on each of its topics, whatever the channel. The gap stays
    open: nothing follows unless the symbol is listed again, whose first
    frame then closes it."""
    return [Announce(t, {"from_ms": last_ms(t.encode()), "to_ms": None, "reason": reason}, True) for t in topics]


def closed(gap: Gap, recv_ns: int) -> Gap:
    """An open gap ended by a regular frame received at ``recv_ns``."""
    return {**gap, "to_ms": recv_ns // 1_000_000}
