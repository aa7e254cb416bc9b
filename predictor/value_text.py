"""One Python value in Postgres text output format, as Postgres itself prints it."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np

_INFINITY_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}
_DAY_MICROS = 86_400_000_000


def text_value(value: Any) -> bytes | None:
    """Return one Python value in Postgres text output format; None stays NULL.

    A lone surrogate (never valid in Postgres text) is sent as '?'.
    """
    if value is None:
        return None
    return text(value).encode(errors="replace")


def text(value: Any) -> str:
    """Return one non-null Python value in Postgres text output format."""
    if isinstance(value, np.generic):
        value = value.item()
    match value:
        case bool():
            return "t" if value else "f"
        case int():
            return str(value)
        case float():
            return float_text(value)
        case Decimal():
            return decimal_text(value)
        case str():
            return value
        case bytes() | bytearray() | memoryview():
            return "\\x" + bytes(value).hex()
        case dt.datetime():
            return timestamp_text(value)
        case dt.date():
            return value.isoformat()
        case dt.time():
            return trim_fraction(value.replace(tzinfo=None).isoformat(timespec="microseconds"))
        case dt.timedelta():
            micros = value // dt.timedelta(microseconds=1)
            days = abs(micros) // _DAY_MICROS * (1 if micros >= 0 else -1)
            return interval_text(0, days, micros - days * _DAY_MICROS)
        case uuid.UUID():
            return str(value)
        case dict():
            return json_text(value)
        case list() | tuple():
            return array_text(value)
    return str(value)


def float_text(value: float, *, bits: int = 64) -> str:
    """Return a float as Postgres 12+ prints it (float8, or float4 when ``bits`` is 32).

    Postgres prints the shortest digits that read back to the same value, but (built with
    Ryu's STRICTLY_SHORTEST off) never a decimal lying exactly halfway to a neighbouring
    float, which Python's repr may pick for magnitudes of 2**54 (float4: 2**25) and up.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return _INFINITY_TEXT[value]
    if bits == 32:
        value = float(np.float32(value))
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    if abs(value) < FAST_DIGITS_BELOW[bits]:
        digits, exponent = _shortest_digits(abs(value), bits)
    else:
        digits, exponent = _open_interval_digits(abs(value), bits)
    return sign + _float_layout(digits, exponent, fixed_below=6 if bits == 32 else 15)


FAST_DIGITS_BELOW = {64: float(2**54), 32: float(2**25)}


def _shortest_digits(value: float, bits: int) -> tuple[str, int]:
    """Return the shortest round-trip digits of a positive float and its decimal exponent."""
    if bits == 32:
        text = np.format_float_scientific(np.float32(value), unique=True, trim="-")
    else:
        text = repr(value)
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    exponent = int(exp_text or 0) + len(whole) - 1
    digits = whole + fraction
    stripped = digits.lstrip("0")
    exponent -= len(digits) - len(stripped)
    return stripped.rstrip("0"), exponent


def _float_layout(digits: str, exponent: int, *, fixed_below: int) -> str:
    if -4 <= exponent < fixed_below:
        if exponent < 0:
            return f"0.{'0' * (-exponent - 1)}{digits}"
        whole, frac = digits[: exponent + 1], digits[exponent + 1 :]
        whole = whole.ljust(exponent + 1, "0")
        return f"{whole}.{frac}" if frac else whole
    rest = "." + digits[1:] if len(digits) > 1 else ""
    return f"{digits[0]}{rest}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _open_interval_digits(value: float, bits: int) -> tuple[str, int]:
    """Return the shortest digits strictly between the midpoints to the neighbouring floats.

    Among candidates of that length the closest to the value wins, ties to even, as in Ryu.
    """
    if bits == 32:
        f32 = np.float32(value)
        with np.errstate(over="ignore"):
            below = float(np.nextafter(f32, np.float32(0)))
            above = float(np.nextafter(f32, np.float32(np.inf)))
    else:
        below, above = math.nextafter(value, 0.0), math.nextafter(value, math.inf)
    exact = Fraction(value)
    low = (exact + Fraction(below)) / 2
    high = (exact + Fraction(above)) / 2 if math.isfinite(above) else exact + (exact - low)
    e10 = math.floor(math.log10(value))
    while Fraction(10) ** e10 > exact:
        e10 -= 1
    while Fraction(10) ** (e10 + 1) <= exact:
        e10 += 1
    for length in range(1, 18):
        scale = Fraction(10) ** (e10 - length + 1)
        nearest = round(exact / scale)
        inside = [c for c in (nearest - 1, nearest, nearest + 1) if low < c * scale < high]
        if inside:
            best = min(inside, key=lambda c: (abs(c * scale - exact), c % 2))
            text = str(best)
            exponent = e10 - length + len(text)
            return text.rstrip("0"), exponent
    raise AssertionError(f"no decimal found for {value!r}")  # 17 digits always suffice


def decimal_text(value: Decimal) -> str:
    """Return a Decimal as numeric prints it: no exponent, 'NaN', 'Infinity'."""
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "-Infinity" if value.is_signed() else "Infinity"
    return f"{value:f}"


def timestamp_text(value: dt.datetime) -> str:
    """Return a timestamp as Postgres prints it (ISO datestyle); aware ones in UTC with '+00'."""
    suffix = ""
    if value.tzinfo is not None:
        offset = value.utcoffset()
        value = value.replace(tzinfo=None) - (offset or dt.timedelta(0))
        suffix = "+00"
    return trim_fraction(value.isoformat(sep=" ", timespec="microseconds")) + suffix


def trim_fraction(text: str) -> str:
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def interval_text(months: int, days: int, micros: int) -> str:
    """Return an interval as Postgres prints it with intervalstyle 'postgres'."""
    years, months = int(months / 12), months - int(months / 12) * 12
    parts: list[str] = []
    before_negative = False
    for amount, unit in ((years, "year"), (months, "mon"), (days, "day")):
        if amount == 0:
            continue
        plus = "+" if before_negative and amount > 0 else ""
        parts.append(f"{plus}{amount} {unit}{'' if amount == 1 else 's'}")
        before_negative = amount < 0
    if not parts or micros != 0:
        sign = "-" if micros < 0 else ("+" if before_negative else "")
        hours, rest = divmod(abs(micros), 3_600_000_000)
        minutes, rest = divmod(rest, 60_000_000)
        seconds, fraction = divmod(rest, 1_000_000)
        clock = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
        parts.append(clock + (f".{fraction:06d}".rstrip("0") if fraction else ""))
    return " ".join(parts)


_ARRAY_QUOTE = re.compile(r'[{},"\\ \t\n\r\v\f]')


def array_text(values: list[Any] | tuple[Any, ...]) -> str:
    """Return a (nested) list as a Postgres array literal, quoting elements as array_out does."""
    items: list[str] = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif isinstance(value, list | tuple):
            items.append(array_text(value))
        else:
            items.append(_array_element(text(value)))
    return "{" + ",".join(items) + "}"


def _array_element(text: str) -> str:
    if text == "" or text.upper() == "NULL" or _ARRAY_QUOTE.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def json_text(value: Any) -> str:
    """Return a value as JSON text like jsonb prints it; non-finite floats become strings."""
    return json.dumps(_jsonable(value), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    match value:
        case None | bool() | int() | str():
            return value
        case float():
            return value if math.isfinite(value) else float_text(value)
        case dict():
            return {str(k): _jsonable(v) for k, v in value.items()}
        case list() | tuple():
            return [_jsonable(v) for v in value]
        case Decimal():
            return float(value) if value.is_finite() else decimal_text(value)
    return text(value)
