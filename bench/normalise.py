"""ns per message of each normaliser (and of orjson parse + normalise).

Run: python3 bench/normalise.py [--number N]
Prints a table; best of several repeats, since the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from feedsup.config import Stream  # noqa: E402
from feedsup.binance.normalise import make_normaliser  # noqa: E402

EVENTS = {
    ("spot", "aggTrade"): {
        "e": "aggTrade", "E": 1672515782136, "s": "BTCUSDT", "a": 12345, "p": "0.001",
        "q": "100", "f": 100, "l": 105, "T": 1672515782134, "m": True, "M": True},
    ("spot", "trade"): {
        "e": "trade", "E": 1672515782136, "s": "BTCUSDT", "t": 12345, "p": "0.001",
        "q": "100", "T": 1672515782134, "m": True, "M": True},
    ("spot", "bookTicker"): {
        "u": 400900217, "s": "BTCUSDT", "b": "25.35190000", "B": "31.21000000",
        "a": "25.36520000", "A": "40.66000000"},
    ("usdm", "bookTicker"): {
        "e": "bookTicker", "u": 400900217, "E": 1568014460893, "T": 1568014460891,
        "s": "BTCUSDT", "b": "25.35190000", "B": "31.21000000", "a": "25.36520000",
        "A": "40.66000000"},
    ("spot", "miniTicker"): {
        "e": "24hrMiniTicker", "E": 1672515782136, "s": "BTCUSDT", "c": "0.0025",
        "o": "0.0010", "h": "0.0025", "l": "0.0010", "v": "10000", "q": "18"},
    ("spot", "ticker"): {
        "e": "24hrTicker", "E": 1672515782136, "s": "BTCUSDT", "p": "0.0015",
        "P": "250.00", "w": "0.0018", "x": "0.0009", "c": "0.0025", "Q": "10",
        "b": "0.0024", "B": "10", "a": "0.0026", "A": "100", "o": "0.0010",
        "h": "0.0025", "l": "0.0010", "v": "10000", "q": "18", "O": 0, "C": 86400000,
        "F": 0, "L": 18150, "n": 18151},
    ("usdm", "markPrice"): {
        "e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT",
        "p": "11794.15000000", "i": "11784.62659091", "P": "11784.25641265",
        "r": "0.00038167", "T": 1562306400000},
    ("spot", "kline"): {
        "e": "kline", "E": 1672515782136, "s": "BTCUSDT", "k": {
            "t": 1672515780000, "T": 1672515839999, "s": "BTCUSDT", "i": "1m",
            "f": 100, "L": 200, "o": "0.0010", "c": "0.0020", "h": "0.0025",
            "l": "0.0015", "v": "1000", "n": 100, "x": False, "q": "1.0000",
            "V": "500", "Q": "0.500", "B": "123456"}},
    ("usdm", "depth"): {
        "e": "depthUpdate", "E": 1672515782136, "T": 1672515782130, "s": "BTCUSDT",
        "U": 157, "u": 160, "pu": 149, "b": [["0.0024", "10"]] * 10,
        "a": [["0.0026", "100"]] * 10},
}


def best_ns(fn, number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=200_000, help="calls per repeat")
    args = parser.parse_args()
    print(f"{'market':6} {'channel':11} {'normalise ns':>13} {'loads+norm ns':>14} {'msgs/s':>10}")
    for (market, channel), event in EVENTS.items():
        stream = Stream(name="bench", market=market, channel=channel,
                        symbols=("BTCUSDT",), intervals=("1m",))
        normalise = make_normaliser(stream)
        wrapped = orjson.dumps({"stream": "btcusdt@x", "data": event})
        loads = orjson.loads
        alone = best_ns(lambda: normalise(event), args.number)
        parsed = best_ns(lambda: normalise(loads(wrapped)["data"]), args.number)
        print(f"{market:6} {channel:11} {alone:13.0f} {parsed:14.0f} {1e9 / parsed:10.0f}")


if __name__ == "__main__":
    main()
