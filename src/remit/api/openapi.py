"""The OpenAPI 3.1 document of the HTTP API, built as a dict.

`python -m remit.api.openapi > src/remit/api/openapi.json` regenerates the committed file the
server serves verbatim at /openapi.json; `tests/unit/test_openapi.py` fails when the two differ or
when a route of `remit.api.app.routes` is missing here. Field names are the ones the server emits
(DESIGN.md §4); `tests/e2e/test_schemathesis.py` checks every answer of the real app against them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from remit.changes import KINDS
from remit.domain.decisions import Outcome, Priority, ReasonCode
from remit.domain.ledger import EntryKind
from remit.limits import (
    AMOUNT_TEXT_LENGTH_MAX,
    CONTEXT_BYTES_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LEASE_SECONDS_DEFAULT,
    LEASE_SECONDS_MAX,
    LEASE_SECONDS_MIN,
    LEDGER_PAGE_SIZE_MAX,
    METER_SCALE_MAX,
    METERS_PER_REQUEST_MAX,
    NAME_LENGTH_MAX,
)

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"

AMOUNT_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
"""How the server writes amounts: exactly the meter's scale of decimal places ("120.00", "1")."""
AMOUNT_INPUT_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
KEY_PATTERN = r"^rk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$"
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"

OUTCOMES = [outcome.value for outcome in Outcome]
PRIORITIES = [priority.value for priority in Priority]
REASON_CODES = [code.value for code in ReasonCode]
ENTRY_KINDS = [kind.value for kind in EntryKind]
CHANGE_KINDS = list(KINDS)

ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON (or YAML), or not a JSON object: `invalid_json`, `invalid_request`.",
    401: "No key, or a key that is malformed, unknown, revoked or rotated: `unauthorized`.",
    403: "The key is valid but may not do this (an agent key on an admin route): `forbidden`.",
    404: "The named thing does not exist in the caller's tenant: `not_found`.",
    409: "The request conflicts with what already happened (`already_committed`, `already_released`, "
    "`expired`, `idempotency_mismatch`, `last_admin_key`).",
    413: "The body is over the size limit: `body_too_large`.",
    422: "Well-formed, but a field cannot be accepted (`invalid_field`, `invalid_amount`, `amount_too_large`, "
    "`unknown_agent`, `unknown_meter`, `meter_not_held`, `task_required`, `invalid_config`, …); "
    "`details.field` names the field.",
    500: "A bug: the request changed nothing (`internal`, `invariant_violation`).",
    503: "Overloaded, or the store failed; retry after `Retry-After` seconds (`overloaded`, `unavailable`).",
}


# -- schema helpers -----------------------------------------------------------------------------
def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], *, required: list[str] | None = None, closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


def _answer(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """A response object: every field is always present (except `optional` ones); more may be added later."""
    return _object(properties, required=[name for name in properties if name not in optional], closed=False)


def _example(schema: Schema, example: Any) -> Schema:
    return {**schema, "examples": [example]}


def _nullable(schema: Schema) -> Schema:
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*kinds, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _string(description: str | None = None, **constraints: Any) -> Schema:
    schema: Schema = {"type": "string", **constraints}
    if description:
        schema["description"] = description
    return schema


def _name(description: str) -> Schema:
    return _string(description, minLength=1, maxLength=NAME_LENGTH_MAX)


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _map(values: Schema, description: str) -> Schema:
    return {"type": "object", "additionalProperties": values, "description": description}


AMOUNT: Schema = _string(
    "A decimal string in the meter's unit, with the meter's scale of places.", pattern=AMOUNT_PATTERN
)
TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC (`Z`), microseconds."}
TIME_OR_NULL: Schema = _nullable(TIME)
AMOUNTS: Schema = _map(_ref("Amount"), "Meter name → amount.")


# -- components ---------------------------------------------------------------------------------
def _decision_schemas() -> dict[str, Schema]:
    amount_input: Schema = {
        "description": 'A non-negative decimal string in the meter\'s unit (`"12.50"`); a JSON integer is '
        "accepted too. More places than the meter's scale round up.",
        "anyOf": [
            _string(pattern=AMOUNT_INPUT_PATTERN, minLength=1, maxLength=AMOUNT_TEXT_LENGTH_MAX),
            {"type": "integer", "minimum": 0},
        ],
    }
    amounts_input = {
        **_map(_ref("AmountInput"), "Meter name → amount, for sum meters."),
        "maxProperties": METERS_PER_REQUEST_MAX,
    }
    idempotency_key = _nullable(
        _string(
            "Retrying with the same key returns the first answer; reusing it for another request is a 409.",
            minLength=1,
            maxLength=IDEMPOTENCY_KEY_LENGTH_MAX,
        )
    )
    lease_seconds = {"type": "integer", "minimum": LEASE_SECONDS_MIN, "maximum": LEASE_SECONDS_MAX}
    action_fields: dict[str, Schema] = {
        "agent": _nullable(_name("The acting agent: implied by an agent key, required with an admin key.")),
        "task": _nullable(_name("The task the action belongs to (per-task budgets count each task apart).")),
        "action": _name("What the agent is about to do, e.g. `crm.discount.apply`; budgets select by it."),
        "amounts": amounts_input,
        "touches": _map(
            _array(_name("An entity id.")), "Distinct meter name → the entities the action touches (reach)."
        ),
        "context": _nullable(
            {
                "type": "object",
                "description": f"Free-form JSON recorded with the hold (at most {CONTEXT_BYTES_MAX} bytes).",
            }
        ),
        "priority": _nullable({"type": "string", "enum": PRIORITIES, "description": "Default: the agent's."}),
        "lease_seconds": _nullable(
            {**lease_seconds, "description": f"How long a hold lasts unless extended; default {LEASE_SECONDS_DEFAULT}."}
        ),
        "idempotency_key": idempotency_key,
    }
    example = {
        "agent": "bot-7",
        "action": "crm.discount.apply",
        "amounts": {"usd": "120.00"},
        "touches": {"accounts": ["acct:42"]},
        "lease_seconds": 60,
    }
    return {
        "Amount": AMOUNT,
        "AmountInput": amount_input,
        "AuthorizeRequest": {
            **_object(action_fields, required=["action"]),
            "description": "An action to decide. An allowed action holds its amounts until committed or released.",
            "examples": [example],
        },
        "UsageRequest": {
            **_object(action_fields, required=["action"]),
            "description": "Usage that was never held (post-hoc): counted on every selected budget, even past a "
            "limit. `lease_seconds` is checked but has no effect.",
            "examples": [{"agent": "helper-1", "action": "llm.call", "amounts": {"tokens": "1200"}, "task": "t-1"}],
        },
        "CommitRequest": _example(
            _object(
                {
                    "amounts": _nullable(
                        {**amounts_input, "description": "Actual amounts; a meter left out commits what it held."}
                    ),
                    "outcome": _name("How the action ended (recorded in the ledger). Default `success`."),
                    "idempotency_key": idempotency_key,
                }
            ),
            {"amounts": {"usd": "95.00"}, "outcome": "success"},
        ),
        "ReleaseRequest": _object({"idempotency_key": idempotency_key}),
        "ExtendRequest": _example(
            _object(
                {
                    "lease_seconds": {
                        **lease_seconds,
                        "description": f"New lease from now; default {LEASE_SECONDS_DEFAULT}.",
                    }
                }
            ),
            {"lease_seconds": 120},
        ),
        "BudgetReport": _answer(
            {
                "budget": _string("The budget id."),
                "scope": _string(),
                "meter": _string(),
                "window": _string("`minute` … `month`, `total` or `rolling:<duration>`."),
                "mode": {"type": "string", "enum": ["enforce", "shadow"]},
                "limit": AMOUNT,
                "used": AMOUNT,
                "held": AMOUNT,
                "requested": AMOUNT,
                "remaining": AMOUNT,
                "resets_at": {**TIME_OR_NULL, "description": "When the window resets; null for `total`."},
            }
        ),
        "Reason": _answer(
            {"code": {"type": "string", "enum": REASON_CODES}, "budget": _string(), "message": _string()}
        ),
        "Decision": _answer(
            {
                "decision": {"type": "string", "enum": OUTCOMES},
                "reservation": _nullable(_string("The hold's id when allowed; commit or release it.")),
                "lease_expires_at": TIME_OR_NULL,
                "budgets": _array(_ref("BudgetReport")),
                "reasons": _array(_ref("Reason")),
                "retry_after_seconds": _nullable(
                    {"type": "integer", "minimum": 0, "description": "When a retry could succeed; null if never."}
                ),
            }
        ),
        "UsageResult": _answer(
            {
                "status": {"type": "string", "const": "counted"},
                "budgets": _array(_ref("BudgetReport")),
                "overrun": {**AMOUNTS, "description": "Meter → what went past a limit."},
            }
        ),
        "CommitResult": _answer(
            {
                "reservation": _string(),
                "status": {"type": "string", "const": "committed"},
                "committed": AMOUNTS,
                "released": AMOUNTS,
                "overrun": AMOUNTS,
                "is_late": {"type": "boolean", "description": "The hold had expired; counted as late usage."},
            }
        ),
        "ReleaseResult": _answer(
            {"reservation": _string(), "status": {"type": "string", "const": "released"}, "released": AMOUNTS}
        ),
        "ExtendResult": _answer(
            {"reservation": _string(), "status": {"type": "string", "const": "held"}, "lease_expires_at": TIME}
        ),
    }


def _read_schemas() -> dict[str, Schema]:
    budget_fields: dict[str, Schema] = {
        "scope": _string(),
        "meter": _string(),
        "limit": AMOUNT,
        "window": _string(),
        "per_action_max": _nullable(AMOUNT),
        "actions": _string("Action selector, e.g. `*` or `crm.*`."),
        "mode": {"type": "string", "enum": ["enforce", "shadow"]},
        "per": {"type": "string", "enum": ["scope", "task"]},
    }
    headroom_fields: dict[str, Schema] = {
        "budget": _string(),
        **budget_fields,
        "used": AMOUNT,
        "held": AMOUNT,
        "remaining": AMOUNT,
        "resets_at": TIME_OR_NULL,
        "burn_rate_per_hour": {**AMOUNT, "description": "Usage over the last hour."},
        "projected_exhaustion_at": {**TIME_OR_NULL, "description": "Null if the budget lasts to its reset."},
        "tasks": {"type": "integer", "minimum": 0, "description": "Per-task budgets only: tasks counted."},
    }
    posting: Schema = _answer(
        {
            "budget": _string(),
            "instance": _nullable(_string("The task, for per-task budgets.")),
            "used": AMOUNT,
            "held": AMOUNT,
            "overrun": AMOUNT,
            "is_base_units": {"type": "boolean", "description": "Present when the budget was since removed."},
            "entities": _array(_string()),
        },
        optional=("is_base_units", "entities"),
    )
    return {
        "Budget": _answer({"id": _string(), **budget_fields}),
        "HeadroomBudget": _answer(headroom_fields, optional=("tasks",)),
        "Headroom": _answer({"scope": _string(), "at": TIME, "budgets": _array(_ref("HeadroomBudget"))}),
        "Posting": posting,
        "LedgerEntry": _answer(
            {
                "id": _string("Increasing; use as a cursor.", pattern="^[0-9]+$"),
                "at": TIME,
                "kind": {"type": "string", "enum": ENTRY_KINDS},
                "reservation": _nullable(_string()),
                "agent": _nullable(_string()),
                "action": _nullable(_string()),
                "postings": _array(_ref("Posting")),
                "detail": _nullable({"type": "object"}),
            }
        ),
        "LedgerPage": _answer(
            {
                "entries": _array(_ref("LedgerEntry")),
                "next_cursor": _nullable(_string("Pass as `cursor` for the next page; null at the end.")),
            }
        ),
        "Whoami": _answer(
            {
                "tenant": _string(),
                "key": _string(pattern=KEY_ID_PATTERN),
                "role": {"type": "string", "enum": ["admin", "agent"]},
                "agent": _nullable(_string()),
            }
        ),
        "CheckReport": _answer(
            {
                "tenant": _string(),
                "entries": {"type": "integer", "minimum": 0},
                "counters": {"type": "integer", "minimum": 0},
                "mismatches": _array(_string()),
                "is_consistent": {"type": "boolean"},
            }
        ),
    }


def _config_schemas() -> dict[str, Schema]:
    """The config document (DESIGN.md §4) as the server validates it (`remit.config.ConfigDoc`)."""
    limit: Schema = {
        "anyOf": [_string(pattern=AMOUNT_INPUT_PATTERN, maxLength=AMOUNT_TEXT_LENGTH_MAX), {"type": "integer"}]
    }
    budget_fields: dict[str, Schema] = {
        "meter": _string(),
        "limit": limit,
        "window": _string("`minute`, `hour`, `day`, `week`, `month`, `total` or `rolling:<N><s|m|h|d>`."),
        "per_action_max": _nullable(limit),
        "actions": _string("Action selector; default `*`."),
        "mode": {"type": "string", "enum": ["enforce", "shadow"]},
        "per": {"type": "string", "enum": ["scope", "task"]},
        "id": _nullable(_string("Default: derived from scope, meter, window, actions and per.")),
    }
    budgets = _array(_ref("BudgetDocument"))
    owner = _nullable(_string())
    return {
        "BudgetDocument": _object(budget_fields, required=["meter", "limit", "window"]),
        "MeterDocument": _object(
            {
                "kind": {"type": "string", "enum": ["sum", "distinct"]},
                "scale": {"type": "integer", "minimum": 0, "maximum": METER_SCALE_MAX},
            }
        ),
        "ScopeDocument": _example(
            _object({"owner": owner, "budgets": budgets}),
            {"owner": "ops@example.com", "budgets": [{"meter": "usd", "limit": "100", "window": "day"}]},
        ),
        "AgentDocument": _example(
            _object(
                {
                    "scope": _string("The scope path the agent works in."),
                    "priority": {"type": "string", "enum": PRIORITIES},
                    "owner": owner,
                    "purpose": _nullable(_string()),
                    "budgets": budgets,
                },
                required=["scope"],
            ),
            {"scope": "sales/renewals", "priority": "background"},
        ),
        "TenantDocument": _object(
            {"timezone": _nullable(_string("IANA zone of calendar windows.")), "name": owner, "budgets": budgets}
        ),
        "ConfigDocument": {
            **_object(
                {
                    "tenant": _ref("TenantDocument"),
                    "meters": _map(_ref("MeterDocument"), "Meter name → meter."),
                    "scopes": _map(_nullable(_ref("ScopeDocument")), "Scope path → scope (a flat map)."),
                    "agents": _map(_ref("AgentDocument"), "Agent name → agent."),
                }
            ),
            "examples": [
                {
                    "meters": {"usd": {"kind": "sum", "scale": 2}},
                    "scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "day"}]}},
                    "agents": {"bot-1": {"scope": "ops"}},
                }
            ],
        },
        "BudgetPut": {
            **_object(
                {
                    "scope": _string("The scope path the budget belongs to.", minLength=1),
                    **budget_fields,
                    "id": {"description": "Ignored: the id in the path is the budget's id."},
                },
                required=["scope", "meter", "limit", "window"],
            ),
            "description": "A budget document plus its scope; the path's id replaces any `id` given.",
            "examples": [{"scope": "support", "meter": "tokens", "limit": "50000", "window": "hour"}],
        },
        "Config": _answer({"version": {"type": "integer", "minimum": 0}, "config": _ref("StoredConfig")}),
        "StoredConfig": {
            "type": "object",
            "description": "The applied document with every default filled in (`{}` before the first apply).",
        },
        "Change": _answer(
            {
                "op": {"type": "string", "enum": ["add", "change", "remove"]},
                "kind": {"type": "string", "enum": CHANGE_KINDS},
                "name": _string(),
                "before": _nullable({"type": "object"}),
                "after": _nullable({"type": "object"}),
            }
        ),
        "ConfigApplyResult": _answer(
            {
                "dry_run": {"type": "boolean"},
                "version": {"type": "integer", "minimum": 0, "description": "The version in force afterwards."},
                "changes": _array(_ref("Change")),
            }
        ),
        "Scope": _answer({"path": _string(), "owner": _nullable(_string()), "budgets": _array(_ref("Budget"))}),
        "Agent": _answer(
            {
                "name": _string(),
                "scope": _string(),
                "priority": {"type": "string", "enum": PRIORITIES},
                "owner": _nullable(_string()),
                "purpose": _nullable(_string()),
                "budgets": _array(_ref("StoredBudgetDocument")),
            }
        ),
        "StoredBudgetDocument": _answer(budget_fields),
    }


def _key_schemas() -> dict[str, Schema]:
    key_fields: dict[str, Schema] = {
        "id": _string(pattern=KEY_ID_PATTERN),
        "prefix": _string("What listings show of a key: enough to recognise it, nothing to use it."),
        "role": {"type": "string", "enum": ["admin", "agent"]},
        "agent": _nullable(_string()),
        "name": _nullable(_string()),
        "created_at": TIME,
        "rotated_at": TIME_OR_NULL,
        "revoked_at": TIME_OR_NULL,
        "is_active": {"type": "boolean"},
    }
    return {
        "Key": _answer(key_fields),
        "NewKey": _answer({**key_fields, "key": _string("The whole key; shown once.", pattern=KEY_PATTERN)}),
        "KeyCreateRequest": _example(
            _object(
                {
                    "role": {"type": "string", "enum": ["admin", "agent"], "description": "Default `agent`."},
                    "agent": _nullable(_name("Required for an agent key: the configured agent it acts as.")),
                    "name": _nullable(_name("A label.")),
                }
            ),
            {"role": "agent", "agent": "bot-8", "name": "ci"},
        ),
    }


def _error_schemas() -> dict[str, Schema]:
    problem = _answer({"path": _string(), "message": _string()})
    return {
        "Error": _answer(
            {
                "error": _answer(
                    {
                        "code": _string("Stable; shared by the API and the CLI.", pattern="^[a-z_]+$"),
                        "message": _string("For people: what is wrong and what to do."),
                        "details": _nullable(
                            _answer(
                                {
                                    "field": _string("The refused field, e.g. `amounts.usd`."),
                                    "errors": _array(problem),
                                    "status": _string(),
                                },
                                optional=("field", "errors", "status"),
                            )
                        ),
                    }
                )
            }
        )
    }


def components() -> dict[str, Any]:
    schemas = {
        **_decision_schemas(),
        **_read_schemas(),
        **_config_schemas(),
        **_key_schemas(),
        **_error_schemas(),
    }
    return {
        "schemas": dict(sorted(schemas.items())),
        "responses": _error_responses(),
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "rk_<key id>_<secret>",
                "description": "An admin key, or an agent key that acts as its one agent.",
            }
        },
    }


# -- operations ---------------------------------------------------------------------------------
def _json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    413: "PayloadTooLarge",
    422: "UnprocessableContent",
    500: "InternalError",
    503: "Unavailable",
}


def _error_responses() -> dict[str, Any]:
    """One response per error status, each answering the one `Error` body."""
    responses: dict[str, Any] = {}
    for status, name in ERROR_RESPONSES.items():
        response: dict[str, Any] = {"description": ERROR_DESCRIPTIONS[status], "content": _json_content(_ref("Error"))}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 503:
            response["headers"] = {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}}
        responses[name] = response
    return responses


def _responses(ok: tuple[int, str, Schema], errors: tuple[int, ...]) -> dict[str, Any]:
    status, description, schema = ok
    responses: dict[str, Any] = {str(status): {"description": description, "content": _json_content(schema)}}
    for code in sorted(set(errors)):
        responses[str(code)] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[code]}"}
    return responses


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, description: str, example: str) -> dict[str, Any]:
    schema = _string(minLength=1)
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
        "example": example,
    }


def _body(schema: Schema, *, required: bool = True, yaml: bool = False) -> dict[str, Any]:
    content = _json_content(schema)
    if yaml:
        content["application/yaml"] = {"schema": schema}
    return {"required": required, "content": content}


SECURED = (401, 500, 503)
"""Every route behind a key can answer these (503: the store failed or the engine is overloaded)."""
WITH_BODY = (400, 413, 422)
ADMIN = (403,)
DECIDES = (409,)
"""Decisions and resolutions can conflict with what already happened."""
EDITS = (422,)
SCOPE_QUERY = {
    **_query("scope", "A scope path: only budgets in its subtree (default: all, `/`).", type="string"),
    "example": "sales",
}

RESERVATION = _path("reservation", "The reservation id an allowed decision returned.", "res_0123456789abcdef0000000001")
SCOPE_PATH = _path("path", "A scope path; may contain `/`.", "sales/renewals")
AGENT_NAME = _path("name", "An agent name.", "bot-7")
BUDGET_ID = _path("budget", "A budget id; may contain `/`.", "sales/renewals:accounts:day")
KEY_ID = _path("key", "A key id (the 16 hex digits after `rk_`).", "0123456789abcdef")


def _op(
    summary: str,
    tag: str,
    ok: tuple[int, str, Schema],
    errors: tuple[int, ...],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    is_public: bool = False,
    operation_id: str,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "operationId": operation_id}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = _responses(ok, errors if is_public else (*SECURED, *errors))
    if is_public:
        operation["security"] = []
    return operation


def _decision_paths() -> dict[str, Any]:
    resolve_errors = (*WITH_BODY, 404, *DECIDES)
    return {
        "/v1/authorize": {
            "post": _op(
                "Decide an action; an allowed one holds its amounts.",
                "decisions",
                (
                    200,
                    "The decision — allow, deny, escalate, pause or degrade — with every budget consulted.",
                    _ref("Decision"),
                ),
                (*WITH_BODY, 403, *DECIDES),
                body=_body(_ref("AuthorizeRequest")),
                operation_id="authorize",
            )
        },
        "/v1/usage": {
            "post": _op(
                "Count usage that was never held (post-hoc).",
                "decisions",
                (200, "Counted on every selected budget; `overrun` is what went past a limit.", _ref("UsageResult")),
                (*WITH_BODY, 403, *DECIDES),
                body=_body(_ref("UsageRequest")),
                operation_id="usage",
            )
        },
        "/v1/reservations/{reservation}/commit": {
            "post": _op(
                "Post the actual amounts of a hold; the rest is released.",
                "decisions",
                (200, "Committed (late if the hold had expired).", _ref("CommitResult")),
                resolve_errors,
                parameters=[RESERVATION],
                body=_body(_ref("CommitRequest"), required=False),
                operation_id="commit",
            )
        },
        "/v1/reservations/{reservation}/release": {
            "post": _op(
                "Release a hold without using it.",
                "decisions",
                (200, "Released.", _ref("ReleaseResult")),
                resolve_errors,
                parameters=[RESERVATION],
                body=_body(_ref("ReleaseRequest"), required=False),
                operation_id="release",
            )
        },
        "/v1/reservations/{reservation}/extend": {
            "post": _op(
                "Push a hold's lease deadline (a heartbeat for long actions).",
                "decisions",
                (200, "The new deadline.", _ref("ExtendResult")),
                resolve_errors,
                parameters=[RESERVATION],
                body=_body(_ref("ExtendRequest"), required=False),
                operation_id="extend",
            )
        },
    }


def _read_paths() -> dict[str, Any]:
    ledger_parameters = [
        SCOPE_QUERY,
        _query("agent", "Only this agent's entries.", type="string"),
        _query("action", "Only entries of this action.", type="string"),
        _query("kind", f"Only entries of this kind ({', '.join(ENTRY_KINDS)}).", type="string"),
        _query(
            "since", "Entries at or after this RFC 3339 time (a zone is required).", type="string", format="date-time"
        ),
        _query("until", "Entries before this RFC 3339 time.", type="string", format="date-time"),
        _query("cursor", "`next_cursor` of the previous page.", type="string", pattern="^[0-9]{1,19}$"),
        _query(
            "limit",
            f"Page size, 1 to {LEDGER_PAGE_SIZE_MAX}; default 100.",
            type="integer",
            minimum=1,
            maximum=LEDGER_PAGE_SIZE_MAX,
        ),
        _query("order", "`desc` (newest first, the default) or `asc`.", type="string", enum=["asc", "desc"]),
    ]
    return {
        "/v1/headroom": {
            "get": _op(
                "Every budget in a subtree: its window now, burn rate and projected exhaustion.",
                "reads",
                (200, "One row per budget (an agent key sees the budgets over its own scope).", _ref("Headroom")),
                (404, 422),
                parameters=[SCOPE_QUERY],
                operation_id="headroom",
            )
        },
        "/v1/ledger": {
            "get": _op(
                "One page of ledger entries (an agent key sees its own).",
                "reads",
                (200, "Entries and the cursor of the next page.", _ref("LedgerPage")),
                (404, 422),
                parameters=ledger_parameters,
                operation_id="ledger",
            )
        },
        "/v1/whoami": {
            "get": _op(
                "The key's tenant, id, role and agent.",
                "reads",
                (200, "Who the key is.", _ref("Whoami")),
                (),
                operation_id="whoami",
            )
        },
        "/v1/check": {
            "get": _op(
                "Rebuild every counter from the ledger and compare.",
                "reads",
                (200, "`is_consistent` is true when every counter equals its rebuild.", _ref("CheckReport")),
                ADMIN,
                operation_id="check",
            )
        },
    }


APPLIED = (200, "What changed (nothing, the second time).", _ref("ConfigApplyResult"))


def _item_paths(
    noun: str,
    parameter: dict[str, Any],
    body: dict[str, Any],
    *,
    get_errors: tuple[int, ...],
    put_errors: tuple[int, ...] = (),
    note: str = "",
) -> dict[str, Any]:
    """GET, PUT (create or replace) and DELETE of one scope, agent or budget: every write edits the config."""
    writes = (*ADMIN, *EDITS)
    shown = (200, f"The {noun}.", _ref(noun.capitalize()))
    common: dict[str, Any] = {"parameters": [parameter]}
    return {
        "get": _op(f"One {noun}.{note}", "config", shown, get_errors, operation_id=f"get_{noun}", **common),
        "put": _op(
            f"Create or replace this {noun}.",
            "config",
            APPLIED,
            (*WITH_BODY, *writes, *put_errors),
            body=body,
            operation_id=f"put_{noun}",
            **common,
        ),
        "delete": _op(
            f"Remove this {noun}.", "config", APPLIED, (*writes, 404), operation_id=f"delete_{noun}", **common
        ),
    }


def _list_path(noun: str, description: str, errors: tuple[int, ...] = ADMIN, **options: Any) -> dict[str, Any]:
    plural = f"{noun}s"
    shown = _answer({plural: _array(_ref(noun.capitalize()))})
    summary = f"Every {noun}."
    return {"get": _op(summary, "config", (200, description, shown), errors, operation_id=f"list_{plural}", **options)}


def _config_paths() -> dict[str, Any]:
    return {
        "/v1/config": {
            "get": _op(
                "The config in force and its version.",
                "config",
                (200, "The stored document, defaults filled in.", _ref("Config")),
                ADMIN,
                operation_id="get_config",
            ),
            "put": _op(
                "Apply a whole config (JSON or YAML); `?dry_run=true` only plans it.",
                "config",
                APPLIED,
                (*WITH_BODY, *ADMIN),
                parameters=[_query("dry_run", "`true` to plan without applying.", type="boolean")],
                body=_body(_ref("ConfigDocument"), yaml=True),
                operation_id="put_config",
            ),
        },
        "/v1/scopes": _list_path("scope", "Scopes by path, with their budgets."),
        "/v1/scopes/{path}": _item_paths(
            "scope",
            SCOPE_PATH,
            _body(_ref("ScopeDocument"), required=False),
            get_errors=(*ADMIN, 404),
        ),
        "/v1/agents": _list_path("agent", "Agents by name."),
        "/v1/agents/{name}": _item_paths(
            "agent",
            AGENT_NAME,
            _body(_ref("AgentDocument")),
            get_errors=(404,),
            note=" An agent key may read its own agent; any other is not found.",
        ),
        "/v1/budgets": _list_path(
            "budget", "Budgets with their ids (in a subtree with `?scope=`).", (*ADMIN, 422), parameters=[SCOPE_QUERY]
        ),
        "/v1/budgets/{budget}": _item_paths(
            "budget",
            BUDGET_ID,
            _body(_ref("BudgetPut")),
            get_errors=(*ADMIN, 404),
            put_errors=(404,),  # the scope it names does not exist
            note=" Its id keeps its usage when it is replaced.",
        ),
    }


def _key_paths() -> dict[str, Any]:
    return {
        "/v1/keys": {
            "get": _op(
                "Every key of the tenant (never a secret).",
                "keys",
                (200, "Keys.", _answer({"keys": _array(_ref("Key"))})),
                ADMIN,
                operation_id="list_keys",
            ),
            "post": _op(
                "Create a key; the answer is the only time its secret is shown.",
                "keys",
                (201, "The new key.", _ref("NewKey")),
                (*WITH_BODY, *ADMIN),
                body=_body(_ref("KeyCreateRequest"), required=False),
                operation_id="create_key",
            ),
        },
        "/v1/keys/{key}": {
            "delete": _op(
                "Revoke a key (refused for the tenant's last admin key).",
                "keys",
                (200, "The revoked key.", _ref("Key")),
                (*ADMIN, 404, 409),
                parameters=[KEY_ID],
                operation_id="revoke_key",
            ),
        },
        "/v1/keys/{key}/rotate": {
            "post": _op(
                "A new secret for the same key id; the old one stops working.",
                "keys",
                (200, "The key with its new secret.", _ref("NewKey")),
                (*ADMIN, 404),
                parameters=[KEY_ID],
                operation_id="rotate_key",
            ),
        },
    }


def _operations_paths() -> dict[str, Any]:
    status = {"type": "string"}
    return {
        "/healthz": {
            "get": _op(
                "The process is up.",
                "operations",
                (200, "Up.", _answer({"status": {**status, "const": "ok"}})),
                (),
                is_public=True,
                operation_id="healthz",
            )
        },
        "/readyz": {
            "get": _op(
                "The store is reachable.",
                "operations",
                (200, "Ready.", _answer({"status": {**status, "const": "ready"}})),
                (503,),
                is_public=True,
                operation_id="readyz",
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "tags": ["operations"],
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": status}}},
                    "500": {"$ref": f"#/components/responses/{ERROR_RESPONSES[500]}"},
                    "503": {"$ref": f"#/components/responses/{ERROR_RESPONSES[503]}"},
                },
            }
        },
        "/openapi.json": {
            "get": _op(
                "This document.",
                "operations",
                (200, "OpenAPI 3.1.", {"type": "object"}),
                (),
                is_public=True,
                operation_id="openapi",
            )
        },
    }


def build() -> dict[str, Any]:
    """The whole document; pure (no I/O), so tests and the generator get the same dict."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Remit",
            "version": API_VERSION,
            "summary": "Budgets, reservations and a ledger that bound what AI agents may do.",
            "description": "Amounts are decimal strings in the meter's unit; times are RFC 3339 UTC. Every error "
            'answers `{"error": {"code", "message", "details"}}`. See docs/api.md.',
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:8080", "description": "`remit serve` (default address)"}],
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("decisions", "reads", "config", "keys", "operations")],
        "paths": {
            **_operations_paths(),
            **_decision_paths(),
            **_read_paths(),
            **_config_paths(),
            **_key_paths(),
        },
        "components": components(),
    }


def render() -> str:
    """The committed file's text: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
