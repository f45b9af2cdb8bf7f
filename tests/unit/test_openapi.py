"""The OpenAPI document is complete, valid, committed as built, and every route is in docs/api.md.

How: the committed src/remit/api/openapi.json is compared byte for byte with what
`python -m remit.api.openapi` prints; the (path, method) pairs of `remit.api.app.routes` are
compared both ways with the document's operations and with the routes docs/api.md names (as
`METHOD /path` or `GET|PUT|DELETE /path`); the document is checked against the OpenAPI 3.1
meta-schema and its own references; and the config schemas are checked field by field against
the pydantic models the server validates a config with. What each answer looks like on the wire
is proven against a running app in tests/e2e/test_schemathesis.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import jsonschema_rs
import pydantic
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31

from remit import config as config_models
from remit.api import openapi, openapi_schemas
from remit.api.app import Api, routes

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / "remit" / "api" / "openapi.json"
API_DOCS = ROOT / "docs" / "api.md"
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json"}
METHODS = ("get", "put", "post", "delete", "patch")
DOCUMENT = openapi.build()


def server_routes() -> set[tuple[str, str]]:
    """(path, METHOD) of every route the app serves; HEAD is Starlette's automatic twin of GET."""
    api = cast(Any, Api)(None, None, None)  # routes() only takes the bound handlers
    found = set()
    for route in routes(api):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        found |= {(path, method) for method in route.methods or () if method != "HEAD"}
    return found


def document_routes() -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item if method in METHODS}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_the_committed_file_is_the_built_document() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == openapi.render(), (
        "src/remit/api/openapi.json is stale: run `python -m remit.api.openapi > src/remit/api/openapi.json`"
    )


def test_every_route_is_in_the_document_and_nothing_else() -> None:
    assert server_routes() == document_routes()


def test_every_route_is_in_docs_api_md_and_nothing_else() -> None:
    text = API_DOCS.read_text(encoding="utf-8")
    documented = set()
    for methods, path in re.findall(r"((?:GET|PUT|POST|DELETE)(?:\|(?:GET|PUT|POST|DELETE))*) (/[^\s`?]*)", text):
        documented |= {(path, method) for method in methods.split("|")}
    assert server_routes() - documented == set(), "routes missing from docs/api.md"
    assert documented - server_routes() == set(), "docs/api.md names routes the server does not have"


def test_the_document_is_valid_openapi_3_1() -> None:
    errors = [str(error) for error in jsonschema_rs.validator_for(OPENAPI_31).iter_errors(DOCUMENT)]
    assert errors == []


def test_every_reference_resolves() -> None:
    text = openapi.render()
    for kind, name in set(re.findall(r'"#/components/(\w+)/(\w+)"', text)):
        assert name in DOCUMENT["components"][kind], f"#/components/{kind}/{name}"


@pytest.mark.parametrize(("path", "method", "operation"), operations(), ids=lambda value: str(value)[:40])
def test_each_operation_declares_its_parameters_auth_and_errors(
    path: str, method: str, operation: dict[str, Any]
) -> None:
    templated = set(re.findall(r"\{(\w+)\}", path))
    declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
    assert templated == declared
    responses = operation["responses"]
    assert any(status.startswith("2") for status in responses)
    errors = {status: response for status, response in responses.items() if int(status) >= 400}
    for response in errors.values():
        assert response["$ref"].startswith("#/components/responses/")
    if path in PUBLIC:
        assert operation["security"] == []
        assert "401" not in errors
    else:
        assert "security" not in operation  # the document-wide bearer requirement applies
        assert {"401", "500", "503"} <= errors.keys()
    if "requestBody" in operation:
        assert {"400", "413", "422"} <= errors.keys()


def test_every_error_response_answers_the_one_error_schema() -> None:
    for response in DOCUMENT["components"]["responses"].values():
        assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def test_request_bodies_the_server_checks_strictly_refuse_unknown_fields() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    for name in ("AuthorizeRequest", "UsageRequest", "CommitRequest", "ReleaseRequest", "ExtendRequest"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["KeyCreateRequest"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("schema_name", "model"),
    [
        ("ConfigDocument", config_models.ConfigDoc),
        ("TenantDocument", config_models.TenantDoc),
        ("MeterDocument", config_models.MeterDoc),
        ("ScopeDocument", config_models.ScopeDoc),
        ("AgentDocument", config_models.AgentDoc),
        ("BudgetDocument", config_models.BudgetDoc),
    ],
)
def test_config_schemas_name_the_fields_the_server_accepts(schema_name: str, model: type[pydantic.BaseModel]) -> None:
    schema = DOCUMENT["components"]["schemas"][schema_name]
    assert set(schema["properties"]) == set(model.model_fields)
    required = {name for name, info in model.model_fields.items() if info.is_required()}
    assert set(schema.get("required", [])) == required
    assert schema["additionalProperties"] is False  # the models forbid extra fields


def test_amounts_are_decimal_strings_and_times_are_date_times() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    for name in ("limit", "used", "held", "requested", "remaining"):
        assert schemas["BudgetReport"]["properties"][name]["pattern"] == openapi_schemas.AMOUNT_PATTERN
    assert schemas["BudgetReport"]["properties"]["resets_at"]["type"] == ["string", "null"]
    assert schemas["BudgetReport"]["properties"]["resets_at"]["format"] == "date-time"
    for good in ("0", "120.00", "-12.50"):
        assert re.fullmatch(openapi_schemas.AMOUNT_PATTERN, good)
    for bad in ("", "1.", ".5", "1e3", "12,00"):
        assert not re.fullmatch(openapi_schemas.AMOUNT_PATTERN, bad)
