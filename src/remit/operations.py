"""Operations: the requests a batch decides, validated before they are queued.

Bad input is refused here, with the field it concerns, so it never reaches a batch or the
store: a failed request leaves every balance and the ledger as they were.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from remit.domain.amounts import parse_amount
from remit.domain.budgets import Budget
from remit.domain.decisions import Decision, Priority
from remit.domain.tenant import Agent, TenantConfig
from remit.domain.windows import US_PER_SECOND
from remit.errors import InvalidRequest, InvariantViolation
from remit.limits import (
    CONTEXT_BYTES_MAX,
    CONTEXT_DEPTH_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LEASE_SECONDS_DEFAULT,
    LEASE_SECONDS_MAX,
    LEASE_SECONDS_MIN,
    METERS_PER_REQUEST_MAX,
    NAME_LENGTH_MAX,
    TOUCHES_PER_REQUEST_MAX,
)
from remit.results import CommitResult, ExtendResult, ReleaseResult, UsageResult

_AMOUNT_CACHE: dict[tuple[object, int], int] = {}
"""Decimal parsing is the slowest part of reading a request; agents repeat the same amounts."""
_AMOUNT_CACHE_SIZE_MAX = 10_000


@dataclass(slots=True)
class ActionInput:
    """An action as a caller describes it: amounts as decimal strings in each meter's unit."""

    agent: str
    action: str
    amounts: Mapping[str, str | int] = field(default_factory=dict)
    touches: Mapping[str, Sequence[str]] = field(default_factory=dict)
    task: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    priority: str | None = None
    lease_seconds: int = LEASE_SECONDS_DEFAULT
    idempotency_key: str | None = None


@dataclass(slots=True)
class Act:
    """A parsed authorize (or post-hoc usage) request."""

    tenant_id: str
    agent: Agent
    action: str
    amounts: dict[str, int]
    touches: dict[str, tuple[str, ...]]
    task: str | None
    context: Mapping[str, Any]
    priority: Priority
    lease_us: int
    idempotency_key: str | None
    fingerprint: str
    is_usage: bool = False
    consulted: list[tuple[Budget, str]] | None = None
    """The budgets (and instances) this request consults, once the batch has worked them out."""
    problem: InvalidRequest | None = None
    """Why the batch's config refuses the request (an agent or meter gone, a task missing)."""


@dataclass(slots=True)
class Resolve:
    """A request about an existing reservation: commit, release, extend or expire."""

    tenant_id: str
    kind: str
    reservation_id: str
    amounts: dict[str, int] | None = None
    outcome: str | None = None
    idempotency_key: str | None = None
    lease_us: int = 0
    agent: str | None = None
    """Set for an agent key: a reservation of any other agent is not found."""


Operation = Act | Resolve
Result = Decision | CommitResult | ReleaseResult | ExtendResult | UsageResult | None


_T = TypeVar("_T")


def expect_result(result: Result, kind: type[_T]) -> _T:
    if not isinstance(result, kind):
        raise InvariantViolation(f"expected a {kind.__name__}, the batch answered {type(result).__name__}")
    return result


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
"""Refused in names and keys: a NUL cannot be stored in a PostgreSQL text column, and control
characters in an audit trail only hide what a name really says."""


def check_name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > NAME_LENGTH_MAX:
        raise InvalidRequest(
            f"{field_name} must be a non-empty string of at most {NAME_LENGTH_MAX} characters",
            code="invalid_field",
            field=field_name,
        )
    if _CONTROL_CHARACTER.search(value) is not None:
        raise InvalidRequest(
            f"{field_name} must not contain control characters", code="invalid_field", field=field_name
        )
    return value


def lease_us(lease_seconds: object) -> int:
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int):
        raise InvalidRequest(
            "lease_seconds must be a whole number of seconds", code="invalid_field", field="lease_seconds"
        )
    if not LEASE_SECONDS_MIN <= lease_seconds <= LEASE_SECONDS_MAX:
        raise InvalidRequest(
            f"lease_seconds must be between {LEASE_SECONDS_MIN} and {LEASE_SECONDS_MAX}",
            code="invalid_field",
            field="lease_seconds",
        )
    return lease_seconds * US_PER_SECOND


def _check_context(context: object) -> dict[str, Any]:
    if not isinstance(context, Mapping):
        raise InvalidRequest("context must be an object", code="invalid_field", field="context")
    if not context:
        return {}
    try:
        size = len(orjson.dumps(context))
    except (TypeError, orjson.JSONEncodeError) as error:
        if "Recursion" in str(error):  # deeper than orjson writes: far past the limit below
            raise _nested_too_deeply() from None
        raise InvalidRequest(
            "context must be JSON (string keys; strings, numbers, lists, objects)",
            code="invalid_field",
            field="context",
        ) from None
    if size > CONTEXT_BYTES_MAX:
        raise InvalidRequest(f"context is over {CONTEXT_BYTES_MAX} bytes", code="invalid_field", field="context")
    if _depth(context) > CONTEXT_DEPTH_MAX:
        # The ledger stores the context inside an entry's detail, and orjson refuses to write
        # what nests past 254 levels: the whole batch would fail at its write, not this request.
        raise _nested_too_deeply()
    return dict(context)


def _nested_too_deeply() -> InvalidRequest:
    message = f"context nests more than {CONTEXT_DEPTH_MAX} levels of objects and lists"
    return InvalidRequest(message, code="invalid_field", field="context")


def _depth(value: object) -> int:
    """How many levels of objects and lists `value` nests (0 for a plain value); no recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_key(key: object) -> str | None:
    if key is None:
        return None
    if (
        not isinstance(key, str)
        or not key
        or len(key) > IDEMPOTENCY_KEY_LENGTH_MAX
        or _CONTROL_CHARACTER.search(key) is not None
    ):
        raise InvalidRequest(
            f"idempotency_key must be a string of 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} characters, no control characters",
            code="invalid_field",
            field="idempotency_key",
        )
    return key


def parse_act(tenant: TenantConfig, request: ActionInput, *, is_usage: bool) -> Act:
    tenant_id = tenant.tenant_id
    agent_name = check_name(request.agent, "agent")
    agent = tenant.agents.get(agent_name)
    if agent is None:
        raise InvalidRequest(f"agent {agent_name!r} is not configured", code="unknown_agent", field="agent")
    action = check_name(request.action, "action")
    task = None if request.task is None else check_name(request.task, "task")
    amounts = parse_amounts(tenant, request.amounts, "amounts")
    touches = parse_touches(tenant, request.touches)
    try:
        priority = agent.priority if request.priority is None else Priority(request.priority)
    except ValueError:
        raise InvalidRequest(
            f"priority {request.priority!r} is not one of interactive, scheduled, background",
            code="invalid_field",
            field="priority",
        ) from None
    context = _check_context(request.context)
    key = check_key(request.idempotency_key)
    fingerprint = ""
    if key is not None:
        canonical = orjson.dumps(
            [
                agent_name,
                task,
                action,
                sorted(amounts.items()),
                sorted(touches.items()),
                priority.value,
                request.lease_seconds,
                is_usage,
                context,
            ],
            option=orjson.OPT_SORT_KEYS,
        )
        fingerprint = hashlib.sha256(canonical).hexdigest()
        # Each agent has its own key space: another agent of the tenant reusing "k-1" is another
        # request, not a mismatch (nor a way to probe or block this agent's keys). Agent names
        # cannot contain "/", so the scoped key is unambiguous.
        key = f"{agent_name}/{key}"
    return Act(
        tenant_id,
        agent,
        action,
        amounts,
        touches,
        task,
        context,
        priority,
        lease_us(request.lease_seconds),
        key,
        fingerprint,
        is_usage,
    )


def parse_amounts(tenant: TenantConfig, amounts: Mapping[str, str | int], field_name: str) -> dict[str, int]:
    if not isinstance(amounts, Mapping):
        raise InvalidRequest(
            f"{field_name} must be an object of meter → amount", code="invalid_field", field=field_name
        )
    if len(amounts) > METERS_PER_REQUEST_MAX:
        raise InvalidRequest(
            f"{field_name} has more than {METERS_PER_REQUEST_MAX} meters", code="invalid_field", field=field_name
        )
    parsed = {}
    for name, text in amounts.items():
        meter = tenant.meters.get(name)
        where = f"{field_name}.{name}"
        if meter is None:
            raise InvalidRequest(f"{where}: meter {name!r} does not exist", code="unknown_meter", field=where)
        if meter.is_distinct:
            raise InvalidRequest(
                f"{where}: {name!r} is a distinct meter; list entities in touches",
                code="invalid_field",
                field=where,
            )
        cache_key = (text, meter.scale)
        amount = _AMOUNT_CACHE.get(cache_key) if type(text) is str else None
        if amount is None:
            amount = parse_amount(text, meter.scale, field=where)
            if len(_AMOUNT_CACHE) < _AMOUNT_CACHE_SIZE_MAX:
                _AMOUNT_CACHE[cache_key] = amount
        parsed[name] = amount
    return parsed


def parse_touches(tenant: TenantConfig, touches: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    if not isinstance(touches, Mapping):
        raise InvalidRequest("touches must be an object of meter → entity list", code="invalid_field", field="touches")
    parsed = {}
    count = 0
    for name, entities in touches.items():
        meter = tenant.meters.get(name)
        where = f"touches.{name}"
        if meter is None:
            raise InvalidRequest(f"{where}: meter {name!r} does not exist", code="unknown_meter", field=where)
        if not meter.is_distinct:
            raise InvalidRequest(
                f"{where}: {name!r} is a sum meter; give it in amounts", code="invalid_field", field=where
            )
        if not isinstance(entities, (list, tuple)):
            raise InvalidRequest(f"{where} must be a list of entity ids", code="invalid_field", field=where)
        for entity in entities:
            if (
                type(entity) is not str
                or not entity
                or len(entity) > NAME_LENGTH_MAX
                or _CONTROL_CHARACTER.search(entity)
            ):
                check_name(entity, where)
        unique = tuple(dict.fromkeys(entities))
        count += len(unique)
        parsed[name] = unique
    if count > TOUCHES_PER_REQUEST_MAX:
        raise InvalidRequest(
            f"touches lists more than {TOUCHES_PER_REQUEST_MAX} entities", code="invalid_field", field="touches"
        )
    return parsed
