"""Amounts: decimal strings become integer base units, rounded up, and never through a float.

How: `parse_amount`, `parse_exact_amount` and `format_amount` are called on known inputs and
on every kind of bad input, checking the exact base units or the InvalidRequest code. A
hypothesis property checks format → parse is the identity. The float trap of DESIGN.md §5 is
replayed through the domain: 1,000 actions of $0.001 are authorised one by one against a $1
budget (scale 2) with `evaluate_authorize` and committed with `post_usage`; ceiling rounding
lets exactly 100 through, where float sums let 999 through.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remit.domain.amounts import Meter, MeterKind, format_amount, parse_amount, parse_exact_amount
from remit.domain.budgets import Budget, Counter
from remit.domain.evaluation import Consulted, evaluate_authorize, measure, post_usage, release_hold
from remit.domain.windows import BoundsCache, parse_window
from remit.errors import InvalidRequest
from remit.limits import AMOUNT_BASE_UNITS_MAX, AMOUNT_TEXT_LENGTH_MAX, LIMIT_BASE_UNITS_MAX, METER_SCALE_MAX


def test_exact_amounts_convert_to_base_units() -> None:
    assert parse_amount("1.00", 2, field="usd") == 100
    assert parse_amount("1", 2, field="usd") == 100
    assert parse_amount("0", 2, field="usd") == 0
    assert parse_amount("120.50", 2, field="usd") == 12050
    assert parse_amount("7", 0, field="sends") == 7
    assert parse_amount(7, 0, field="sends") == 7
    assert parse_amount("3.5", 1, field="x") == 35
    for loose in ("  3.5 ", "1_000", "NaN", "0x10", "1e", "."):  # Decimal() takes some of these; an amount does not
        with pytest.raises(InvalidRequest, match="not a decimal number"):
            parse_amount(loose, 1, field="x")
    assert parse_amount("1e2", 0, field="x") == 100
    assert parse_amount("0.000001", 6, field="usd") == 1


@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        ("0.001", 2, 1),
        ("0.0000001", 2, 1),
        ("1.001", 2, 101),
        ("1.009", 2, 101),
        ("1.010", 2, 101),
        ("0.5", 0, 1),
        ("2.0000000001", 0, 3),
        ("99.999", 2, 10000),
    ],
)
def test_extra_places_round_up(text: str, scale: int, expected: int) -> None:
    assert parse_amount(text, scale, field="usd") == expected


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "-0.01",
        "abc",
        "1,000",
        "12.5.0",
        "",
        "   ",
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-inf",
        "inf",
        "0x10",
        "1" * (AMOUNT_TEXT_LENGTH_MAX + 1),
        True,
        False,
        1.5,
        0.1,
        None,
        [1],
        {"amount": 1},
        Decimal("1"),
    ],
)
def test_bad_amounts_are_invalid_amount(value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_amount(value, 2, field="amounts.usd")
    assert caught.value.code == "invalid_amount"
    assert caught.value.field == "amounts.usd"
    assert caught.value.message.startswith("amounts.usd: ")


def test_longest_accepted_text() -> None:
    text = "0" * (AMOUNT_TEXT_LENGTH_MAX - 1) + "1"
    assert parse_amount(text, 0, field="x") == 1


def test_too_large_amounts() -> None:
    assert parse_amount(AMOUNT_BASE_UNITS_MAX, 0, field="x") == AMOUNT_BASE_UNITS_MAX
    for value in (str(AMOUNT_BASE_UNITS_MAX + 1), "1e30", "9" * 39):
        with pytest.raises(InvalidRequest) as caught:
            parse_amount(value, 0, field="x")
        assert caught.value.code == "amount_too_large"
    # The maximum is in base units: at scale 2, 10**13 dollars is the most.
    assert parse_amount("10000000000000", 2, field="usd") == AMOUNT_BASE_UNITS_MAX
    with pytest.raises(InvalidRequest) as caught:
        parse_amount("10000000000000.01", 2, field="usd")
    assert caught.value.code == "amount_too_large"
    # Rounding up can push an amount over the maximum.
    with pytest.raises(InvalidRequest) as caught:
        parse_amount("10000000000000.001", 2, field="usd")
    assert caught.value.code == "amount_too_large"


def test_explicit_maximum() -> None:
    assert parse_amount("5", 0, field="x", maximum=5) == 5
    with pytest.raises(InvalidRequest) as caught:
        parse_amount("6", 0, field="x", maximum=5)
    assert caught.value.code == "amount_too_large"


def test_exact_amount_rejects_extra_places() -> None:
    assert parse_exact_amount("12.50", 2, field="limit", maximum=LIMIT_BASE_UNITS_MAX) == 1250
    assert parse_exact_amount("12.500000", 2, field="limit", maximum=LIMIT_BASE_UNITS_MAX) == 1250
    assert parse_exact_amount("3", 0, field="limit", maximum=LIMIT_BASE_UNITS_MAX) == 3
    for text, scale in (("12.501", 2), ("0.5", 0), ("0.0000000001", 9)):
        with pytest.raises(InvalidRequest, match="more than") as caught:
            parse_exact_amount(text, scale, field="limit", maximum=LIMIT_BASE_UNITS_MAX)
        assert caught.value.code == "invalid_amount"


def test_exact_amount_rejects_negative_and_too_large() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_exact_amount("-1", 2, field="limit", maximum=LIMIT_BASE_UNITS_MAX)
    assert caught.value.code == "invalid_amount"
    with pytest.raises(InvalidRequest) as caught:
        parse_exact_amount(str(LIMIT_BASE_UNITS_MAX + 1), 0, field="limit", maximum=LIMIT_BASE_UNITS_MAX)
    assert caught.value.code == "amount_too_large"
    with pytest.raises(InvalidRequest) as caught:
        parse_exact_amount("NaN", 0, field="limit", maximum=LIMIT_BASE_UNITS_MAX)
    assert caught.value.code == "invalid_amount"


@pytest.mark.parametrize(
    ("units", "scale", "text"),
    [
        (0, 2, "0.00"),
        (1, 2, "0.01"),
        (100, 2, "1.00"),
        (12050, 2, "120.50"),
        (5, 0, "5"),
        (1, 6, "0.000001"),
        (-150, 2, "-1.50"),
        (-1, 3, "-0.001"),
    ],
)
def test_format_amount(units: int, scale: int, text: str) -> None:
    assert format_amount(units, scale) == text


@given(units=st.integers(min_value=0, max_value=10**15), scale=st.integers(min_value=0, max_value=METER_SCALE_MAX))
def test_format_then_parse_is_identity(units: int, scale: int) -> None:
    text = format_amount(units, scale)
    assert parse_amount(text, scale, field="x", maximum=10**15) == units
    assert parse_exact_amount(text, scale, field="x", maximum=10**15) == units


@given(
    text=st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False, places=4),
    scale=st.integers(min_value=0, max_value=4),
)
def test_parse_never_rounds_down(text: Decimal, scale: int) -> None:
    units = parse_amount(str(text), scale, field="x")
    value = Decimal(units).scaleb(-scale)
    assert value >= text
    assert value - text < Decimal(1).scaleb(-scale)


# -- the float trap (DESIGN.md §5) -----------------------------------------------------------------

USD = Meter("usd", MeterKind.SUM, 2)
UTC = ZoneInfo("UTC")
NOW_US = 1_767_225_600_000_000


def test_float_summing_lets_999_through() -> None:
    # The failure being guarded against, shown with floats: summing 0.001 drifts under 1.
    spent = 0.0
    allowed = 0
    for _ in range(1000):
        if spent + 0.001 <= 1.0:
            spent += 0.001
            allowed += 1
    assert allowed == 999


def test_a_thousand_tenth_cent_actions_against_one_dollar_allow_at_most_100() -> None:
    budget = Budget(
        "usd-day",
        "/",
        USD,
        parse_exact_amount("1", 2, field="limit", maximum=LIMIT_BASE_UNITS_MAX),
        parse_window("day"),
    )
    counter = Counter((budget.id, ""))
    cache = BoundsCache()
    counter.advance(budget, NOW_US, UTC, cache)
    amount = parse_amount("0.001", USD.scale, field="amounts.usd")
    assert amount == 1  # a tenth of a cent costs a whole cent: it cannot round down to free
    allowed = 0
    for _ in range(1000):
        consulted = Consulted(budget, counter)
        measure(consulted, {"usd": amount}, {})
        decision, holds, _ = evaluate_authorize([consulted], NOW_US, UTC, cache)
        if not decision.is_allowed:
            continue
        allowed += 1
        (hold,) = holds
        release_hold(budget, counter, hold, NOW_US)
        post_usage(budget, counter, NOW_US, amount, ())
    assert allowed == 100
    assert counter.used == 100
    assert counter.held == 0
    assert counter.overrun == 0
    # The same bound with plain arithmetic on base units: 1,000 cents asked, 100 cents of limit.
    assert sum(parse_amount("0.001", 2, field="x") for _ in range(1000)) == 1000
    assert budget.limit // amount == 100
