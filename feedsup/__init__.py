"""feedsup: a multiprocess feed supervisor for Binance WebSocket streams."""

__version__ = "0.1.0"
