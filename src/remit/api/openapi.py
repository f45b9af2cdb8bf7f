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

from remit.api.openapi_schemas import (
    API_VERSION,
    ENTRY_KINDS,
    ERROR_RESPONSES,
    OPENAPI_VERSION,
    Schema,
    _answer,
    _array,
    _json_content,
    _ref,
    _string,
    components,
)
from remit.limits import LEDGER_PAGE_SIZE_MAX


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


SECURED = (401, 429, 500, 503)
"""Every route behind a key can answer these (429: the API's own rate limit per key; 503: the store
failed or the engine is overloaded)."""
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
