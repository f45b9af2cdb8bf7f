"""The pure decision functions decide all-or-nothing, say why, and keep the money invariants.

How: Budget and Counter objects are built by hand (no store, no engine), run through
`measure` → `evaluate_authorize` / `release_hold` / `post_usage` at fixed instants, and the
counters, holds, postings, reasons and retry hints are compared with the values worked out
by hand. A hypothesis property runs random sequences of holds, commits (under and over the
estimate), releases and post-hoc usage and checks after every step that
`used - overrun + held <= limit` holds and that `check_counter` agrees.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remit.domain.amounts import Meter, MeterKind
from remit.domain.budgets import Budget, Counter, Mode
from remit.domain.decisions import Decision, Outcome, ReasonCode
from remit.domain.evaluation import (
    HOLD_RETRY_SECONDS,
    Consulted,
    check_counter,
    evaluate_authorize,
    measure,
    post_usage,
    release_hold,
)
from remit.domain.reservations import HoldPart
from remit.domain.windows import US_PER_SECOND, BoundsCache, parse_window, to_us
from remit.errors import InvariantViolation

USD = Meter("usd", MeterKind.SUM, 2)
ACCOUNTS = Meter("accounts", MeterKind.DISTINCT, 0)
UTC = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
# 2026-01-01 10:00:00 UTC: 14 hours before the UTC day ends.
NOW_US = to_us(dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC))
SECONDS_TO_UTC_MIDNIGHT = 14 * 3600


def make_budget(
    budget_id: str,
    limit: int,
    *,
    meter: Meter = USD,
    window: str = "day",
    per_action_max: int | None = None,
    is_shadow: bool = False,
    scope: str = "ops",
) -> Budget:
    return Budget(
        id=budget_id,
        scope=scope,
        meter=meter,
        limit=limit,
        window=parse_window(window),
        per_action_max=per_action_max,
        mode=Mode.SHADOW if is_shadow else Mode.ENFORCE,
    )


def make_counter(budget: Budget, *, used: int = 0, held: int = 0, now_us: int = NOW_US, tz: ZoneInfo = UTC) -> Counter:
    counter = Counter((budget.id, ""))
    counter.advance(budget, now_us, tz, BoundsCache())
    counter.used = used
    counter.held = held
    counter.is_dirty = False
    return counter


def authorize(
    pairs: Sequence[tuple[Budget, Counter]],
    amounts: dict[str, int] | None = None,
    touches: dict[str, tuple[str, ...]] | None = None,
    *,
    now_us: int = NOW_US,
    tz: ZoneInfo = UTC,
) -> tuple[Decision, list[HoldPart], list[Consulted]]:
    consulted = [Consulted(budget, counter) for budget, counter in pairs]
    for item in consulted:
        measure(item, amounts or {}, touches or {})
    decision, holds, postings = evaluate_authorize(consulted, now_us, tz, BoundsCache())
    assert len(postings) == len(holds)
    return decision, holds, consulted


def commit(budget: Budget, counter: Counter, hold: HoldPart, actual: int, now_us: int = NOW_US) -> int:
    """Release the hold, then count the actual amount, as the engine's commit does; returns overrun."""
    release_hold(budget, counter, hold, now_us)
    posting = post_usage(budget, counter, now_us, actual, hold.entities)
    check_counter(budget, counter, now_us)
    return posting.overrun


# -- allow ----------------------------------------------------------------------------------------


def test_allow_holds_on_every_budget() -> None:
    scope = make_budget("ops:usd:day", 10_000)
    root = make_budget("/:usd:month", 50_000, window="month", scope="/")
    scope_counter, root_counter = make_counter(scope, used=1_000), make_counter(root, held=2_000)
    decision, holds, _ = authorize([(scope, scope_counter), (root, root_counter)], {"usd": 3_000})
    assert decision.outcome is Outcome.ALLOW
    assert decision.reasons == []
    assert decision.retry_after_seconds is None
    assert (scope_counter.held, root_counter.held) == (3_000, 5_000)
    assert (scope_counter.used, root_counter.used) == (1_000, 0)
    assert scope_counter.is_dirty and root_counter.is_dirty
    assert [(h.budget_id, h.instance, h.amount) for h in holds] == [
        ("ops:usd:day", "", 3_000),
        ("/:usd:month", "", 3_000),
    ]
    reports = {r.budget: r for r in decision.budgets}
    assert reports["ops:usd:day"].remaining == 10_000 - 1_000 - 3_000
    assert reports["/:usd:month"].remaining == 50_000 - 5_000
    assert reports["ops:usd:day"].resets_at_us == NOW_US + SECONDS_TO_UTC_MIDNIGHT * US_PER_SECOND


def test_allow_up_to_exactly_the_limit() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget, used=60, held=30)
    decision, _, _ = authorize([(budget, counter)], {"usd": 10})
    assert decision.is_allowed
    assert counter.used + counter.held == budget.limit
    decision, _, _ = authorize([(budget, counter)], {"usd": 1})
    assert not decision.is_allowed


# -- deny -----------------------------------------------------------------------------------------


def test_deny_is_all_or_nothing() -> None:
    roomy = make_budget("roomy", 10_000)
    tight = make_budget("tight", 100)
    roomy_counter, tight_counter = make_counter(roomy, used=5, held=7), make_counter(tight, used=90)
    decision, holds, _ = authorize([(roomy, roomy_counter), (tight, tight_counter)], {"usd": 20})
    assert decision.outcome is Outcome.DENY
    assert holds == []
    assert (roomy_counter.used, roomy_counter.held, roomy_counter.is_dirty) == (5, 7, False)
    assert (tight_counter.used, tight_counter.held, tight_counter.is_dirty) == (90, 0, False)
    assert [(r.code, r.budget) for r in decision.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, "tight")]
    assert "tight" in decision.reasons[0].message
    # Every consulted budget is still reported, so the caller sees the headroom everywhere.
    assert [r.budget for r in decision.budgets] == ["roomy", "tight"]
    assert {r.budget: r.remaining for r in decision.budgets} == {"roomy": 10_000 - 12, "tight": 10}


def test_reasons_name_every_refusing_budget() -> None:
    first = make_budget("first", 100)
    fits = make_budget("fits", 1_000)
    second = make_budget("second", 50, per_action_max=10)
    third = make_budget("third", 5)
    decision, _, _ = authorize(
        [
            (first, make_counter(first, used=95)),
            (fits, make_counter(fits)),
            (second, make_counter(second)),
            (third, make_counter(third)),
        ],
        {"usd": 20},
    )
    assert decision.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in decision.reasons] == [
        (ReasonCode.BUDGET_EXHAUSTED, "first"),
        (ReasonCode.PER_ACTION_MAX_EXCEEDED, "second"),
        (ReasonCode.EXCEEDS_LIMIT, "third"),
    ]
    for reason in decision.reasons:
        assert reason.message.startswith(f"{reason.budget}: ")
    # One refusal no retry can cure makes the whole answer "do not retry".
    assert decision.retry_after_seconds is None


def test_per_action_max_exceeded_has_no_retry() -> None:
    budget = make_budget("b", 10_000, per_action_max=5_000)
    counter = make_counter(budget)
    decision, _, _ = authorize([(budget, counter)], {"usd": 5_001})
    assert [r.code for r in decision.reasons] == [ReasonCode.PER_ACTION_MAX_EXCEEDED]
    assert decision.retry_after_seconds is None
    assert "50.01" in decision.reasons[0].message and "50.00" in decision.reasons[0].message
    assert authorize([(budget, counter)], {"usd": 5_000})[0].is_allowed


def test_exceeds_limit_has_no_retry() -> None:
    budget = make_budget("b", 100)
    decision, _, _ = authorize([(budget, make_counter(budget))], {"usd": 101})
    assert [r.code for r in decision.reasons] == [ReasonCode.EXCEEDS_LIMIT]
    assert decision.retry_after_seconds is None


def test_exhausted_by_used_retries_when_the_window_ends() -> None:
    budget = make_budget("b", 100)
    decision, _, _ = authorize([(budget, make_counter(budget, used=95))], {"usd": 10})
    assert [r.code for r in decision.reasons] == [ReasonCode.BUDGET_EXHAUSTED]
    assert decision.retry_after_seconds == SECONDS_TO_UTC_MIDNIGHT


def test_exhausted_by_used_in_tenant_time_zone() -> None:
    # 10:00 UTC is 05:00 in New York: the local day ends at 05:00 UTC tomorrow, 19 hours away.
    budget = make_budget("b", 100)
    counter = make_counter(budget, used=100, tz=NEW_YORK)
    decision, _, _ = authorize([(budget, counter)], {"usd": 1}, tz=NEW_YORK)
    assert decision.retry_after_seconds == 19 * 3600


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    budget = make_budget("b", 100, window="minute")
    now = NOW_US + 59 * US_PER_SECOND + 1  # 0.999999 s before the minute ends
    counter = make_counter(budget, used=100, now_us=now)
    decision, _, _ = authorize([(budget, counter)], {"usd": 1}, now_us=now)
    assert decision.retry_after_seconds == 1


def test_exhausted_only_by_holds_gives_the_short_hint() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget, used=40, held=55)
    decision, _, _ = authorize([(budget, counter)], {"usd": 10})
    assert decision.outcome is Outcome.DENY
    assert decision.retry_after_seconds == HOLD_RETRY_SECONDS == 1


def test_retry_after_is_the_longest_wait() -> None:
    by_holds = make_budget("by-holds", 100)
    by_used = make_budget("by-used", 100, window="hour")
    decision, _, _ = authorize(
        [(by_holds, make_counter(by_holds, held=100)), (by_used, make_counter(by_used, used=100))], {"usd": 1}
    )
    assert decision.retry_after_seconds == 3600


def test_total_window_exhausted_never_resets() -> None:
    budget = make_budget("b", 100, window="total")
    decision, _, _ = authorize([(budget, make_counter(budget, used=100))], {"usd": 1})
    assert decision.outcome is Outcome.DENY
    assert decision.retry_after_seconds is None
    assert decision.budgets[0].resets_at_us is None


def test_rolling_window_retries_when_enough_usage_leaves() -> None:
    budget = make_budget("b", 10, window="rolling:1m")  # 1-second buckets
    counter = make_counter(budget)
    counter.buckets = {NOW_US - 50 * US_PER_SECOND: 4, NOW_US - 20 * US_PER_SECOND: 6}
    decision, _, _ = authorize([(budget, counter)], {"usd": 3})
    # 3 more need 3 units to leave: the 4 from 50 s ago leave in 10 s.
    assert decision.retry_after_seconds == 10
    decision, _, _ = authorize([(budget, counter)], {"usd": 5})
    assert decision.retry_after_seconds == 40
    later = NOW_US + 10 * US_PER_SECOND
    assert authorize([(budget, counter)], {"usd": 4}, now_us=later)[0].is_allowed


def test_rolling_window_blocked_by_usage_and_holds_still_gives_a_retry() -> None:
    # 4 used (leaving in 10 s) and 5 held: 7 more fits once the 4 leave and the hold resolves,
    # so the answer must not be "never retry" (None, as for exceeds_limit).
    budget = make_budget("b", 10, window="rolling:1m")
    counter = make_counter(budget, held=5)
    counter.buckets = {NOW_US - 50 * US_PER_SECOND: 4}
    decision, _, _ = authorize([(budget, counter)], {"usd": 7})
    assert [r.code for r in decision.reasons] == [ReasonCode.BUDGET_EXHAUSTED]
    assert decision.retry_after_seconds == 10


# -- shadow ---------------------------------------------------------------------------------------


def test_shadow_budget_never_denies_but_records_shadow_deny() -> None:
    enforced = make_budget("enforced", 1_000)
    shadow = make_budget("shadow", 10, is_shadow=True)
    enforced_counter, shadow_counter = make_counter(enforced), make_counter(shadow, used=10)
    decision, holds, _ = authorize([(enforced, enforced_counter), (shadow, shadow_counter)], {"usd": 50})
    assert decision.outcome is Outcome.ALLOW
    assert [(r.code, r.budget) for r in decision.reasons] == [(ReasonCode.SHADOW_DENY, "shadow")]
    # The shadow budget holds too, so what it would have limited stays visible.
    assert shadow_counter.held == 50
    assert [h.budget_id for h in holds] == ["enforced", "shadow"]
    check_counter(shadow, shadow_counter, NOW_US)  # over its limit, and that is allowed for shadow


def test_shadow_reasons_follow_the_real_ones_on_deny() -> None:
    shadow = make_budget("shadow", 10, is_shadow=True)
    enforced = make_budget("enforced", 10)
    decision, _, _ = authorize(
        [(shadow, make_counter(shadow, used=10)), (enforced, make_counter(enforced, used=10))], {"usd": 5}
    )
    assert decision.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in decision.reasons] == [
        (ReasonCode.BUDGET_EXHAUSTED, "enforced"),
        (ReasonCode.SHADOW_DENY, "shadow"),
    ]
    assert decision.retry_after_seconds == SECONDS_TO_UTC_MIDNIGHT


def test_only_shadow_budgets_always_allow() -> None:
    shadow = make_budget("shadow", 1, is_shadow=True, per_action_max=1)
    decision, _, _ = authorize([(shadow, make_counter(shadow))], {"usd": 500})
    assert decision.is_allowed
    assert [r.code for r in decision.reasons] == [ReasonCode.SHADOW_DENY]


# -- commit, release, post-hoc usage ----------------------------------------------------------------


def test_commit_under_estimate_releases_the_rest() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget)
    _, (hold,), _ = authorize([(budget, counter)], {"usd": 40})
    assert commit(budget, counter, hold, 25) == 0
    assert (counter.used, counter.held, counter.overrun) == (25, 0, 0)


def test_commit_over_headroom_is_counted_as_overrun() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget, used=50)
    _, (mine,), _ = authorize([(budget, counter)], {"usd": 20})
    _, (theirs,), _ = authorize([(budget, counter)], {"usd": 30})
    assert counter.used + counter.held == 100
    # Mine turns out to cost 45: 20 was held for it, the other 25 is beyond the limit.
    assert commit(budget, counter, mine, 45) == 25
    assert (counter.used, counter.held, counter.overrun) == (95, 30, 25)
    assert counter.used - counter.overrun + counter.held == budget.limit
    # Theirs commits what it held: counted whatever the overrun says, and the invariant stands.
    commit(budget, counter, theirs, 30)
    assert (counter.used, counter.held) == (125, 0)
    assert counter.used - counter.overrun + counter.held <= budget.limit


def test_a_commit_within_its_hold_is_never_overrun() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget, used=50)
    _, (mine,), _ = authorize([(budget, counter)], {"usd": 20})
    _, (theirs,), _ = authorize([(budget, counter)], {"usd": 30})
    assert commit(budget, counter, mine, 45) == 25
    assert commit(budget, counter, theirs, 30) == 0
    # Overrun is what was counted beyond the limit: 125 used against 100 is 25 over, not 50.
    assert counter.overrun == counter.used - budget.limit == 25


def test_post_hoc_usage_past_the_limit() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget, used=90, held=10)
    posting = post_usage(budget, counter, NOW_US, 15, ())
    # No headroom at all: all of it is overrun, none of it hidden.
    assert (posting.used, posting.overrun) == (15, 15)
    assert (counter.used, counter.overrun) == (105, 15)
    check_counter(budget, counter, NOW_US)
    posting = post_usage(budget, counter, NOW_US, 5, ())
    assert (posting.used, posting.overrun) == (5, 5)
    check_counter(budget, counter, NOW_US)


def test_post_hoc_usage_within_headroom_is_not_overrun() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget, used=10, held=20)
    posting = post_usage(budget, counter, NOW_US, 70, ())
    assert (posting.used, posting.overrun, posting.window_start) == (70, 0, counter.window_start)
    assert counter.used + counter.held == 100


def test_release_returns_the_hold() -> None:
    budget = make_budget("b", 100)
    counter = make_counter(budget)
    _, (hold,), _ = authorize([(budget, counter)], {"usd": 60})
    posting = release_hold(budget, counter, hold, NOW_US)
    assert posting.held == -60
    assert counter.held == 0
    with pytest.raises(InvariantViolation, match="negative"):
        release_hold(budget, counter, hold, NOW_US)


def test_rolling_usage_posts_into_the_current_bucket() -> None:
    budget = make_budget("b", 100, window="rolling:15m")  # 15-second buckets
    counter = make_counter(budget)
    now = NOW_US + 7 * US_PER_SECOND
    posting = post_usage(budget, counter, now, 30, ())
    assert posting.window_start == NOW_US  # 10:00:00 is a bucket boundary
    assert counter.buckets == {NOW_US: 30}
    assert counter.used_now(budget, now) == 30
    assert counter.used_now(budget, NOW_US + 900 * US_PER_SECOND) == 0


# -- distinct meters ------------------------------------------------------------------------------


def test_distinct_counts_an_entity_once_per_window() -> None:
    budget = make_budget("reach", 3, meter=ACCOUNTS)
    counter = make_counter(budget)
    decision, (hold,), (item,) = authorize([(budget, counter)], touches={"accounts": ("acct:1", "acct:2")})
    assert decision.is_allowed
    assert item.requested == 2
    assert hold.entities == ("acct:1", "acct:2")
    commit(budget, counter, hold, 0)
    assert counter.used == 2
    assert counter.counted_entities == {"acct:1", "acct:2"}
    # Touching the same account again in the window asks nothing and counts nothing.
    decision, (hold,), (item,) = authorize([(budget, counter)], touches={"accounts": ("acct:1",)})
    assert item.requested == 0
    commit(budget, counter, hold, 0)
    assert counter.used == 2
    # Two more new accounts do not fit in the 1 left; one new plus one old does.
    assert not authorize([(budget, counter)], touches={"accounts": ("acct:3", "acct:4")})[0].is_allowed
    decision, (hold,), (item,) = authorize([(budget, counter)], touches={"accounts": ("acct:2", "acct:3")})
    assert item.requested == 1
    assert counter.held == 1
    # The hold keeps every touched entity; the commit counts only the one not yet counted.
    assert hold.entities == ("acct:2", "acct:3")
    commit(budget, counter, hold, 0)
    assert counter.used == 3
    assert counter.counted_entities == {"acct:1", "acct:2", "acct:3"}
    # The next day the same account counts again.
    tomorrow = NOW_US + 24 * 3600 * US_PER_SECOND
    counter.advance(budget, tomorrow, UTC, BoundsCache())
    assert (counter.used, counter.counted_entities, counter.has_advanced) == (0, set(), True)
    decision, (hold,), (item,) = authorize([(budget, counter)], touches={"accounts": ("acct:1",)}, now_us=tomorrow)
    assert item.requested == 1
    commit(budget, counter, hold, 0, now_us=tomorrow)
    assert counter.used == 1


def test_two_holds_on_one_uncounted_entity_each_hold_a_unit() -> None:
    budget = make_budget("reach", 2, meter=ACCOUNTS)
    counter = make_counter(budget)
    _, (first,), _ = authorize([(budget, counter)], touches={"accounts": ("acct:9",)})
    _, (second,), _ = authorize([(budget, counter)], touches={"accounts": ("acct:9",)})
    assert counter.held == 2
    assert not authorize([(budget, counter)], touches={"accounts": ("acct:10",)})[0].is_allowed
    commit(budget, counter, first, 0)
    commit(budget, counter, second, 0)
    assert (counter.used, counter.held) == (1, 0)


def test_distinct_per_action_max_counts_every_touched_entity() -> None:
    budget = make_budget("reach", 100, meter=ACCOUNTS, per_action_max=2)
    counter = make_counter(budget)
    counter.counted_entities = {"a", "b"}
    decision, _, (item,) = authorize([(budget, counter)], touches={"accounts": ("a", "b", "c")})
    assert item.requested == 1
    assert [r.code for r in decision.reasons] == [ReasonCode.PER_ACTION_MAX_EXCEEDED]


def test_duplicate_entities_in_one_commit_count_once() -> None:
    budget = make_budget("reach", 10, meter=ACCOUNTS)
    counter = make_counter(budget)
    posting = post_usage(budget, counter, NOW_US, 0, ("x", "x", "y"))
    assert (posting.used, posting.entities) == (2, ("x", "y"))


# -- invariants -----------------------------------------------------------------------------------


def test_check_counter_raises_when_the_limit_is_broken() -> None:
    budget = make_budget("b", 100)
    check_counter(budget, make_counter(budget, used=60, held=40), NOW_US)
    with pytest.raises(InvariantViolation, match="exceeds the limit") as caught:
        check_counter(budget, make_counter(budget, used=61, held=40), NOW_US)
    assert caught.value.code == "invariant_violation"
    # Overrun is usage beyond the limit that was recorded as such: it does not break the invariant.
    counter = make_counter(budget, used=130, held=0)
    counter.overrun = 30
    check_counter(budget, counter, NOW_US)
    counter.overrun = 29
    with pytest.raises(InvariantViolation):
        check_counter(budget, counter, NOW_US)


def test_check_counter_raises_on_negative_holds_even_for_shadow() -> None:
    shadow = make_budget("s", 100, is_shadow=True)
    check_counter(shadow, make_counter(shadow, used=1_000), NOW_US)
    with pytest.raises(InvariantViolation, match="held is negative"):
        check_counter(shadow, make_counter(shadow, held=-1), NOW_US)


def test_check_counter_for_rolling_windows_uses_live_buckets() -> None:
    budget = make_budget("b", 10, window="rolling:1m")
    counter = make_counter(budget)
    counter.buckets = {NOW_US - 70 * US_PER_SECOND: 10, NOW_US: 10}
    check_counter(budget, counter, NOW_US)  # the old 10 has left the window
    counter.buckets[NOW_US - 30 * US_PER_SECOND] = 1
    with pytest.raises(InvariantViolation):
        check_counter(budget, counter, NOW_US)


# -- property: the invariant survives any sequence ------------------------------------------------

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["hold", "commit", "release", "usage", "tick"]),
        st.integers(min_value=0, max_value=60),
        st.integers(min_value=0, max_value=5),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations=OPERATIONS, window=st.sampled_from(["day", "hour", "rolling:2m", "total"]))
def test_invariant_holds_under_any_sequence(operations: list[tuple[str, int, int]], window: str) -> None:
    budget = make_budget("b", 100, window=window)
    counter = make_counter(budget)
    cache = BoundsCache()
    now = NOW_US
    live: list[HoldPart] = []
    for name, amount, pick in operations:
        if name == "tick":
            now += amount * 30 * US_PER_SECOND
            counter.advance(budget, now, UTC, cache)
        elif name == "hold":
            fits = counter.used_now(budget, now) + counter.held + amount <= budget.limit
            item = Consulted(budget, counter)
            measure(item, {"usd": amount}, {})
            decision, holds, _ = evaluate_authorize([item], now, UTC, cache)
            assert decision.is_allowed == fits
            live.extend(holds)
        elif name in ("commit", "release") and live:
            hold = live.pop(pick % len(live))
            if name == "release":
                release_hold(budget, counter, hold, now)
            else:
                commit(budget, counter, hold, amount, now)
        elif name == "usage":
            post_usage(budget, counter, now, amount, ())
        check_counter(budget, counter, now)
        used = counter.used_now(budget, now)
        assert used - counter.overrun_now(budget, now) + counter.held <= budget.limit
        assert counter.held == sum(hold.amount for hold in live)
