"""Local order book: Binance's snapshot + diff sync procedures, pure.

``OrderBook`` holds the price levels. ``SpotBookSync`` and ``FuturesBookSync``
implement the two documented procedures (see /work/shared/FACTS.md) as state
machines: the worker feeds them diff events (``on_diff``) and REST snapshots
(``on_snapshot``) and acts on the returned ``Verdict``. No I/O, no clock.

Typical shell (one snapshot request in flight at a time; diffs keep being
fed meanwhile, they are buffered)::

    sync = make_book_sync(market)
    def act(verdict):
        if verdict.fetch_snapshot:            # NEED_SNAPSHOT, STALE_SNAPSHOT, RESYNC
            request_snapshot()                # result -> act(sync.on_snapshot(...))
        elif verdict.book_changed:            # SYNCED, APPLIED
            publish(sync.update_id, *sync.top(depth_levels))
    for diff in diffs:                        # normalised depth diffs
        act(sync.on_diff(diff))

Diffs are the normalised dicts of feedsup.binance.normalise (keys
``first_update_id``, ``last_update_id``, ``prev_update_id`` (futures),
``bids``, ``asks``; levels are ``[price_str, qty_str]``).
"""

from __future__ import annotations

import bisect
import enum
from collections import deque
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from feedsup.binance.normalise import MalformedEvent

Level = Sequence[str]            # [price, qty] as the exchange's strings
Diff = Mapping[str, Any]         # a normalised depth diff
# (price, price_str, qty_str, delete): a level parsed once, applied later.
_Parsed = tuple[Decimal, str, str, bool]

# Diffs kept while a snapshot is on its way. Dropping the oldest is safe: the
# staleness check and the gap rules judge the buffer as it is, so a dropped
# event we needed shows up as a stale snapshot or a gap, never as a bad book.
DEFAULT_MAX_BUFFER = 10_000


class BadLevel(MalformedEvent):
    """A price level that is not ``[decimal_str, decimal_str]``."""


class BookStateError(RuntimeError):
    """The shell called the sync out of order (a bug here, not at the exchange)."""


class Verdict(enum.Enum):
    NEED_SNAPSHOT = "need_snapshot"    # first diff buffered: fetch a snapshot
    BUFFERED = "buffered"              # diff kept until the snapshot arrives
    STALE_SNAPSHOT = "stale_snapshot"  # snapshot older than the buffer: fetch again
    SYNCED = "synced"                  # snapshot + buffered diffs applied: book valid
    APPLIED = "applied"                # live diff applied
    SKIPPED = "skipped"                # diff older than the book: ignored
    RESYNC = "resync"                  # sequence break: book discarded, fetch a snapshot

    @property
    def fetch_snapshot(self) -> bool:
        return self in _FETCH

    @property
    def book_changed(self) -> bool:
        return self in _CHANGED


_FETCH = frozenset({Verdict.NEED_SNAPSHOT, Verdict.STALE_SNAPSHOT, Verdict.RESYNC})
_CHANGED = frozenset({Verdict.SYNCED, Verdict.APPLIED})


class _Side:
    """One side of the book: price -> qty, plus the prices in ascending order.

    Levels are keyed by the Decimal value of the price, so "100.0" and "100.00"
    are one level and sorting is exact; the exchange's strings are kept for
    output. The sorted key list makes ``top(n)`` O(n) instead of a sort.
    """

    __slots__ = ("levels", "prices")

    def __init__(self) -> None:
        self.levels: dict[Decimal, tuple[str, str]] = {}
        self.prices: list[Decimal] = []

    def set(self, price: Decimal, price_str: str, qty_str: str, delete: bool) -> None:
        levels = self.levels
        if delete:
            if levels.pop(price, None) is not None:
                prices = self.prices
                del prices[bisect.bisect_left(prices, price)]
        else:
            if price not in levels:
                bisect.insort(self.prices, price)
            levels[price] = (price_str, qty_str)

    def clear(self) -> None:
        self.levels.clear()
        self.prices.clear()

    def lowest(self, n: int) -> list[list[str]]:
        levels = self.levels
        return [list(levels[p]) for p in self.prices[:n]]

    def highest(self, n: int) -> list[list[str]]:
        levels = self.levels
        prices = self.prices
        return [list(levels[p]) for p in reversed(prices[max(0, len(prices) - n):])]


def _parse_levels(levels: Iterable[Level]) -> list[_Parsed]:
    """Parse every level before touching the book, so a bad one changes nothing."""
    parsed = []
    try:
        for price_str, qty_str in levels:
            price = Decimal(price_str)
            # float is exact for "is it zero" and cheaper than a second Decimal.
            qty = float(qty_str)
            if not (price.is_finite() and price > 0 and 0.0 <= qty < float("inf")
                    and type(price_str) is str and type(qty_str) is str):
                raise ValueError("not a positive price with a finite qty")
            parsed.append((price, price_str, qty_str, qty == 0.0))
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise BadLevel(f"bad price level in {levels!r}: {exc}") from None
    return parsed


class OrderBook:
    """Price levels of both sides; no sequencing (that is the sync's job)."""

    def __init__(self) -> None:
        self._bids = _Side()
        self._asks = _Side()

    def load(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book (a snapshot)."""
        parsed_bids, parsed_asks = _parse_levels(bids), _parse_levels(asks)
        self.clear()
        self.apply(parsed_bids, parsed_asks)

    def update(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set each level's quantity; a zero quantity deletes the level."""
        self.apply(_parse_levels(bids), _parse_levels(asks))

    def apply(self, bids: list[_Parsed], asks: list[_Parsed]) -> None:
        """``update`` with levels already parsed (the sync parses on arrival)."""
        for side, parsed in ((self._bids, bids), (self._asks, asks)):
            for price, price_str, qty_str, delete in parsed:
                side.set(price, price_str, qty_str, delete)

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def top(self, n: int | None = None) -> tuple[list[list[str]], list[list[str]]]:
        """``(bids, asks)``, best first, as ``[price_str, qty_str]``; all if n is None."""
        if n is None:
            n = len(self)
        elif n < 0:
            raise ValueError(f"top(n) needs n >= 0, got {n}")
        return self._bids.highest(n), self._asks.lowest(n)

    def __len__(self) -> int:
        return len(self._bids.levels) + len(self._asks.levels)


class _Diff(NamedTuple):
    first: int                   # U
    last: int                    # u
    prev: int | None             # pu (futures only)
    bids: list[_Parsed]
    asks: list[_Parsed]


class _BookSync:
    """Shared machinery: the buffer, the book and the three states.

    States: no diff yet -> buffering (snapshot requested) -> synced. A sequence
    break goes back to buffering, keeping the breaking diff as the new buffer's
    first event, so the shell can fetch a snapshot at once. Subclasses supply
    the exchange's rules (``_snapshot_is_stale``, ``_sequence``).

    A diff with a malformed level raises ``BadLevel`` and is otherwise ignored:
    to the procedure it is a lost diff, which the next diff's sequence check
    turns into a resync (or the snapshot covers it). The book never holds half
    of a diff.
    """

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.book = OrderBook()
        self._buffer: deque[_Diff] = deque(maxlen=max_buffer)
        self._synced = False
        self._update_id = 0
        self._snapshot_id = 0

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def update_id(self) -> int:
        """Last update id reflected in the book (valid when ``synced``)."""
        return self._update_id

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def top(self, n: int | None = None) -> tuple[list[list[str]], list[list[str]]]:
        return self.book.top(n)

    def on_diff(self, diff: Diff) -> Verdict:
        """Feed one normalised depth diff; raises ``BadLevel`` if it has a bad level."""
        prev = diff.get("prev_update_id")
        if prev is None and self._chained:
            raise MalformedEvent("futures depth diff without prev_update_id")
        parsed = _Diff(
            diff["first_update_id"], diff["last_update_id"], prev,
            _parse_levels(diff["bids"]), _parse_levels(diff["asks"]),
        )
        if self._synced:
            return self._apply(parsed)
        self._buffer.append(parsed)
        return Verdict.NEED_SNAPSHOT if len(self._buffer) == 1 else Verdict.BUFFERED

    def on_snapshot(self, last_update_id: int, bids: Iterable[Level], asks: Iterable[Level]) -> Verdict:
        """A REST snapshot arrived; only valid after a verdict asked for one.

        Raises ``BadLevel`` for a malformed snapshot (nothing changes: fetch again).
        """
        if self._synced or not self._buffer:
            raise BookStateError("snapshot arrived but none was requested")
        if self._snapshot_is_stale(last_update_id):
            return Verdict.STALE_SNAPSHOT
        self.book.load(bids, asks)
        self._update_id = self._snapshot_id = last_update_id
        self._synced = True
        self._snapshot_loaded()
        buffered, self._buffer = self._buffer, deque(maxlen=self._buffer.maxlen)
        while buffered:
            if self._apply(buffered.popleft()) is Verdict.RESYNC:
                # The rest of the old buffer follows the breaking diff.
                self._buffer.extend(buffered)
                return Verdict.RESYNC
        return Verdict.SYNCED

    def _apply(self, diff: _Diff) -> Verdict:
        verdict = self._sequence(diff)
        if verdict is Verdict.APPLIED:
            self.book.apply(diff.bids, diff.asks)
            self._update_id = diff.last
            self._applied()
        elif verdict is Verdict.RESYNC:
            self.book.clear()
            self._synced = False
            self._buffer.clear()
            self._buffer.append(diff)
        return verdict

    # Exchange rules, overridden below.
    _chained = False   # diffs carry prev_update_id ("pu")

    def _snapshot_is_stale(self, last_update_id: int) -> bool:
        raise NotImplementedError

    def _sequence(self, diff: _Diff) -> Verdict:
        """APPLIED (go ahead), SKIPPED or RESYNC for one diff on a synced book."""
        raise NotImplementedError

    def _snapshot_loaded(self) -> None:
        pass

    def _applied(self) -> None:
        pass


class SpotBookSync(_BookSync):
    """Spot procedure (revised 2025-11-12), ids ``U``..``u`` per diff.

    A snapshot older than the first buffered ``U`` is fetched again; buffered
    diffs with ``u`` <= ``lastUpdateId`` are dropped; then a diff whose ``u`` is
    below the book id is skipped, one whose ``U`` > book id + 1 is a gap.
    """

    def _snapshot_is_stale(self, last_update_id: int) -> bool:
        return last_update_id < self._buffer[0].first

    def _sequence(self, diff: _Diff) -> Verdict:
        # "u <= lastUpdateId" is step 3 (the snapshot already holds the diff);
        # "u < book id" is step 4. Re-applying the diff that set the book id
        # is harmless: quantities are absolute.
        if diff.last <= self._snapshot_id or diff.last < self._update_id:
            return Verdict.SKIPPED
        if diff.first > self._update_id + 1:
            return Verdict.RESYNC
        return Verdict.APPLIED


class FuturesBookSync(_BookSync):
    """USD-M procedure: ``pu`` chains each diff to the previous one's ``u``.

    Diffs with ``u`` < ``lastUpdateId`` are dropped; the first applied diff must
    satisfy ``U`` <= ``lastUpdateId`` <= ``u``; from then on each ``pu`` must
    equal the previous ``u``, else re-snapshot. A snapshot that the buffered
    diffs cannot bridge (the first one kept has ``U`` > ``lastUpdateId``) is
    stale: fetch again.
    """

    _chained = True

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_buffer)
        self._bridged = False

    def _snapshot_is_stale(self, last_update_id: int) -> bool:
        for diff in self._buffer:
            if diff.last >= last_update_id:
                return diff.first > last_update_id
        return False  # every buffered diff is older: the bridging one is still to come

    def _snapshot_loaded(self) -> None:
        self._bridged = False

    def _sequence(self, diff: _Diff) -> Verdict:
        if self._bridged:
            return Verdict.APPLIED if diff.prev == self._update_id else Verdict.RESYNC
        if diff.last < self._snapshot_id:
            return Verdict.SKIPPED
        if diff.first > self._snapshot_id:
            return Verdict.RESYNC
        return Verdict.APPLIED

    def _applied(self) -> None:
        self._bridged = True


def make_book_sync(market: str, max_buffer: int = DEFAULT_MAX_BUFFER) -> _BookSync:
    """The sync procedure of ``market`` ("spot" or "usdm")."""
    if market == "spot":
        return SpotBookSync(max_buffer)
    if market == "usdm":
        return FuturesBookSync(max_buffer)
    raise ValueError(f"unknown market {market!r}")
