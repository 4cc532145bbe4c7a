"""The whole market: which symbols a stream with ``symbols = "*"`` takes,
which of them this host takes (``[feedsup] shard = "k/n"``), and how they
split into connections, all pure; plus a small REST reader for exchangeInfo.

* ``select``: the symbols of an exchangeInfo body that pass the filters
  (status TRADING, quote assets, USD-M perpetuals);
* ``in_shard``: a stable hash of the symbol (CRC-32, the same on every host
  and Python) picks one of ``n`` shards, so ``n`` hosts with shards 1/n ...
  n/n split the market with no overlap and no coordination, and two hosts
  with the same shard are an A/B pair;
* ``assign``: symbols -> connections of at most ``per_connection`` symbols,
  changing as few connections as possible when the universe changes: a
  listing joins a connection with room (or a new one), a delisting leaves
  its connection, and every other connection keeps running untouched;
* ``expand``: one configured stream -> one worker stream per connection,
  named ``name/0``, ``name/1``, ...
"""

from __future__ import annotations

import json
import urllib.request
import zlib
from dataclasses import dataclass, replace
from typing import Any, Iterable

from feedsup.binance.streams import MAX_STREAMS_BY_MARKET as MAX_STREAMS
from feedsup.config_model import Stream

# Streams per connection (binance/streams.py): 1024 on spot; for USD-M its
# sources disagree (200 or 1024), so plan for the lower figure, as config does.
EXCHANGE_INFO_PATH = {"spot": "/api/v3/exchangeInfo", "usdm": "/fapi/v1/exchangeInfo"}
EXCHANGE_INFO_WEIGHT = {"spot": 20, "usdm": 1}


@dataclass(frozen=True)
class Shard:
    k: int      # 1..n
    n: int

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


ALL = Shard(1, 1)


def parse_shard(text: str) -> Shard:
    """``"k/n"`` with 1 <= k <= n; raise ValueError saying why."""
    try:
        k, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f'shard must be "k/n" such as "2/3", got "{text}"') from None
    if not 1 <= k <= n:
        raise ValueError(f"shard {text}: need 1 <= k <= n")
    return Shard(k, n)


def shard_of(symbol: str, n: int) -> int:
    """The shard (1..n) that owns ``symbol``."""
    return zlib.crc32(symbol.upper().encode()) % n + 1


def in_shard(symbol: str, shard: Shard) -> bool:
    return shard_of(symbol, shard.n) == shard.k


def select(info: dict[str, Any], quote_assets: Iterable[str] = (), statuses: Iterable[str] = ("TRADING",),
           contract_types: Iterable[str] = ("PERPETUAL",), shard: Shard = ALL) -> list[str]:
    """Symbols of an exchangeInfo body passing the filters, in this shard, sorted.

    ``quote_assets`` empty = any. ``contract_types`` applies to USD-M
    entries only (spot entries have no ``contractType``)."""
    quotes, states, kinds = set(quote_assets), set(statuses), set(contract_types)
    out = []
    for entry in info.get("symbols", []):
        symbol = entry.get("symbol", "")
        if not symbol or entry.get("status") not in states:
            continue
        if quotes and entry.get("quoteAsset") not in quotes:
            continue
        if "contractType" in entry and kinds and entry["contractType"] not in kinds:
            continue
        if in_shard(symbol, shard):
            out.append(symbol)
    return sorted(out)


def per_connection(market: str, channel: str, intervals: int = 1, target: int = 0) -> int:
    """Symbols per connection: Binance's stream cap (or a lower ``target`` of
    streams per connection) divided by the streams each symbol takes."""
    cap = MAX_STREAMS[market] if target <= 0 else min(target, MAX_STREAMS[market])
    per_symbol = max(1, intervals) if channel == "kline" else 1
    return max(1, cap // per_symbol)


Slots = list[tuple[str, ...]]


def assign(previous: Slots, universe: Iterable[str], limit: int) -> tuple[Slots, set[int]]:
    """New connection slots for ``universe`` and the indices that changed.

    Symbols stay in their slot; gone ones are removed; new ones fill the
    lowest slots with room, then new slots. A slot left empty stays (empty)
    so the others keep their index, except at the end, where it is dropped.
    """
    wanted = set(universe)
    slots = [[s for s in slot if s in wanted] for slot in previous]
    placed = {s for slot in slots for s in slot}
    changed = {i for i, (old, new) in enumerate(zip(previous, slots)) if len(old) != len(new)}
    i = 0
    for symbol in sorted(wanted - placed):
        while i < len(slots) and len(slots[i]) >= limit:
            i += 1
        if i == len(slots):
            slots.append([])
        slots[i].append(symbol)
        changed.add(i)
    while slots and not slots[-1]:
        slots.pop()
        changed.add(len(slots))
    return [tuple(slot) for slot in slots], changed


def expand(stream: Stream, slots: Slots) -> list[Stream]:
    """One worker stream per non-empty slot: ``name/0``, ``name/1``, ..."""
    return [replace(stream, name=f"{stream.name}/{i}", symbols=slot) for i, slot in enumerate(slots) if slot]


def fetch_exchange_info(rest_url: str, market: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET exchangeInfo (weight 20 on spot, 1 on USD-M: a refresh every few
    minutes is a negligible share of the per-IP weight budget)."""
    with urllib.request.urlopen(rest_url.rstrip("/") + EXCHANGE_INFO_PATH[market], timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass(frozen=True)
class Change:
    """What the parent must do for one connection of an expanded stream."""

    stream: str                     # "name/i"
    old: tuple[str, ...]            # () = a new connection
    new: tuple[str, ...]            # () = the connection goes away


@dataclass
class Universe:
    """The live symbol set of one ``symbols = "*"`` stream, fed exchangeInfo
    bodies as they are fetched (at start, then on a schedule). Pure: the
    caller fetches and carries out the changes (start a worker for a new
    connection, make-before-break replace a changed one, stop a removed one).
    """

    template: Stream
    limit: int                      # symbols per connection (``per_connection``)
    quote_assets: tuple[str, ...] = ()
    shard: Shard = ALL
    slots: Slots = None             # type: ignore[assignment]
    exclude: frozenset[str] = frozenset()   # symbols a configured stream already carries on these topics

    def __post_init__(self) -> None:
        self.slots = list(self.slots or [])

    def update(self, info: dict[str, Any]) -> list[Change]:
        """A new exchangeInfo body: the connections whose symbols changed.

        An empty selection (a failed or truncated answer) changes nothing:
        dropping the whole market on one bad response would be worse than
        keeping yesterday's list."""
        symbols = [s for s in select(info, self.quote_assets, shard=self.shard) if s not in self.exclude]
        if not symbols:
            return []
        old = self.slots
        self.slots, changed = assign(old, symbols, self.limit)
        name = self.template.name
        return [Change(f"{name}/{i}", old[i] if i < len(old) else (),
                       self.slots[i] if i < len(self.slots) else ()) for i in sorted(changed)]

    def streams(self) -> list[Stream]:
        return expand(self.template, self.slots)

    def stream(self, slot: int) -> Stream:
        return replace(self.template, name=f"{self.template.name}/{slot}", symbols=self.slots[slot])


# -- what the parent does about a change: pure decisions ----------------------------

@dataclass(frozen=True)
class AddSlot:
    """A new connection: start a worker for it (the others keep running)."""
    stream: Stream


@dataclass(frozen=True)
class ReplaceSlot:
    """A connection's symbols changed: rotate its worker (make before break)
    to one with ``stream``'s symbols; ``delisted`` symbols get a final notice."""
    stream: Stream
    listed: tuple[str, ...]
    delisted: tuple[str, ...]


@dataclass(frozen=True)
class RemoveSlot:
    """Every symbol of a connection is gone: stop its worker for good; its
    symbols get a final notice."""
    name: str
    delisted: tuple[str, ...]


SlotAction = AddSlot | ReplaceSlot | RemoveSlot


def plan(universe: Universe, changes: Iterable[Change]) -> list[SlotAction]:
    """What to do about ``universe.update``'s changes, connection by
    connection. Only the connections named are touched: every other worker
    keeps running. A symbol that leaves a connection has left the universe
    (``assign`` never moves a symbol), so it is delisted (or filtered out)."""
    out: list[SlotAction] = []
    for change in changes:
        gone = tuple(s for s in change.old if s not in change.new)
        if not change.new:
            out.append(RemoveSlot(change.stream, gone))
            continue
        stream = replace(universe.template, name=change.stream, symbols=change.new)
        if not change.old:
            out.append(AddSlot(stream))
        else:
            out.append(ReplaceSlot(stream, tuple(s for s in change.new if s not in change.old), gone))
    return out


def universes_of(config: Any) -> list[Universe]:
    """The live ``Universe`` of each wildcard stream of a resolved config
    (``resolve``): its slots are the expanded ``name/i`` streams."""
    if not config.universes:
        return []
    shard = parse_shard(config.shard) if config.shard else ALL
    out = []
    for w in config.universes:
        t = w.template
        prefix = t.name + "/"
        by_slot = {int(s.name[len(prefix):]): s.symbols for s in config.streams
                   if s.name.startswith(prefix) and s.name[len(prefix):].isdigit()}
        slots = [by_slot.get(i, ()) for i in range(max(by_slot, default=-1) + 1)]
        out.append(Universe(t, per_connection(t.market, t.channel, len(t.intervals), w.streams_per_connection),
                            w.quote_assets, shard, slots, _taken(config, t)))
    return out


def _taken(config: Any, t: Stream) -> frozenset[str]:
    """Symbols configured streams (names without "/") carry on ``t``'s topics."""
    return frozenset(sym for s in config.streams if "/" not in s.name and s.market == t.market
                     and s.channel == t.channel and s.topic_prefix == t.topic_prefix for sym in s.symbols)


# -- config: [[stream]] with symbols = "*", [feedsup] shard -------------------------

WILDCARD_KEYS = ("quote_assets", "streams_per_connection")


@dataclass(frozen=True)
class Wildcard:
    """A ``[[stream]]`` with ``symbols = "*"``: the whole market, filtered."""

    template: Stream                     # every key but the symbols, validated as a normal stream
    quote_assets: tuple[str, ...] = ()   # empty = any quote asset
    streams_per_connection: int = 0      # 0 = Binance's cap (1024 spot, 200 usdm)


def split_wildcards(raw: object, at: Any, config: Any) -> tuple[object, tuple[Wildcard, ...]]:
    """Separate ``symbols = "*"`` tables from the others (left as they are).

    Each wildcard table is validated as a normal stream, with a placeholder
    symbol, so its errors read like every other stream's."""
    from feedsup import config as cfg

    if not isinstance(raw, list):
        return raw, ()
    plain, wild = [], []
    for i, item in enumerate(raw):
        if not (isinstance(item, dict) and item.get("symbols") == "*"):
            plain.append(item)
            continue
        base = {k: v for k, v in item.items() if k not in WILDCARD_KEYS}
        if base.get("channel") == "account":
            cfg._At(at.file, f"{at.key}[{i}].symbols").fail('an account stream takes no symbols, not "*"')
        stream = cfg._load_stream({**base, "symbols": ["BTCUSDT"]}, at.index(i), config)
        where = cfg._At(at.file, f'stream "{stream.name}"')
        table = cfg._Table({k: item[k] for k in WILDCARD_KEYS if k in item}, where, WILDCARD_KEYS)
        quotes = table.get("quote_assets", cfg._array(cfg._non_empty), ())
        target = table.get("streams_per_connection", cfg._int_range(1, MAX_STREAMS[stream.market]), 0)
        wildcard = Wildcard(replace(stream, symbols=()), tuple(q.upper() for q in quotes), target)
        _check_disjoint(wildcard, wild, where)
        wild.append(wildcard)
    return plain, tuple(wild)


def _check_disjoint(w: Wildcard, earlier: list[Wildcard], at: Any) -> None:
    """Two symbols = "*" streams that could publish one topic (same market,
    channel, topic prefix and interval, quote assets in common) are refused,
    as two configured streams with a shared symbol are."""
    t = w.template
    for other in earlier:
        o = other.template
        if (o.market, o.channel, o.topic_prefix) != (t.market, t.channel, t.topic_prefix):
            continue
        if t.channel == "kline" and not set(t.intervals) & set(o.intervals):
            continue
        if w.quote_assets and other.quote_assets and not set(w.quote_assets) & set(other.quote_assets):
            continue
        at.dot("topic_prefix").fail(
            f'symbols = "*" here and in stream "{o.name}" publish the same topics; give one of them a '
            f'topic_prefix or quote_assets the other does not have')


def shard_converter(value: object, at: Any) -> str:
    from feedsup import config as cfg

    text = cfg._non_empty(value, at)
    try:
        parse_shard(text)
    except ValueError as exc:
        at.fail(str(exc))
    return text


def resolve(config: Any, fetch: Any = fetch_exchange_info) -> Any:
    """``config`` with every wildcard stream expanded into ``name/i`` workers
    for this host's shard, from exchangeInfo (one fetch per market).
    Symbols a configured stream already carries on the same topics are left
    to it."""
    if not config.universes:
        return config
    shard = parse_shard(config.shard) if config.shard else ALL
    infos: dict[str, dict[str, Any]] = {}
    streams = list(config.streams)
    for w in config.universes:
        t = w.template
        if t.market not in infos:
            infos[t.market] = fetch(config.endpoint(t.market).rest_url, t.market)
        u = Universe(t, per_connection(t.market, t.channel, len(t.intervals), w.streams_per_connection),
                     w.quote_assets, shard, exclude=_taken(config, t))
        u.update(infos[t.market])
        streams += u.streams()
    from feedsup.config import check_expanded   # late: config builds on this module

    expanded = replace(config, streams=tuple(streams))
    check_expanded(expanded)
    return expanded
