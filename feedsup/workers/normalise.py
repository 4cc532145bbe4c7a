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
the pipeline depends on and no more: the event type, every field's presence,
a subscribed symbol (and interval), and an int64 ordering key (it is packed
into the frame header and drives de-duplication). Any other field is passed
through as the exchange sent it.
"""

from __future__ import annotations

from typing import Any, Callable

from feedsup.config import Stream
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


# Each factory takes the symbol -> topic map and returns the closure. The
# common path is: look fields up inside one try (KeyError/TypeError mean a
# malformed event), check the ordering key, return.

def _agg_trade(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "aggTrade":
                raise _wrong_type("aggTrade", d["e"])
            s = d["s"]
            topic = topics[s]
            a = d["a"]
            data = {
                "symbol": s, "agg_id": a, "price": d["p"], "qty": d["q"],
                "first_trade_id": d["f"], "last_trade_id": d["l"], "time": d["T"],
                "buyer_maker": d["m"], "event_time": d["E"],
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("aggTrade", exc) from None
        if type(a) is not int or not 0 <= a <= _I64_MAX:
            raise _bad_ordering("aggTrade", "a", a)
        return topic, data, a, 0, True
    return normalise


def _trade(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "trade":
                raise _wrong_type("trade", d["e"])
            s = d["s"]
            topic = topics[s]
            t = d["t"]
            data = {
                "symbol": s, "trade_id": t, "price": d["p"], "qty": d["q"],
                "time": d["T"], "buyer_maker": d["m"], "event_time": d["E"],
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("trade", exc) from None
        if type(t) is not int or not 0 <= t <= _I64_MAX:
            raise _bad_ordering("trade", "t", t)
        return topic, data, t, 0, True
    return normalise


def _spot_book_ticker(topics: dict[str, str]) -> Normaliser:
    # Spot bookTicker carries neither "e" nor "E": the update id is all we have.
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            s = d["s"]
            topic = topics[s]
            u = d["u"]
            data = {
                "symbol": s, "update_id": u, "bid_price": d["b"], "bid_qty": d["B"],
                "ask_price": d["a"], "ask_qty": d["A"],
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("bookTicker", exc) from None
        if type(u) is not int or not 0 <= u <= _I64_MAX:
            raise _bad_ordering("bookTicker", "u", u)
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
                "symbol": s, "update_id": u, "bid_price": d["b"], "bid_qty": d["B"],
                "ask_price": d["a"], "ask_qty": d["A"], "event_time": d["E"],
                "transaction_time": d["T"],
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("bookTicker", exc) from None
        if type(u) is not int or not 0 <= u <= _I64_MAX:
            raise _bad_ordering("bookTicker", "u", u)
        return topic, data, u, 0, True
    return normalise


def _mini_ticker(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "24hrMiniTicker":
                raise _wrong_type("miniTicker", d["e"])
            s = d["s"]
            topic = topics[s]
            e = d["E"]
            data = {
                "symbol": s, "event_time": e, "close": d["c"], "open": d["o"],
                "high": d["h"], "low": d["l"], "volume": d["v"], "quote_volume": d["q"],
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("miniTicker", exc) from None
        if type(e) is not int or not 0 <= e <= _I64_MAX:
            raise _bad_ordering("miniTicker", "E", e)
        return topic, data, e, 0, True
    return normalise


# ticker is a superset of miniTicker under the same names ("close" is Binance's
# "last price"), so a consumer can switch between the two without renaming.

def _ticker(market: str) -> Callable[[dict[str, str]], Normaliser]:
    # Futures tickers lack the prev-close price and the best bid/ask; the rest
    # is shared. Tickers come once a second, so the extra update costs nothing.
    spot = market == "spot"

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
            return topic, data, e, 0, True
        return normalise
    return factory


def _mark_price(topics: dict[str, str]) -> Normaliser:
    def normalise(d: dict[str, Any]) -> Normalised:
        try:
            if d["e"] != "markPriceUpdate":
                raise _wrong_type("markPrice", d["e"])
            s = d["s"]
            topic = topics[s]
            e = d["E"]
            data = {
                "symbol": s, "event_time": e, "mark_price": d["p"], "index_price": d["i"],
                "estimated_settle_price": d["P"], "funding_rate": d["r"],
                "next_funding_time": d["T"],
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("markPrice", exc) from None
        if type(e) is not int or not 0 <= e <= _I64_MAX:
            raise _bad_ordering("markPrice", "E", e)
        return topic, data, e, 0, True
    return normalise


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
                "symbol": s, "interval": i, "open_time": t, "close_time": k["T"],
                "open": k["o"], "high": k["h"], "low": k["l"], "close": k["c"],
                "volume": k["v"], "quote_volume": k["q"], "trades": k["n"],
                "closed": x, "event_time": e, "first_trade_id": k["f"],
                "last_trade_id": k["L"], "taker_buy_volume": k["V"],
                "taker_buy_quote_volume": k["Q"],
            }
        except (KeyError, TypeError) as exc:
            raise _malformed("kline", exc) from None
        if _bad_key(t):
            raise _bad_ordering("kline", "k.t", t)
        if _bad_key(e):
            raise _bad_ordering("kline", "E", e)
        if type(x) is not bool:
            raise MalformedEvent(f"kline: field 'k.x' is not a bool: {x!r}")
        return topic, data, t, e, x
    return normalise


def _depth(market: str) -> Callable[[dict[str, str]], Normaliser]:
    # A depth diff feeds the local book (feedsup.workers.book); it is not
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
                    "symbol": s, "event_time": d["E"], "first_update_id": first,
                    "last_update_id": last, "bids": bids, "asks": asks,
                }
                if futures:
                    data["transaction_time"] = d["T"]
                    data["prev_update_id"] = prev = d["pu"]
                    if _bad_key(prev):
                        raise _bad_ordering("depth", "pu", prev)
            except (KeyError, TypeError) as exc:
                raise _malformed("depth", exc) from None
            if _bad_key(first) or _bad_key(last) or first > last:
                raise MalformedEvent(f"depth: bad update id range U={first!r} u={last!r}")
            if type(bids) is not list or type(asks) is not list:
                raise MalformedEvent("depth: 'b' and 'a' must be lists of levels")
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
