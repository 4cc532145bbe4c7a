"""Exact decimal strings from integer units (no float rounding anywhere)."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

EIGHT = Decimal("0.00000001")


def fmt_units(units: int, unit_decimals: int, out_decimals: int) -> str:
    """Format ``units * 10**-unit_decimals`` with ``out_decimals`` places.

    Extra precision is truncated toward zero, the way Binance shows amounts.
    """
    if out_decimals < unit_decimals:
        units = int(units / 10 ** (unit_decimals - out_decimals)) if units < 0 else units // 10 ** (unit_decimals - out_decimals)
    elif out_decimals > unit_decimals:
        units *= 10 ** (out_decimals - unit_decimals)
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(out_decimals + 1, "0")
    if out_decimals == 0:
        return sign + digits
    return f"{sign}{digits[:-out_decimals]}.{digits[-out_decimals:]}"


def parse_units(text: str, unit_decimals: int) -> int:
    """Parse a decimal string into integer units; raises ValueError if finer."""
    text = text.strip()
    if not text or text.count(".") > 1:
        raise ValueError(text)
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    if len(frac) > unit_decimals:
        raise ValueError(text)
    if not (whole.lstrip("-").isdigit() or whole in ("", "-")) or (frac and not frac.isdigit()):
        raise ValueError(text)
    return int((whole or "0") + frac.ljust(unit_decimals, "0"))


def d8(value: Decimal) -> str:
    """Eight places, truncated: Binance's rendering of balances."""
    return format(value.quantize(EIGHT, rounding=ROUND_DOWN), "f")


def plain(value: Decimal) -> str:
    """As the client sent it, never in exponent notation."""
    return format(value, "f")
