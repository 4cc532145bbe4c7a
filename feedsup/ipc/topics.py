"""Topic names on the PUB socket.

A topic is ``<channel>.<SYMBOL>`` or ``kline.<SYMBOL>.<interval>``; account
events use ``account.<event>``. ZeroMQ subscriptions match by byte prefix, so
``kline.BTCUSDT`` receives every BTCUSDT interval and ``kline.`` every kline.
"""

from __future__ import annotations


def market_topic(channel: str, symbol: str) -> str:
    return f"{channel}.{symbol.upper()}"


def kline_topic(symbol: str, interval: str) -> str:
    return f"kline.{symbol.upper()}.{interval}"


def account_topic(event: str) -> str:
    return f"account.{event}"


def topic_channel(topic: str) -> str:
    return topic.split(".", 1)[0]


def stream_topics(channel: str, symbols: "tuple[str, ...] | list[str]",
                  intervals: "tuple[str, ...] | list[str]" = ()) -> list[str]:
    """Every topic a market stream of this shape publishes."""
    if channel == "kline":
        return [kline_topic(s, i) for s in symbols for i in intervals]
    return [market_topic(channel, s) for s in symbols]


# Topics the parent itself publishes; never clash with exchange channels.
HELLO_PREFIX = "_feedsup.hello."
