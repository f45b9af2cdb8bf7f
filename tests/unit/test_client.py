"""The SDK's pure parts: the requests its methods build and the errors an error answer becomes.

How: a `Calls` subclass whose `_call` returns the `Call` itself shows each method's method, path,
query and body without any I/O; `error_from_response` is fed the bodies the API answers with.
The behaviour against a real server and store is in tests/e2e/test_sdk.py and
tests/contract/test_client_local.py.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from typing import Any

import pytest

import remit
from remit.client import Call, Calls, error_from_response, merge_amounts
from remit.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    InvalidRequest,
    InvariantViolation,
    NotFound,
    Overloaded,
    RemitError,
    Unauthorized,
    Unavailable,
)


class Recorder(Calls[Call, dict[str, Any]]):
    def __init__(self, agent: str | None = None) -> None:
        self.agent = agent

    def _call(self, call: Call) -> Call:
        return call

    def _new_action(self, request: dict[str, Any]) -> dict[str, Any]:
        return request


def test_authorize_body_holds_only_what_was_given() -> None:
    call = Recorder().authorize("crm.discount.apply", usd="120.00", touches={"accounts": ("acct:42",)})
    assert (call.method, call.path) == ("POST", "/v1/authorize")
    assert call.body == {
        "action": "crm.discount.apply",
        "amounts": {"usd": "120.00"},
        "touches": {"accounts": ["acct:42"]},
    }


def test_authorize_uses_the_default_agent_unless_one_is_named() -> None:
    recorder = Recorder(agent="bot-7")
    assert recorder.authorize("a", usd="1").body["agent"] == "bot-7"
    assert recorder.authorize("a", usd="1", agent="bot-8").body["agent"] == "bot-8"
    full = recorder.authorize(
        "a", amounts={"task": "2"}, task="t-1", context={"confidence": 0.8}, priority="interactive", lease_seconds=5
    )
    assert full.body == {
        "action": "a",
        "amounts": {"task": "2"},
        "agent": "bot-7",
        "task": "t-1",
        "context": {"confidence": 0.8},
        "priority": "interactive",
        "lease_seconds": 5,
    }


def test_amounts_merge_keywords_and_keep_decimals_exact() -> None:
    assert merge_amounts({"usd": decimal.Decimal("1E+2")}, {"tokens": 5}) == {"usd": "100", "tokens": 5}
    with pytest.raises(InvalidRequest) as raised:
        merge_amounts({"usd": "1"}, {"usd": "2"})
    assert raised.value.code == "invalid_field"


def test_a_lone_string_touch_is_not_split_into_characters() -> None:
    assert Recorder().authorize("a", touches={"accounts": "acct:42"}).body["touches"] == {"accounts": "acct:42"}


def test_reservation_paths_and_bodies() -> None:
    recorder = Recorder()
    commit = recorder.commit("res_1", {"usd": "9.50"}, idempotency_key="k")
    assert (commit.path, commit.target, commit.body) == (
        "/v1/reservations/res_1/commit",
        "res_1",
        {"outcome": "success", "amounts": {"usd": "9.50"}, "idempotency_key": "k"},
    )
    assert recorder.commit("res_1").body == {"outcome": "success"}
    assert recorder.release("res_1").body == {}
    assert recorder.extend("res_1", 30).body == {"lease_seconds": 30}
    assert recorder.extend("a/b").path == "/v1/reservations/a%2Fb/extend"


def test_query_parameters_are_strings_and_omitted_when_none() -> None:
    since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    call = Recorder().ledger(agent="bot-7", since=since, limit=5, order="asc")
    assert call.params == {"agent": "bot-7", "since": "2026-01-01T00:00:00+00:00", "limit": "5", "order": "asc"}
    assert Recorder().headroom().params == {}
    assert Recorder().put_config("meters: {}", dry_run=True).params == {"dry_run": "true"}
    assert Recorder().put_config({"meters": {}}).body == {"meters": {}}


def test_config_part_paths() -> None:
    recorder = Recorder()
    assert recorder.get_scope("sales/renewals/agent:bot-7").path == "/v1/scopes/sales/renewals/agent:bot-7"
    assert recorder.get_budget("sales/renewals:usd:hour:crm.*").path == (
        "/v1/budgets/sales%2Frenewals%3Ausd%3Ahour%3Acrm.%2A"
    )
    assert recorder.create_key("agent", agent="bot-7").body == {"role": "agent", "agent": "bot-7"}
    assert (recorder.revoke_key("abc").method, recorder.revoke_key("abc").path) == ("DELETE", "/v1/keys/abc")


def _error(code: str, details: object = None) -> dict[str, object]:
    return {"error": {"code": code, "message": f"the {code} message", "details": details}}


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "invalid_json", InvalidRequest),
        (422, "unknown_meter", InvalidRequest),
        (413, "body_too_large", InvalidRequest),
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (409, "already_committed", Conflict),
        (409, "last_admin_key", Conflict),
        (503, "overloaded", Overloaded),
        (503, "unavailable", Unavailable),
        (500, "invariant_violation", InvariantViolation),
        (500, "internal", RemitError),
    ],
)
def test_error_bodies_become_their_class_with_the_code_kept(status: int, code: str, kind: type[RemitError]) -> None:
    error = error_from_response(status, _error(code), where="POST /x")
    assert type(error) is kind
    assert error.code == code
    assert error.message == f"the {code} message"


def test_invalid_request_keeps_its_field_and_details() -> None:
    error = error_from_response(422, _error("invalid_field", {"field": "agent"}), where="POST /x")
    assert isinstance(error, InvalidRequest)
    assert error.field == "agent"
    assert error.details == {"field": "agent"}


def test_invalid_config_is_a_config_error_with_its_problems() -> None:
    problems = [{"path": "meters.usd.kind", "message": "bad"}]
    error = error_from_response(422, _error("invalid_config", {"errors": problems}), where="PUT /v1/config")
    assert isinstance(error, ConfigError)
    assert error.errors == problems


def test_a_body_that_is_not_a_remit_error() -> None:
    gateway = error_from_response(502, None, where="GET /x", text="<html>bad gateway</html>")
    assert isinstance(gateway, Unavailable)
    assert "bad gateway" in gateway.message
    teapot = error_from_response(418, {"detail": "no"}, where="GET /x")
    assert type(teapot) is RemitError
    assert teapot.code == "unexpected_response"


def test_denied_carries_the_decision() -> None:
    decision = {
        "decision": "deny",
        "reservation": None,
        "budgets": [],
        "reasons": [{"code": "budget_exhausted", "budget": "b", "message": "b: 10.00 of 250.00 left"}],
        "retry_after_seconds": 30,
    }
    denied = remit.Denied(decision, action="crm.discount.apply")
    assert denied.code == "denied"
    assert denied.outcome == "deny"
    assert denied.reasons == decision["reasons"]
    assert denied.retry_after_seconds == 30
    assert denied.decision == decision
    assert str(denied) == "crm.discount.apply: deny: b: 10.00 of 250.00 left (retry after 30s)"


def test_action_builds_the_authorize_request_once() -> None:
    request = Recorder().action("crm.discount.apply", usd=decimal.Decimal("120.00"), lease_seconds=5)
    key = request.pop("idempotency_key")
    assert re.fullmatch(r"act-[0-9a-f]{32}", key), "every action is keyed, so its authorize can be retried"
    assert Recorder().action("crm.discount.apply", usd="1")["idempotency_key"] != key
    assert Recorder().action("x", idempotency_key="mine")["idempotency_key"] == "mine"
    assert request == {
        "action": "crm.discount.apply",
        "amounts": {"usd": "120.00"},
        "touches": None,
        "agent": None,
        "task": None,
        "context": None,
        "priority": None,
        "lease_seconds": 5,
    }
    assert Recorder().authorize(**request).body == {
        "action": "crm.discount.apply",
        "amounts": {"usd": "120.00"},
        "lease_seconds": 5,
    }
