"""Binance event and REST payloads built from the market model (pure).

Field names, order and types follow Binance's documentation: decimals are
strings, times are integer milliseconds. Spot shows every decimal with 8
places; USD-M futures uses the symbol's own precision (mark prices use 8).
"""

from __future__ import annotations

import weakref
from typing import Any

from .decimals import fmt_units
from .market import AggTrade, BookUpdate, Kline, Rolling, SymbolMarket, Trade

SPOT_DECIMALS = 8


class Fmt:
    """Decimal formatting for one symbol on one market."""

    def __init__(self, m: SymbolMarket) -> None:
        self.pd = m.price_decimals
        self.qd = m.qty_decimals
        spot = m.market == "spot"
        self.out_p = SPOT_DECIMALS if spot else self.pd
        self.out_q = SPOT_DECIMALS if spot else self.qd
        self.out_quote = SPOT_DECIMALS if spot else self.pd + self.qd

    def p(self, ticks: int) -> str:
        return _fmt(ticks, self.pd, self.out_p)

    def q(self, steps: int) -> str:
        return _fmt(steps, self.qd, self.out_q)

    def quote(self, amount: int) -> str:
        return _fmt(amount, self.pd + self.qd, self.out_quote)

    def p8(self, ticks: int) -> str:
        return _fmt(ticks, self.pd, 8)


_fmt = fmt_units


_FMT_CACHE: "weakref.WeakKeyDictionary[SymbolMarket, Fmt]" = weakref.WeakKeyDictionary()


def fmt_of(m: SymbolMarket) -> Fmt:
    f = _FMT_CACHE.get(m)
    if f is None:
        f = _FMT_CACHE[m] = Fmt(m)
    return f


# -- stream events ---------------------------------------------------------------


def trade_event(m: SymbolMarket, t: Trade, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    return {"e": "trade", "E": now, "s": m.spec.symbol, "t": t.id, "p": f.p(t.price), "q": f.q(t.qty),
            "T": t.time, "m": t.buyer_maker, "M": True}


def agg_trade_event(m: SymbolMarket, a: AggTrade, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    ev = {"e": "aggTrade", "E": now, "s": m.spec.symbol, "a": a.id, "p": f.p(a.price), "q": f.q(a.qty),
          "f": a.first, "l": a.last, "T": a.time, "m": a.buyer_maker}
    if m.market == "spot":
        ev["M"] = True
    return ev


def book_ticker_event(m: SymbolMarket, u: BookUpdate, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    if m.market == "spot":
        return {"u": u.id, "s": m.spec.symbol, "b": f.p(u.bid), "B": f.q(u.bid_qty), "a": f.p(u.ask), "A": f.q(u.ask_qty)}
    return {"e": "bookTicker", "u": u.id, "E": now, "T": u.time, "s": m.spec.symbol,
            "b": f.p(u.bid), "B": f.q(u.bid_qty), "a": f.p(u.ask), "A": f.q(u.ask_qty)}


def kline_body(m: SymbolMarket, interval: str, k: Kline, closed: bool) -> dict[str, Any]:
    f = fmt_of(m)
    return {"t": k.open_time, "T": k.close_time, "s": m.spec.symbol, "i": interval, "f": k.first_id, "L": k.last_id,
            "o": f.p(k.open), "c": f.p(k.close), "h": f.p(k.high), "l": f.p(k.low), "v": f.q(k.volume),
            "n": k.trades, "x": closed, "q": f.quote(k.quote_volume), "V": f.q(k.taker_volume),
            "Q": f.quote(k.taker_quote_volume), "B": "0"}


def kline_event(m: SymbolMarket, interval: str, k: Kline, closed: bool, now: int) -> dict[str, Any]:
    return {"e": "kline", "E": now, "s": m.spec.symbol, "k": kline_body(m, interval, k, closed)}


def depth_event(m: SymbolMarket, first: int, last: int, prev: int, changes: dict[tuple[int, int], int],
                now: int, update_time: int) -> dict[str, Any]:
    """Diff depth: ``changes`` maps (side, price) to the level's new quantity."""
    f = fmt_of(m)
    bids = [[f.p(p), f.q(q)] for (side, p), q in sorted(changes.items(), key=lambda kv: -kv[0][1]) if side == 0]
    asks = [[f.p(p), f.q(q)] for (side, p), q in sorted(changes.items(), key=lambda kv: kv[0][1]) if side == 1]
    if m.market == "spot":
        return {"e": "depthUpdate", "E": now, "s": m.spec.symbol, "U": first, "u": last, "b": bids, "a": asks}
    return {"e": "depthUpdate", "E": now, "T": update_time, "s": m.spec.symbol, "U": first, "u": last, "pu": prev,
            "b": bids, "a": asks}


def partial_depth_event(m: SymbolMarket, levels: int, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    uid, bids, asks = m.depth(levels)
    bl = [[f.p(p), f.q(q)] for p, q in bids]
    al = [[f.p(p), f.q(q)] for p, q in asks]
    if m.market == "spot":
        return {"lastUpdateId": uid, "bids": bl, "asks": al}
    return {"e": "depthUpdate", "E": now, "T": m.now_ms, "s": m.spec.symbol, "U": uid, "u": uid, "pu": uid - 1,
            "b": bl, "a": al}


def mini_ticker_event(m: SymbolMarket, r: Rolling, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    return {"e": "24hrMiniTicker", "E": now, "s": m.spec.symbol, "c": f.p(r.close), "o": f.p(r.open),
            "h": f.p(r.high), "l": f.p(r.low), "v": f.q(r.volume), "q": f.quote(r.quote_volume)}


def _percent(change: int, base: int) -> str:
    if base == 0:
        return "0.000"
    # Three decimals, exact integer arithmetic, truncated toward zero.
    thousandths = abs(change) * 100_000 // base
    sign = "-" if change < 0 and thousandths else ""
    return f"{sign}{thousandths // 1000}.{thousandths % 1000:03d}"


def ticker_event(m: SymbolMarket, r: Rolling, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    change = r.close - r.open
    wavg = (r.quote_volume // r.volume) if r.volume else r.close
    count = (r.last_id - r.first_id + 1) if r.first_id >= 0 else 0
    ev: dict[str, Any] = {"e": "24hrTicker", "E": now, "s": m.spec.symbol, "p": f.p(change), "P": _percent(change, r.open),
                          "w": f.p(wavg)}
    if m.market == "spot":
        ev["x"] = f.p(r.prev_close)
    ev.update({"c": f.p(r.close), "Q": f.q(m.last_qty)})
    if m.market == "spot":
        bids, asks = m.bids, m.asks
        bb, ba = m.center - 1, m.center + 1
        ev.update({"b": f.p(bb), "B": f.q(bids[bb]), "a": f.p(ba), "A": f.q(asks[ba])})
    ev.update({"o": f.p(r.open), "h": f.p(r.high), "l": f.p(r.low), "v": f.q(r.volume), "q": f.quote(r.quote_volume),
               "O": r.open_time, "C": r.close_time, "F": r.first_id, "L": r.last_id, "n": count})
    return ev


FUNDING_PERIOD_MS = 8 * 3_600_000


def mark_price_event(m: SymbolMarket, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    mark = m.center
    return {"e": "markPriceUpdate", "E": now, "s": m.spec.symbol, "p": f.p8(mark), "i": f.p8(mark - 1),
            "P": f.p8(mark), "r": "0.00010000", "T": (now // FUNDING_PERIOD_MS + 1) * FUNDING_PERIOD_MS}


# -- REST rows -------------------------------------------------------------------


def kline_row(m: SymbolMarket, k: Kline) -> list[Any]:
    f = fmt_of(m)
    return [k.open_time, f.p(k.open), f.p(k.high), f.p(k.low), f.p(k.close), f.q(k.volume), k.close_time,
            f.quote(k.quote_volume), k.trades, f.q(k.taker_volume), f.quote(k.taker_quote_volume), "0"]


def agg_trade_row(m: SymbolMarket, a: AggTrade) -> dict[str, Any]:
    f = fmt_of(m)
    row = {"a": a.id, "p": f.p(a.price), "q": f.q(a.qty), "f": a.first, "l": a.last, "T": a.time, "m": a.buyer_maker}
    if m.market == "spot":
        row["M"] = True
    return row


def trade_row(m: SymbolMarket, t: Trade) -> dict[str, Any]:
    f = fmt_of(m)
    row = {"id": t.id, "price": f.p(t.price), "qty": f.q(t.qty), "quoteQty": f.quote(t.price * t.qty),
           "time": t.time, "isBuyerMaker": t.buyer_maker}
    if m.market == "spot":
        row["isBestMatch"] = True
    return row


def depth_snapshot(m: SymbolMarket, limit: int, now: int) -> dict[str, Any]:
    f = fmt_of(m)
    uid, bids, asks = m.depth(limit)
    body: dict[str, Any] = {"lastUpdateId": uid}
    if m.market != "spot":
        body.update({"E": now, "T": m.now_ms})
    body["bids"] = [[f.p(p), f.q(q)] for p, q in bids]
    body["asks"] = [[f.p(p), f.q(q)] for p, q in asks]
    return body
