"""A Binance-compatible exchange simulator with fault injection (``feedsup sim``)."""

from .options import SimOptions
from .server import SimServer

__all__ = ["SimOptions", "SimServer"]
