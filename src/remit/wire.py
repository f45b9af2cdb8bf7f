"""The JSON shapes of DESIGN.md §4: engine results to wire dicts, request bodies to engine inputs.

Used by the HTTP API and by `remit.Local`, so an in-process caller sees exactly what a remote
one does. Amounts are decimal strings in the meter's unit; times are RFC 3339 UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from remit.domain.amounts import format_amount
from remit.domain.decisions import BudgetReport, Decision
from remit.domain.ledger import EntryKind
from remit.domain.tenant import TenantConfig
from remit.domain.windows import to_datetime, to_us
from remit.errors import Forbidden, InvalidRequest
from remit.keys import Principal
from remit.limits import LEASE_SECONDS_DEFAULT, LEDGER_PAGE_SIZE_DEFAULT
from remit.operations import ActionInput, check_name
from remit.results import CheckReport, CommitResult, ExtendResult, ReleaseResult, UsageResult
from remit.store.base import LedgerFilter

_ACT_FIELDS = frozenset(
    {"agent", "task", "action", "amounts", "touches", "context", "priority", "lease_seconds", "idempotency_key"}
)


_SECONDS_TEXT: dict[int, str] = {}
"""Whole seconds already formatted: answers repeat the same few window ends and lease deadlines."""
_SECONDS_TEXT_SIZE_MAX = 4096


def format_time(us: int | None) -> str | None:
    """RFC 3339 UTC with microseconds (`2026-01-31T12:00:00.000000Z`)."""
    if us is None:
        return None
    second, micros = divmod(us, 1_000_000)
    text = _SECONDS_TEXT.get(second)
    if text is None:
        if len(_SECONDS_TEXT) >= _SECONDS_TEXT_SIZE_MAX:
            _SECONDS_TEXT.clear()
        text = _SECONDS_TEXT[second] = to_datetime(second * 1_000_000).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{micros:06d}Z"


def parse_time(text: object, field_name: str) -> int:
    """An RFC 3339 time (a zone offset is required; `Z` means UTC) to integer microseconds."""
    if not isinstance(text, str) or len(text) > 64:
        raise InvalidRequest(f"{field_name} must be an RFC 3339 time", code="invalid_field", field=field_name)
    try:
        moment = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise InvalidRequest(
            f"{field_name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z, not {text!r}",
            code="invalid_field",
            field=field_name,
        ) from None
    if moment.tzinfo is None:
        raise InvalidRequest(f"{field_name} needs a zone offset (e.g. Z)", code="invalid_field", field=field_name)
    try:
        return to_us(moment)
    except (OverflowError, ValueError):
        raise InvalidRequest(f"{field_name} is out of range", code="invalid_field", field=field_name) from None


def budget_json(report: BudgetReport) -> dict[str, Any]:
    scale = report.scale
    return {
        "budget": report.budget,
        "scope": report.scope,
        "meter": report.meter,
        "window": report.window,
        "mode": "shadow" if report.is_shadow else "enforce",
        "limit": format_amount(report.limit, scale),
        "used": format_amount(report.used, scale),
        "held": format_amount(report.held, scale),
        "requested": format_amount(report.requested, scale),
        "remaining": format_amount(report.remaining, scale),
        "resets_at": format_time(report.resets_at_us),
    }


def decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "decision": decision.outcome.value,
        "reservation": decision.reservation_id,
        "lease_expires_at": format_time(decision.lease_expires_at_us),
        "budgets": [budget_json(report) for report in decision.budgets],
        "reasons": [
            {"code": reason.code.value, "budget": reason.budget, "message": reason.message}
            for reason in decision.reasons
        ],
        "retry_after_seconds": decision.retry_after_seconds,
    }


def amounts_json(tenant: TenantConfig, amounts: Mapping[str, int]) -> dict[str, str]:
    """Base units per meter to decimal strings (a meter since removed from the config shows as integers)."""
    result = {}
    for name, value in amounts.items():
        meter = tenant.meters.get(name)
        result[name] = format_amount(value, meter.scale if meter is not None else 0)
    return result


def commit_json(tenant: TenantConfig, result: CommitResult) -> dict[str, Any]:
    return {
        "reservation": result.reservation_id,
        "status": result.status,
        "committed": amounts_json(tenant, result.committed),
        "released": amounts_json(tenant, result.released),
        "overrun": amounts_json(tenant, result.overrun),
        "is_late": result.is_late,
    }


def release_json(tenant: TenantConfig, result: ReleaseResult) -> dict[str, Any]:
    return {
        "reservation": result.reservation_id,
        "status": result.status,
        "released": amounts_json(tenant, result.released),
    }


def extend_json(result: ExtendResult) -> dict[str, Any]:
    return {
        "reservation": result.reservation_id,
        "status": result.status,
        "lease_expires_at": format_time(result.lease_expires_at_us),
    }


def usage_json(tenant: TenantConfig, result: UsageResult) -> dict[str, Any]:
    return {
        "status": "counted",
        "budgets": [budget_json(report) for report in result.budgets],
        "overrun": amounts_json(tenant, result.overrun),
    }


def expect_object(body: object, what: str = "the request body") -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest(f"{what} must be a JSON object", code="invalid_request")
    return body


def reject_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(str(name) for name in body if name not in allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})",
            code="invalid_field",
            field=unknown[0],
        )


def action_input(body: object, *, agent: str | None) -> ActionInput:
    """An authorize or usage body to the engine's input. `agent` is the agent key's own agent, if any.

    Field types are checked here only as far as the engine needs them to be the right kind of
    value; the engine's own validation names every field it refuses.
    """
    fields = expect_object(body)
    reject_unknown(fields, _ACT_FIELDS)
    named = fields.get("agent")
    if agent is not None and named is not None and named != agent:
        raise Forbidden(f"this agent key acts as {agent!r} only, not as {named!r}")
    acting = agent if agent is not None else named
    if acting is None:
        raise InvalidRequest("agent is required with an admin key", code="invalid_field", field="agent")
    amounts = fields.get("amounts", {})
    if not isinstance(amounts, Mapping):
        raise InvalidRequest(
            "amounts must be an object of meter → decimal string", code="invalid_field", field="amounts"
        )
    touches = fields.get("touches", {})
    if not isinstance(touches, Mapping) or not all(
        isinstance(value, list) and all(isinstance(item, str) for item in value) for value in touches.values()
    ):
        raise InvalidRequest(
            "touches must be an object of meter → list of entity strings", code="invalid_field", field="touches"
        )
    context = fields.get("context")
    lease = fields.get("lease_seconds")
    return ActionInput(
        agent=acting,
        action=fields.get("action"),  # type: ignore[arg-type]  # checked by the engine, naming the field
        amounts=amounts,
        touches=touches,
        task=fields.get("task"),
        context={} if context is None else context,
        priority=fields.get("priority"),
        lease_seconds=LEASE_SECONDS_DEFAULT if lease is None else lease,
        idempotency_key=fields.get("idempotency_key"),
    )


@dataclass(frozen=True, slots=True)
class LedgerRequest:
    """`GET /v1/ledger` query parameters, validated."""

    query: LedgerFilter
    scope: str | None
    cursor: str | None
    limit: int
    is_newest_first: bool


LEDGER_PARAMETERS = frozenset({"scope", "agent", "action", "kind", "since", "until", "cursor", "limit", "order"})
LEDGER_KINDS = frozenset(kind.value for kind in EntryKind)


def ledger_request(params: Mapping[str, str]) -> LedgerRequest:
    reject_unknown(params, LEDGER_PARAMETERS)
    for name in ("scope", "agent", "action"):
        if name in params:
            check_name(params[name], name)
    limit_text = params.get("limit", str(LEDGER_PAGE_SIZE_DEFAULT))
    if not (limit_text.isascii() and limit_text.isdigit()):
        raise InvalidRequest("limit must be a whole number", code="invalid_field", field="limit")
    kind = params.get("kind")
    if kind is not None and kind not in LEDGER_KINDS:
        raise InvalidRequest(
            f"kind must be one of {', '.join(sorted(LEDGER_KINDS))}", code="invalid_field", field="kind"
        )
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", code="invalid_field", field="order")
    query = LedgerFilter(
        agent=params.get("agent"),
        action=params.get("action"),
        kind=kind,
        since_us=parse_time(params["since"], "since") if "since" in params else 0,
        until_us=parse_time(params["until"], "until") if "until" in params else 2**62,
    )
    return LedgerRequest(query, params.get("scope"), params.get("cursor"), int(limit_text[:7]), order == "desc")


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """The body of a commit, release or extend."""

    amounts: Mapping[str, str | int] | None = None
    outcome: str = "success"
    idempotency_key: str | None = None
    lease_seconds: int = LEASE_SECONDS_DEFAULT


_RESOLVE_FIELDS = {
    "commit": frozenset({"amounts", "outcome", "idempotency_key"}),
    "release": frozenset({"idempotency_key"}),
    "extend": frozenset({"lease_seconds"}),
}


def resolve_request(kind: str, body: object) -> ResolveRequest:
    fields = expect_object(body)
    reject_unknown(fields, _RESOLVE_FIELDS[kind])
    amounts = fields.get("amounts")
    if amounts is not None and not isinstance(amounts, Mapping):
        raise InvalidRequest(
            "amounts must be an object of meter → decimal string", code="invalid_field", field="amounts"
        )
    return ResolveRequest(
        amounts=amounts,
        outcome=fields.get("outcome", "success"),
        idempotency_key=fields.get("idempotency_key"),
        lease_seconds=fields.get("lease_seconds", LEASE_SECONDS_DEFAULT),
    )


def key_request(body: object) -> tuple[str, str | None, str | None]:
    """(role, agent, name) of a `POST /v1/keys` body."""
    fields = expect_object(body)
    reject_unknown(fields, frozenset({"role", "agent", "name"}))
    return fields.get("role", "agent"), fields.get("agent"), fields.get("name")


def config_from_yaml(text: str | bytes) -> object:
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InvalidRequest(
            f"the body is not valid YAML: {' '.join(str(error).split())}", code="invalid_json"
        ) from None
    except RecursionError:
        raise InvalidRequest("the body is not valid YAML: nested too deeply", code="invalid_json") from None


def check_json(report: CheckReport) -> dict[str, Any]:
    return {
        "tenant": report.tenant_id,
        "entries": report.entries,
        "counters": report.counters,
        "mismatches": report.mismatches,
        "is_consistent": report.is_consistent,
    }


def whoami_json(principal: Principal) -> dict[str, Any]:
    return {
        "tenant": principal.tenant_id,
        "key": principal.key_id,
        "role": principal.role.value,
        "agent": principal.agent,
    }
