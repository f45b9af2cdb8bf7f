"""Deciding actions against locked counters: holds, commits, releases, post-hoc usage.

Every function here takes the counters the engine locked and the time as parameters, mutates
the counters, and returns the decision or postings to record. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from remit.domain.amounts import format_amount
from remit.domain.budgets import Budget, Counter
from remit.domain.decisions import BudgetReport, Decision, Outcome, Reason, ReasonCode
from remit.domain.ledger import Posting
from remit.domain.reservations import HoldPart
from remit.domain.windows import US_PER_SECOND, BoundsCache, rolling_floor, rolling_release_time
from remit.errors import InvariantViolation

HOLD_RETRY_SECONDS = 1
"""Retry hint when only other live holds stand in the way: they resolve or expire soon."""


@dataclass(slots=True)
class Consulted:
    """A budget that applies to a request, its locked counter and what the request asks of it."""

    budget: Budget
    counter: Counter
    requested: int = 0
    entities: tuple[str, ...] = ()
    touched_count: int = 0


def measure(consulted: Consulted, amounts: Mapping[str, int], touches: Mapping[str, tuple[str, ...]]) -> None:
    """Fill in what the request asks of this budget.

    A distinct meter asks one unit per touched entity not yet counted in the window. Two live
    holds on the same uncounted entity each hold a unit (conservative); the second commit finds
    the entity counted and posts nothing for it.

    The hold keeps every touched entity, not only the uncounted ones: a commit counts in the
    window current at commit time, where an entity counted before the hold may be new again.
    """
    meter = consulted.budget.meter
    if meter.is_distinct:
        touched = touches.get(meter.name, ())
        counted = consulted.counter.counted_entities
        consulted.entities = touched
        consulted.requested = sum(1 for entity in touched if entity not in counted)
        consulted.touched_count = len(touched)
    else:
        consulted.requested = amounts[meter.name]
        consulted.touched_count = consulted.requested


def resets_at(budget: Budget, counter: Counter, now_us: int, tz: ZoneInfo, cache: BoundsCache) -> int | None:
    """When the window next gives usage back: calendar end, oldest rolling bucket leaving, or never."""
    window_end = counter.window_end
    if window_end is not None and window_end > now_us:
        return window_end
    window = budget.window
    if budget.is_total:
        return None
    if budget.is_rolling:
        width = window.bucket_seconds * US_PER_SECOND
        floor = rolling_floor(window, now_us)
        live = [start for start, amount in counter.buckets.items() if start >= floor and amount]
        return min(live) + window.bucket_count * width if live else None
    return cache.bounds(window, now_us, tz)[1]


def report(consulted: Consulted, now_us: int, tz: ZoneInfo, cache: BoundsCache) -> BudgetReport:
    budget, counter = consulted.budget, consulted.counter
    used = counter.used_now(budget, now_us)
    return BudgetReport(
        budget=budget.id,
        scope=budget.scope,
        meter=budget.meter.name,
        window=budget.window_label,
        scale=budget.meter.scale,
        limit=budget.limit,
        used=used,
        held=counter.held,
        requested=consulted.requested,
        remaining=max(0, budget.limit - used - counter.held),
        resets_at_us=resets_at(budget, counter, now_us, tz, cache),
        is_shadow=budget.is_shadow,
    )


def _denial(consulted: Consulted, now_us: int, tz: ZoneInfo, cache: BoundsCache) -> tuple[Reason, int | None] | None:
    """Why this budget refuses the request and when a retry could succeed; None if it fits."""
    budget, counter = consulted.budget, consulted.counter
    scale, unit = budget.meter.scale, budget.meter.name
    if budget.per_action_max is not None and consulted.touched_count > budget.per_action_max:
        message = (
            f"{budget.id}: {format_amount(consulted.touched_count, scale)} {unit} is over the per-action "
            f"maximum of {format_amount(budget.per_action_max, scale)}"
        )
        return Reason(ReasonCode.PER_ACTION_MAX_EXCEEDED, budget.id, message), None
    if consulted.requested > budget.limit:
        requested_text = format_amount(consulted.requested, scale)
        limit_text = format_amount(budget.limit, scale)
        message = f"{budget.id}: {requested_text} {unit} is more than the whole limit of {limit_text}"
        return Reason(ReasonCode.EXCEEDS_LIMIT, budget.id, message), None
    used = counter.used_now(budget, now_us)
    headroom = budget.limit - used - counter.held
    if consulted.requested <= headroom:
        return None
    retry_us: int | None
    if used + consulted.requested <= budget.limit:
        retry_us = HOLD_RETRY_SECONDS * US_PER_SECOND
    elif budget.is_rolling:
        excess = used + counter.held + consulted.requested - budget.limit
        moment = rolling_release_time(budget.window, counter.buckets, now_us, excess)
        if moment is None:
            # More is held than usage can ever leave; the holds resolve by their leases, so the
            # retry waits only for the usage that must leave whatever they do (never None here).
            excess = used + consulted.requested - budget.limit
            moment = rolling_release_time(budget.window, counter.buckets, now_us, excess)
        retry_us = None if moment is None else moment - now_us
    else:
        end = resets_at(budget, counter, now_us, tz, cache)
        retry_us = None if end is None else end - now_us
    limit_text = format_amount(budget.limit, scale)
    message = (
        f"{budget.id}: requested {format_amount(consulted.requested, scale)} {unit}, "
        f"{format_amount(max(0, headroom), scale)} of {limit_text} left ({budget.window_label})"
    )
    return Reason(ReasonCode.BUDGET_EXHAUSTED, budget.id, message), retry_us


def _retry_seconds(retries: list[int | None]) -> int | None:
    if not retries or any(retry is None for retry in retries):
        return None
    longest_us = max(retry for retry in retries if retry is not None)
    return max(1, -(-longest_us // US_PER_SECOND))


def evaluate_authorize(
    consulted: Sequence[Consulted], now_us: int, tz: ZoneInfo, cache: BoundsCache
) -> tuple[Decision, list[HoldPart], list[Posting]]:
    """Allow and hold on every consulted budget, or deny naming each enforced budget that refuses.

    All or nothing: counters change only when every enforced budget has room. Shadow budgets
    hold too (so their usage is tracked) but a refusal of theirs is only recorded.
    """
    reasons: list[Reason] = []
    retries: list[int | None] = []
    is_denied = False
    for item in consulted:
        refusal = _denial(item, now_us, tz, cache)
        if refusal is None:
            continue
        reason, retry_us = refusal
        if item.budget.is_shadow:
            reasons.append(Reason(ReasonCode.SHADOW_DENY, reason.budget, reason.message))
        else:
            is_denied = True
            reasons.append(reason)
            retries.append(retry_us)
    if is_denied:
        reports = [report(item, now_us, tz, cache) for item in consulted]
        reasons = [reason for reason in reasons if reason.code is not ReasonCode.SHADOW_DENY] + [
            reason for reason in reasons if reason.code is ReasonCode.SHADOW_DENY
        ]
        return Decision(Outcome.DENY, reports, reasons, retry_after_seconds=_retry_seconds(retries)), [], []
    holds: list[HoldPart] = []
    postings: list[Posting] = []
    for item in consulted:
        budget, counter = item.budget, item.counter
        counter.held += item.requested
        counter.is_dirty = True
        check_counter(budget, counter, now_us)
        holds.append(HoldPart(budget.id, counter.key[1], item.requested, item.entities))
        postings.append(Posting(budget.id, counter.key[1], counter.posting_window(budget, now_us), held=item.requested))
    reports = [report(item, now_us, tz, cache) for item in consulted]
    return Decision(Outcome.ALLOW, reports, reasons), holds, postings


def post_usage(budget: Budget, counter: Counter, now_us: int, amount: int, entities: tuple[str, ...]) -> Posting:
    """Count usage (a commit's actuals or post-hoc usage); the part beyond the headroom is overrun."""
    if budget.meter.is_distinct:
        counted = counter.counted_entities
        fresh = tuple(dict.fromkeys(entity for entity in entities if entity not in counted))
        counted.update(fresh)
        amount = len(fresh)
        entities = fresh
    # Room is measured against what was authorised (used less earlier overrun), so a commit
    # within its own hold is never charged an overrun someone else already caused.
    authorised = counter.used_now(budget, now_us) - counter.overrun_now(budget, now_us)
    headroom = budget.limit - authorised - counter.held
    overrun = amount - max(0, headroom) if amount > headroom else 0
    window_start = counter.post(budget, now_us, amount, overrun)
    return Posting(budget.id, counter.key[1], window_start, used=amount, overrun=overrun, entities=entities)


def release_hold(budget: Budget, counter: Counter, part: HoldPart, now_us: int) -> Posting:
    counter.held -= part.amount
    counter.is_dirty = True
    if counter.held < 0:
        raise InvariantViolation(f"{budget.id}: held went negative ({counter.held}) releasing {part.amount}")
    return Posting(budget.id, counter.key[1], counter.posting_window(budget, now_us), held=-part.amount)


def check_counter(budget: Budget, counter: Counter, now_us: int) -> None:
    """The money invariants of one counter: raise before anything wrong can be written."""
    if counter.held < 0:
        raise InvariantViolation(f"{budget.id}: held is negative ({counter.held})")
    if budget.is_shadow:
        return
    authorised = counter.used_now(budget, now_us) - counter.overrun_now(budget, now_us) + counter.held
    if authorised > budget.limit:
        raise InvariantViolation(f"{budget.id}: used - overrun + held = {authorised} exceeds the limit {budget.limit}")
