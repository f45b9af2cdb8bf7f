"""Meters and amounts: decimal strings in, integer base units inside, decimal strings out.

Rounding (stated in docs/concepts.md): an amount with more decimal places than its meter's
scale is rounded *up* to the scale, so no action can round down to a free one (the float
libraries let 999 of 1,000 $0.001 actions through under $1). Limits must be exact: a limit with
more places than the scale is an error, not a rounding.
"""

from __future__ import annotations

import decimal
import enum
import re
from dataclasses import dataclass, field

from remit.errors import InvalidRequest
from remit.limits import AMOUNT_BASE_UNITS_MAX, AMOUNT_TEXT_LENGTH_MAX


class MeterKind(enum.Enum):
    SUM = "sum"
    DISTINCT = "distinct"


@dataclass(frozen=True, slots=True)
class Meter:
    name: str
    kind: MeterKind
    scale: int = 0
    """Decimal places of the unit; the base unit is 10**-scale of it."""
    is_distinct: bool = field(init=False, repr=False, compare=False)
    """A plain attribute, not a property: it is read several times per decision."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_distinct", self.kind is MeterKind.DISTINCT)


_INT_BITS_MAX = 4 * AMOUNT_TEXT_LENGTH_MAX
_MAGNITUDE_DIGITS_MAX = 30
"""No amount or limit in any unit reaches 10**30: larger exponents are refused outright."""
_CONTEXT = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.Overflow])


_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def _to_decimal(text: object, field: str) -> decimal.Decimal:
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidRequest(
            f'{field}: amount must be a decimal string such as "12.50"',
            code="invalid_amount",
            field=field,
        )
    if isinstance(text, int) and text.bit_length() > _INT_BITS_MAX:
        raise InvalidRequest(f"{field}: amount is too long", code="invalid_amount", field=field)
    raw = str(text)
    if not raw or len(raw) > AMOUNT_TEXT_LENGTH_MAX:
        raise InvalidRequest(f"{field}: amount {raw!r} is empty or too long", code="invalid_amount", field=field)
    if _DECIMAL_TEXT.match(raw) is None:
        # Decimal() alone would also take " 1", "1_000" and "NaN"; an amount is plain digits.
        raise InvalidRequest(
            f'{field}: {raw!r} is not a decimal number such as "12.50"', code="invalid_amount", field=field
        )
    try:
        value = decimal.Decimal(raw)  # exact, whatever its exponent: checked below before any arithmetic
    except decimal.DecimalException:
        raise InvalidRequest(f"{field}: {raw!r} is not a decimal number", code="invalid_amount", field=field) from None
    if not value.is_finite():
        raise InvalidRequest(f"{field}: {raw!r} is not a finite number", code="invalid_amount", field=field)
    if value and value.adjusted() > _MAGNITUDE_DIGITS_MAX:
        # Refused before any arithmetic: "9E+999999" would overflow scaling, not just the maximum.
        raise InvalidRequest(f"{field}: amount {raw!r} is too large", code="amount_too_large", field=field)
    if value and value.adjusted() < -_MAGNITUDE_DIGITS_MAX:
        # "1E-9999999" would underflow to zero: a free action. No unit is that fine.
        raise InvalidRequest(f"{field}: amount {raw!r} is too small to count", code="invalid_amount", field=field)
    return value


def parse_amount(text: object, scale: int, *, field: str, maximum: int = AMOUNT_BASE_UNITS_MAX) -> int:
    """Convert a non-negative decimal string to base units, rounding up to `scale` places."""
    value = _to_decimal(text, field)
    if value < 0:
        raise InvalidRequest(f"{field}: amount {text!s} is negative", code="invalid_amount", field=field)
    scaled = value.scaleb(scale, _CONTEXT).to_integral_value(rounding=decimal.ROUND_CEILING, context=_CONTEXT)
    if scaled > maximum:
        raise InvalidRequest(
            f"{field}: amount {text!s} exceeds the maximum of {format_amount(maximum, scale)}",
            code="amount_too_large",
            field=field,
        )
    return int(scaled)


def parse_exact_amount(text: object, scale: int, *, field: str, maximum: int) -> int:
    """Convert a decimal string that must fit `scale` places exactly (limits, per-action maxima)."""
    value = _to_decimal(text, field)
    if value < 0:
        raise InvalidRequest(f"{field}: {text!s} is negative", code="invalid_amount", field=field)
    scaled = value.scaleb(scale, _CONTEXT)
    if scaled != scaled.to_integral_value(context=_CONTEXT):
        raise InvalidRequest(
            f"{field}: {text!s} has more than {scale} decimal places", code="invalid_amount", field=field
        )
    if scaled > maximum:
        raise InvalidRequest(
            f"{field}: {text!s} exceeds the maximum of {format_amount(maximum, scale)}",
            code="amount_too_large",
            field=field,
        )
    return int(scaled)


def format_amount(base_units: int, scale: int) -> str:
    """Render base units as a decimal string with exactly `scale` places ("-" for negatives)."""
    if scale == 0:
        return str(base_units)
    sign = "-" if base_units < 0 else ""
    digits = str(abs(base_units)).rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"
