"""Topic names on the PUB socket.

A topic is ``<channel>.<SYMBOL>`` or ``kline.<SYMBOL>.<interval>``, after
the stream's optional ``topic_prefix`` (``usdm.aggTrade.BTCUSDT``); account
events use ``account.<event>.<stream>``. ZeroMQ subscriptions match by byte
prefix, so ``kline.BTCUSDT`` receives every BTCUSDT interval and ``kline.``
every kline.
"""

from __future__ import annotations


def market_topic(channel: str, symbol: str) -> str:
    return f"{channel}.{symbol.upper()}"


def kline_topic(symbol: str, interval: str) -> str:
    return f"kline.{symbol.upper()}.{interval}"


def account_topic(event: str) -> str:
    return f"account.{event}"


def symbol_topic(channel: str, symbol: str, interval: str = "", prefix: str = "") -> str:
    """The topic of one symbol (and interval) of a market stream.

    ``prefix`` is the stream's ``topic_prefix``: it keeps two streams with the
    same channel and symbol (spot and USD-M BTCUSDT, say) on distinct topics.
    """
    base = kline_topic(symbol, interval) if channel == "kline" else market_topic(channel, symbol)
    return prefix + base


def stream_topics(channel: str, symbols: "tuple[str, ...] | list[str]",
                  intervals: "tuple[str, ...] | list[str]" = (), prefix: str = "") -> list[str]:
    """Every topic a market stream of this shape publishes."""
    if channel == "account":
        return []
    if channel == "kline":
        return [symbol_topic(channel, s, i, prefix) for s in symbols for i in intervals]
    return [symbol_topic(channel, s, "", prefix) for s in symbols]


# catch_up subscribes to HELLO_PREFIX + a one-off token to prove its
# subscription is live; the parent only watches for that subscription and
# never publishes on it, so consumers never see such a topic.
HELLO_PREFIX = "_feedsup.hello."
