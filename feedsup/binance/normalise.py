"""Binance events -> feedsup's normalised data (the wire contract's ``data``).

``make_normaliser(stream)`` returns one plain function per stream. It takes the
``data`` dict of one combined-stream message and returns
``(topic, data, major, minor, final)``: the PUB topic, the normalised dict, and
the exchange ordering key the parent uses to suppress duplicates across
overlapping connections (rotation, backfill).

Normalised dicts use explicit snake_case names, keep decimals as the exchange's
strings and times as int milliseconds. Binance fields that its docs mark
"ignore" (``M``, kline ``B``) are dropped, as are fields we do not know, so a
new exchange field never changes the contract silently.

This is the hot path (tens of thousands of messages per second per worker):
each normaliser is a closure that builds one dict literal. Validation is what
the pipeline and the wire contract depend on: the event type, every field's
presence, a subscribed symbol (and interval), an int64 ordering key (it is
packed into the frame header and drives de-duplication), and every published
field's type (decimals ``str``, times, ids and counts ``int``, flags
``bool``), one ``type(x) is T`` per field. Anything else is a MalformedEvent,
counted and skipped, never published against the contract. Depth diffs feed
the local book, which checks their levels.
"""

from __future__ import annotations

from typing import Any, Callable

from feedsup.config_model import Stream
from feedsup.ipc.topics import symbol_topic

Normalised = tuple[str, dict[str, Any], int, int, bool]
Normaliser = Callable[[dict[str, Any]], Normalised]

_I64_MAX = (1 << 63) - 1


class MalformedEvent(ValueError):
    """An event that cannot be normalised; the worker counts it and carries on."""


def make_normaliser(stream: Stream) -> Normaliser:
    """Normaliser for every event of ``stream`` (one market, one channel)."""
    try:
        factory = _FACTORIES[stream.market, stream.channel]
    except KeyError:
        raise ValueError(f"no normaliser for {stream.market} {stream.channel}") from None
    # Keyed by the upper-case symbol, as Binance spells it in events.
    symbols = [s.upper() for s in stream.symbols]
    prefix = stream.topic_prefix
    if stream.channel == "kline":
        topics: dict[str, Any] = {
            s: {i: symbol_topic("kline", s, i, prefix) for i in stream.intervals} for s in symbols
        }
    else:
        topics = {s: symbol_topic(stream.channel, s, "", prefix) for s in symbols}
    return factory(topics)


def depth_frame(
    symbol: str, update_id: int, bids: list[list[str]], asks: list[list[str]],
    event_time: int, prefix: str = "",
) -> Normalised:
    """The published top-N frame of a local order book (channel ``depth``)."""
    data = {
        "symbol": symbol, "update_id": update_id, "event_time": event_time,
        "bids": bids, "asks": asks,
    }
    return symbol_topic("depth", symbol, "", prefix), data, update_id, 0, True


def _malformed(channel: str, exc: Exception) -> MalformedEvent:
    if isinstance(exc, KeyError):
        why = f"missing field or unsubscribed symbol/interval {exc}"
    else:
        why = f"not an event object ({exc})"
    return MalformedEvent(f"{channel}: {why}")


def _bad_key(value: Any) -> bool:
    """True unless ``value`` fits the frame header's int64 ordering key."""
    return type(value) is not int or not 0 <= value <= _I64_MAX


def _wrong_type(channel: str, got: Any) -> MalformedEvent:
    return MalformedEvent(f"{channel}: unexpected event type {got!r}")


def _bad_ordering(channel: str, field: str, value: Any) -> MalformedEvent:
    return MalformedEvent(f"{channel}: field {field!r} is not an int64: {value!r}")


# The wire contract: decimals are the exchange's strings, times and ids are
# ints, flags are bools. Each normaliser checks its fields inline with one
# ``type(x) is T`` per field (the hot path); on failure, ``_bad_types`` (the
# slow path) names the first offending Binance field.
_S, _I, _B = str, int, bool


def _bad_types(channel: str, event: dict[str, Any], types: dict[str, type]) -> MalformedEvent:
    for field, want in types.items():
        value = event.get(field) if "." not in field else event.get("k", {}).get(field[2:])
        if type(value) is not want:
            return MalformedEvent(f"{channel}: field {field!r} must be {want.__name__}, got {value!r}")
    return MalformedEvent(f"{channel}: a field has the wrong type")


# Each factory takes the symbol -> topic map and returns the closure. The
# common path is: look fields up inside one try (KeyError/TypeError mean a
# malformed event), check the ordering key and the field types, return.

_AGG_TYPES = {"p": _S, "q": _S, "f": _I, "l": _I, "T": _I, "m": _B, "E": _I}


def _agg_trade(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "aggTrade":
                raise _wrong_type("aggTrade", d["e"])
            s = d["s"]
            topic = topics[s]
            a = d["a"]
            data = {
                "symbol": s, "agg_id": a, "price": (p := d["p"]), "qty": (q := d["q"]),
                "first_trade_id": (f := d["f"]), "last_trade_id": (l_ := d["l"]), "time": (t := d["T"]),
                "buyer_maker": (m := d["m"]), "event_time": (e := d["E"]),
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("aggTrade", exc) from None
        if type(a) is not int or not 0 <= a <= _I64_MAX:
            raise _bad_ordering("aggTrade", "a", a)
        if (type(p) is not str or type(q) is not str or type(f) is not int or type(l_) is not int
                or type(t) is not int or type(m) is not bool or type(e) is not int):
            raise _bad_types("aggTrade", d, _AGG_TYPES)
        return topic, data, a, 0, True
    return normalise


_TRADE_TYPES = {"p": _S, "q": _S, "T": _I, "m": _B, "E": _I}


def _trade(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "trade":
                raise _wrong_type("trade", d["e"])
            s = d["s"]
            topic = topics[s]
            t = d["t"]
            data = {
                "symbol": s, "trade_id": t, "price": (p := d["p"]), "qty": (q := d["q"]),
                "time": (tt := d["T"]), "buyer_maker": (m := d["m"]), "event_time": (e := d["E"]),
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("trade", exc) from None
        if type(t) is not int or not 0 <= t <= _I64_MAX:
            raise _bad_ordering("trade", "t", t)
        if (type(p) is not str or type(q) is not str or type(tt) is not int or type(m) is not bool
                or type(e) is not int):
            raise _bad_types("trade", d, _TRADE_TYPES)
        return topic, data, t, 0, True
    return normalise


_BOOK_TYPES = {"b": _S, "B": _S, "a": _S, "A": _S}
_USDM_BOOK_TYPES = {**_BOOK_TYPES, "E": _I, "T": _I}


def _spot_book_ticker(topics: dict[str, str]) -> Normaliser:
    # Spot bookTicker carries neither "e" nor "E": the update id is all we have.
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            s = d["s"]
            topic = topics[s]
            u = d["u"]
            data = {
                "symbol": s, "update_id": u, "bid_price": (b := d["b"]), "bid_qty": (bq := d["B"]),
                "ask_price": (a := d["a"]), "ask_qty": (aq := d["A"]),
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("bookTicker", exc) from None
        if type(u) is not int or not 0 <= u <= _I64_MAX:
            raise _bad_ordering("bookTicker", "u", u)
        if type(b) is not str or type(bq) is not str or type(a) is not str or type(aq) is not str:
            raise _bad_types("bookTicker", d, _BOOK_TYPES)
        return topic, data, u, 0, True
    return normalise


def _usdm_book_ticker(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "bookTicker":
                raise _wrong_type("bookTicker", d["e"])
            s = d["s"]
            topic = topics[s]
            u = d["u"]
            data = {
                "symbol": s, "update_id": u, "bid_price": (b := d["b"]), "bid_qty": (bq := d["B"]),
                "ask_price": (a := d["a"]), "ask_qty": (aq := d["A"]), "event_time": (e := d["E"]),
                "transaction_time": (t := d["T"]),
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("bookTicker", exc) from None
        if type(u) is not int or not 0 <= u <= _I64_MAX:
            raise _bad_ordering("bookTicker", "u", u)
        if (type(b) is not str or type(bq) is not str or type(a) is not str or type(aq) is not str
                or type(e) is not int or type(t) is not int):
            raise _bad_types("bookTicker", d, _USDM_BOOK_TYPES)
        return topic, data, u, 0, True
    return normalise


_MINI_TYPES = {"c": _S, "o": _S, "h": _S, "l": _S, "v": _S, "q": _S}


def _mini_ticker(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "24hrMiniTicker":
                raise _wrong_type("miniTicker", d["e"])
            s = d["s"]
            topic = topics[s]
            e = d["E"]
            data = {
                "symbol": s, "event_time": e, "close": (c := d["c"]), "open": (o := d["o"]),
                "high": (h := d["h"]), "low": (lo := d["l"]), "volume": (v := d["v"]),
                "quote_volume": (q := d["q"]),
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("miniTicker", exc) from None
        if type(e) is not int or not 0 <= e <= _I64_MAX:
            raise _bad_ordering("miniTicker", "E", e)
        if (type(c) is not str or type(o) is not str or type(h) is not str or type(lo) is not str
                or type(v) is not str or type(q) is not str):
            raise _bad_types("miniTicker", d, _MINI_TYPES)
        return topic, data, e, 0, True
    return normalise


# ticker is a superset of miniTicker under the same names ("close" is Binance's
# "last price"), so a consumer can switch between the two without renaming.
# Tickers come once a second per symbol: a plain loop over the types is cheap.

_TICKER_TYPES = {**_MINI_TYPES, "p": _S, "P": _S, "w": _S, "Q": _S, "O": _I, "C": _I, "F": _I, "L": _I,
                 "n": _I}
_SPOT_TICKER_TYPES = {**_TICKER_TYPES, "x": _S, "b": _S, "B": _S, "a": _S, "A": _S}


def _ticker(market: str) -> Callable[[dict[str, str]], Normaliser]:
    # Futures tickers lack the prev-close price and the best bid/ask; the rest
    # is shared. Tickers come once a second, so the extra update costs nothing.
    spot = market == "spot"
    types = list((_SPOT_TICKER_TYPES if spot else _TICKER_TYPES).items())

    def factory(topics: dict[str, str]) -> Normaliser:
        def normalise(d: dict[str, Any]) -> Normalised:
            try:
                if d["e"] != "24hrTicker":
                    raise _wrong_type("ticker", d["e"])
                s = d["s"]
                topic = topics[s]
                e = d["E"]
                data = {
                    "symbol": s, "event_time": e, "close": d["c"], "open": d["o"],
                    "high": d["h"], "low": d["l"], "volume": d["v"], "quote_volume": d["q"],
                    "price_change": d["p"], "price_change_percent": d["P"],
                    "weighted_avg_price": d["w"], "last_qty": d["Q"], "open_time": d["O"],
                    "close_time": d["C"], "first_trade_id": d["F"], "last_trade_id": d["L"],
                    "trades": d["n"],
                }
                if spot:
                    data.update({
                        "prev_close_price": d["x"], "bid_price": d["b"], "bid_qty": d["B"],
                        "ask_price": d["a"], "ask_qty": d["A"],
                    })
            except (KeyError, TypeError) as exc:
                raise _malformed("ticker", exc) from None
            if type(e) is not int or not 0 <= e <= _I64_MAX:
                raise _bad_ordering("ticker", "E", e)
            for field, want in types:
                if type(d[field]) is not want:
                    raise _bad_types("ticker", d, dict(types))
            return topic, data, e, 0, True
        return normalise
    return factory


_MARK_TYPES = {"p": _S, "i": _S, "P": _S, "r": _S, "T": _I}


def _mark_price(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "markPriceUpdate":
                raise _wrong_type("markPrice", d["e"])
            s = d["s"]
            topic = topics[s]
            e = d["E"]
            data = {
                "symbol": s, "event_time": e, "mark_price": (p := d["p"]), "index_price": (i := d["i"]),
                "estimated_settle_price": (ps := d["P"]), "funding_rate": (r := d["r"]),
                "next_funding_time": (t := d["T"]),
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("markPrice", exc) from None
        if type(e) is not int or not 0 <= e <= _I64_MAX:
            raise _bad_ordering("markPrice", "E", e)
        if (type(p) is not str or type(i) is not str or type(ps) is not str or type(r) is not str
                or type(t) is not int):
            raise _bad_types("markPrice", d, _MARK_TYPES)
        return topic, data, e, 0, True
    return normalise


_KLINE_TYPES = {"k.T": _I, "k.o": _S, "k.h": _S, "k.l": _S, "k.c": _S, "k.v": _S, "k.q": _S, "k.n": _I,
                "k.f": _I, "k.L": _I, "k.V": _S, "k.Q": _S}


def _kline(topics: dict[str, dict[str, str]]) -> Normaliser:
    # Ordering key (open time, event time, closed): the parent keeps the last
    # update of each kline and suppresses replays of a closed one.
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "kline":
                raise _wrong_type("kline", d["e"])
            s = d["s"]
            k = d["k"]
            i = k["i"]
            topic = topics[s][i]
            t = k["t"]
            e = d["E"]
            x = k["x"]
            data = {
                "symbol": s, "interval": i, "open_time": t, "close_time": (ct := k["T"]),
                "open": (o := k["o"]), "high": (h := k["h"]), "low": (lo := k["l"]), "close": (c := k["c"]),
                "volume": (v := k["v"]), "quote_volume": (q := k["q"]), "trades": (n := k["n"]),
                "closed": x, "event_time": e, "first_trade_id": (f := k["f"]),
                "last_trade_id": (la := k["L"]), "taker_buy_volume": (tv := k["V"]),
                "taker_buy_quote_volume": (tq := k["Q"]),
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("kline", exc) from None
        if _bad_key(t):
            raise _bad_ordering("kline", "k.t", t)
        if _bad_key(e):
            raise _bad_ordering("kline", "E", e)
        if type(x) is not bool:
            raise MalformedEvent(f"kline: field 'k.x' is not a bool: {x!r}")
        if (type(o) is not str or type(h) is not str or type(lo) is not str or type(c) is not str
                or type(v) is not str or type(q) is not str or type(tv) is not str or type(tq) is not str
                or type(ct) is not int or type(n) is not int or type(f) is not int or type(la) is not int):
            raise _bad_types("kline", d, _KLINE_TYPES)
        return topic, data, t, e, x
    return normalise


def _depth(market: str) -> Callable[[dict[str, str]], Normaliser]:
    # A depth diff feeds the local book (feedsup.binance.book); it is not
    # published itself. Futures add the transaction time and "pu", the
    # previous event's final update id, which the book sync chains on.
    futures = market == "usdm"

    def factory(topics: dict[str, str]) -> Normaliser:
        def normalise(d: dict[str, Any]) -> Normalised:
            try:
                if d["e"] != "depthUpdate":
                    raise _wrong_type("depth", d["e"])
                s = d["s"]
                topic = topics[s]
                first = d["U"]
                last = d["u"]
                bids = d["b"]
                asks = d["a"]
                data = {
                    "symbol": s, "event_time": (e := d["E"]), "first_update_id": first,
                    "last_update_id": last, "bids": bids, "asks": asks,
                }
                if futures:
                    data["transaction_time"] = tt = d["T"]
                    data["prev_update_id"] = prev = d["pu"]
                    if _bad_key(prev):
                        raise _bad_ordering("depth", "pu", prev)
                    if type(tt) is not int:
                        raise _bad_types("depth", d, {"T": _I})
            except (KeyError, TypeError) as exc:
                raise _malformed("depth", exc) from None
            if _bad_key(first) or _bad_key(last) or first > last:
                raise MalformedEvent(f"depth: bad update id range U={first!r} u={last!r}")
            if type(bids) is not list or type(asks) is not list:
                raise MalformedEvent("depth: 'b' and 'a' must be lists of levels")
            if type(e) is not int:
                raise _bad_types("depth", d, {"E": _I})
            return topic, data, last, 0, True
        return normalise
    return factory


_FACTORIES: dict[tuple[str, str], Callable[[Any], Normaliser]] = {
    ("spot", "aggTrade"): _agg_trade,
    ("usdm", "aggTrade"): _agg_trade,
    ("spot", "trade"): _trade,
    ("usdm", "trade"): _trade,
    ("spot", "bookTicker"): _spot_book_ticker,
    ("usdm", "bookTicker"): _usdm_book_ticker,
    ("spot", "miniTicker"): _mini_ticker,
    ("usdm", "miniTicker"): _mini_ticker,
    ("spot", "ticker"): _ticker("spot"),
    ("usdm", "ticker"): _ticker("usdm"),
    ("usdm", "markPrice"): _mark_price,
    ("spot", "kline"): _kline,
    ("usdm", "kline"): _kline,
    ("spot", "depth"): _depth("spot"),
    ("usdm", "depth"): _depth("usdm"),
}
