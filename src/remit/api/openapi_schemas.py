"""The schemas (components) of the OpenAPI document: every request and answer body, and errors.

`remit.api.openapi` builds the paths on top of these and renders the whole document.
"""

from __future__ import annotations

from typing import Any

from remit.changes import KINDS
from remit.domain.decisions import Outcome, Priority, ReasonCode
from remit.domain.ledger import EntryKind
from remit.limits import (
    AMOUNT_TEXT_LENGTH_MAX,
    CONTEXT_BYTES_MAX,
    CONTEXT_DEPTH_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LEASE_SECONDS_DEFAULT,
    LEASE_SECONDS_MAX,
    LEASE_SECONDS_MIN,
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
    429: "Over the API's own rate limit for this key (`rate_limited`); retry after `Retry-After` seconds. "
    "Budgets never answer 429: a budget that refuses is a 200 `deny`.",
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
                "description": f"Free-form JSON recorded with the hold (at most {CONTEXT_BYTES_MAX} bytes, "
                f"nesting at most {CONTEXT_DEPTH_MAX} levels of objects and lists).",
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
                "revoked_keys": {
                    **_array(_string()),
                    "description": "Present when the apply removed agents: the ids of their keys, revoked with them.",
                },
            },
            optional=("revoked_keys",),
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
    429: "TooManyRequests",
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
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}}
        responses[name] = response
    return responses


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
