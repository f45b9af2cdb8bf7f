"""The HTTP API as a new user meets it: a real `remit serve` process, raw HTTP, both stores.

Proves the path of DESIGN.md §4 end to end — authorize with the agent key the server printed,
commit, watch headroom drop by exactly the committed amount, exhaust a budget and be denied
with the budget named and a retry time; release, extend, post-hoc usage, idempotent retries.
Proves every kind of bad input gets its documented status, error code and `details.field`, and
leaves headroom, the ledger and the ledger check exactly as they were. Proves ledger filters and
cursor pages, config apply / dry-run diff / validation, CRUD of scopes, agents, budgets and
keys, and the operational endpoints. One server per store serves the whole module: each test
works in its own scope with its own agents, and tests that replace the config put it back.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import yaml

from remit.api.app import Api, routes
from remit.keys import parse_key

from .servers import EXAMPLE_CONFIG, client, error_of

# The example config plus one scope and its agents per test, so tests do not share a budget.
EXTRA_METERS = {"calls": {"kind": "sum"}}
EXTRA_SCOPES: dict[str, Any] = {
    "idem": {"owner": "qa@example.com", "budgets": [{"meter": "usd", "limit": "1000", "window": "month"}]},
    "bad": {"owner": "qa@example.com", "budgets": [{"meter": "usd", "limit": "1000", "window": "month"}]},
    "ledger": {"owner": "qa@example.com", "budgets": [{"meter": "calls", "limit": "1000000", "window": "month"}]},
    "cfg": {"owner": "qa@example.com", "budgets": [{"meter": "usd", "limit": "50", "window": "month"}]},
    "keep": {"owner": "qa@example.com", "budgets": [{"meter": "usd", "limit": "50", "window": "month"}]},
    "keys": {"owner": "qa@example.com"},
}
EXTRA_AGENTS = {
    "idem-bot": {"scope": "idem"},
    "bad-bot": {"scope": "bad"},
    "ledger-a": {"scope": "ledger"},
    "ledger-b": {"scope": "ledger"},
    "cfg-bot": {"scope": "cfg"},
    "cfg-gone": {"scope": "cfg"},
    "keep-bot": {"scope": "keep"},
    "key-bot": {"scope": "keys"},
}
KEYED_AGENTS = ("idem-bot", "bad-bot", "ledger-a", "ledger-b", "cfg-bot", "keep-bot")


def base_config() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    document["meters"].update(copy.deepcopy(EXTRA_METERS))
    document["scopes"].update(copy.deepcopy(EXTRA_SCOPES))
    document["agents"].update(copy.deepcopy(EXTRA_AGENTS))
    return document


@dataclass
class Deployment:
    url: str
    admin_key: str
    admin: httpx.Client
    anonymous: httpx.Client
    agents: dict[str, httpx.Client]
    """A client per agent, authenticated with that agent's key."""
    agent_key_text: dict[str, str] = field(default_factory=dict)

    def agent(self, name: str) -> httpx.Client:
        return self.agents[name]

    def client(self, key: str | None = None) -> httpx.Client:
        return client(self.url, key)


@pytest.fixture(scope="module")
def deployment(module_server: Any) -> Iterator[Deployment]:
    """The module's server (started as a new user starts it: the example config), then our config and keys."""
    assert set(module_server.agent_keys) == {"bot-7", "bot-8", "helper-1"}
    url, admin_key = module_server.url, module_server.admin_key
    clients = [client(url, admin_key), client(url)]
    try:
        admin = clients[0]
        ok(admin.put("/v1/config", json=base_config()))
        key_text = dict(module_server.agent_keys)
        for name in KEYED_AGENTS:
            key_text[name] = ok(admin.post("/v1/keys", json={"agent": name}), 201)["key"]
        agents = {name: client(url, key) for name, key in key_text.items()}
        clients += agents.values()
        yield Deployment(url, admin_key, admin, clients[1], agents, key_text)
    finally:
        for opened in clients:
            opened.close()


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    body: dict[str, Any] = response.json()
    return body


def headroom(client: httpx.Client, scope: str | None = None) -> dict[str, dict[str, Any]]:
    params = {"scope": scope} if scope else {}
    return {row["budget"]: row for row in ok(client.get("/v1/headroom", params=params))["budgets"]}


def balances(client: httpx.Client) -> dict[str, tuple[str, str, str, str]]:
    """(limit, used, held, remaining) of every budget of the tenant — what time alone cannot change."""
    return {b: (r["limit"], r["used"], r["held"], r["remaining"]) for b, r in headroom(client).items()}


def whole_ledger(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    """Every entry matching `params`, oldest first, following cursors."""
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = ok(client.get("/v1/ledger", params={**params, "order": "asc", "limit": "1000", **cursor_of(cursor)}))
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            return entries


def cursor_of(cursor: str | None) -> dict[str, str]:
    return {} if cursor is None else {"cursor": cursor}


def state(admin: httpx.Client) -> tuple[Any, ...]:
    """Balances, ledger and the ledger check: equal before and after a request that changed nothing."""
    check = ok(admin.get("/v1/check"))
    assert check["is_consistent"], check["mismatches"]
    return balances(admin), whole_ledger(admin), check["entries"], check["counters"]


def authorize(client: httpx.Client, **body: Any) -> dict[str, Any]:
    return ok(client.post("/v1/authorize", json=body))


def allowed(client: httpx.Client, **body: Any) -> str:
    decision = authorize(client, **body)
    assert decision["decision"] == "allow", decision
    assert decision["reasons"] == [] and decision["retry_after_seconds"] is None, decision
    reservation: str = decision["reservation"]
    assert reservation.startswith("res_"), decision
    return reservation


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# == the new-user path =============================================================================
CURL_AUTHORIZE = (
    b'{"action": "crm.discount.apply", "amounts": {"usd": "120.00"}, "touches": {"accounts": ["acct:42"]},'
    b' "context": {"confidence": 0.8}, "priority": "interactive", "lease_seconds": 60, "idempotency_key": "k-1"}'
)
BOT7_DAY = "sales/renewals/agent:bot-7:usd:day"
SALES_MONTH = "sales:usd:month"


def test_new_user_authorizes_commits_and_exhausts_a_budget(deployment: Deployment) -> None:
    admin, bot7 = deployment.admin, deployment.agent("bot-7")
    assert ok(bot7.get("/v1/whoami")) == {
        "tenant": "default",
        "key": deployment.agent_key_text["bot-7"][3:19],
        "role": "agent",
        "agent": "bot-7",
    }
    before = headroom(admin, "sales")
    assert before[BOT7_DAY]["limit"] == "250.00" and before[BOT7_DAY]["used"] == "0.00"

    # Exactly what `curl -H 'Authorization: Bearer …' -d '{…}' …/v1/authorize` sends.
    answer = bot7.post("/v1/authorize", content=CURL_AUTHORIZE, headers={"content-type": "application/json"})
    decision = ok(answer)
    assert answer.headers["content-type"] == "application/json"
    assert decision["decision"] == "allow" and decision["reasons"] == [], decision
    reservation = decision["reservation"]
    assert parse_time(decision["lease_expires_at"]) > dt.datetime.now(dt.UTC)
    held = {row["budget"]: row for row in decision["budgets"]}
    assert held[BOT7_DAY]["requested"] == "120.00" and held[BOT7_DAY]["held"] == "120.00"
    assert held["sales/renewals:accounts:day"]["requested"] == "1"
    during = headroom(admin, "sales")
    assert during[BOT7_DAY]["held"] == "120.00" and during[BOT7_DAY]["remaining"] == "130.00"

    committed = ok(bot7.post(f"/v1/reservations/{reservation}/commit", json={"amounts": {"usd": "100.00"}}))
    assert committed == {
        "reservation": reservation,
        "status": "committed",
        "committed": {"usd": "100.00", "accounts": "1"},
        "released": {"usd": "20.00"},
        "overrun": {},
        "is_late": False,
    }
    after = headroom(admin, "sales")
    for budget in (BOT7_DAY, SALES_MONTH):  # headroom drops by the committed amount, not the held one
        assert money(after[budget]["used"]) == money(before[budget]["used"]) + 100_00, budget
        assert money(after[budget]["remaining"]) == money(before[budget]["remaining"]) - 100_00, budget
        assert after[budget]["held"] == before[budget]["held"], budget
    assert after["sales/renewals:accounts:day"]["used"] == "1"

    # The last 150.00 of bot-7's day fits exactly; one cent more does not.
    last = allowed(bot7, action="crm.discount.apply", amounts={"usd": "150.00"})
    ok(bot7.post(f"/v1/reservations/{last}/commit", json={}))
    assert headroom(admin, "sales")[BOT7_DAY]["remaining"] == "0.00"
    denied = authorize(bot7, action="crm.discount.apply", amounts={"usd": "0.01"})
    assert denied["decision"] == "deny" and denied["reservation"] is None, denied
    assert [reason["budget"] for reason in denied["reasons"]] == [BOT7_DAY], denied
    assert denied["reasons"][0]["code"] == "budget_exhausted" and denied["reasons"][0]["message"]
    exhausted = {row["budget"]: row for row in denied["budgets"]}[BOT7_DAY]
    assert exhausted["used"] == "250.00" and exhausted["remaining"] == "0.00"
    # Retrying is pointless until the day resets: retry_after_seconds points there, not sooner.
    retry = denied["retry_after_seconds"]
    assert isinstance(retry, int) and retry > 0, denied
    until_reset = (parse_time(exhausted["resets_at"]) - dt.datetime.now(dt.UTC)).total_seconds()
    assert until_reset - 5 <= retry <= until_reset + 5, (retry, until_reset)
    assert headroom(admin, "sales")[BOT7_DAY]["used"] == "250.00"  # the denial held nothing


def money(text: str) -> int:
    """A 2-place decimal string as cents, so arithmetic on it is exact."""
    units, _, cents = text.partition(".")
    return int(units) * 100 + int(cents or 0)


def test_release_extend_and_post_hoc_usage(deployment: Deployment) -> None:
    admin, bot8 = deployment.admin, deployment.agent("bot-8")
    budget = SALES_MONTH  # not the hourly crm.* budget: an hour boundary mid-test would reset it
    before = headroom(admin, "sales")[budget]

    released_id = allowed(bot8, action="crm.note", amounts={"usd": "10.00"})
    assert headroom(admin, "sales")[budget]["held"] == add(before["held"], 1000)
    released = ok(bot8.post(f"/v1/reservations/{released_id}/release"))
    assert released == {"reservation": released_id, "status": "released", "released": {"usd": "10.00"}}
    assert headroom(admin, "sales")[budget]["held"] == before["held"]
    again = bot8.post(f"/v1/reservations/{released_id}/release")
    assert (again.status_code, error_of(again)["code"]) == (409, "already_released")
    late = bot8.post(f"/v1/reservations/{released_id}/commit", json={})
    assert (late.status_code, error_of(late)["code"]) == (409, "already_released")

    decision = authorize(bot8, action="crm.note", amounts={"usd": "1.00"}, lease_seconds=30)
    extended = ok(bot8.post(f"/v1/reservations/{decision['reservation']}/extend", json={"lease_seconds": 600}))
    assert extended["reservation"] == decision["reservation"] and extended["status"] == "held"
    gained = parse_time(extended["lease_expires_at"]) - parse_time(decision["lease_expires_at"])
    assert dt.timedelta(seconds=560) <= gained <= dt.timedelta(seconds=600), gained
    ok(bot8.post(f"/v1/reservations/{decision['reservation']}/release"))

    # Post-hoc usage is counted at once, never held, and recorded as usage in the ledger.
    usage = ok(bot8.post("/v1/usage", json={"action": "crm.note", "amounts": {"usd": "5.00"}}))
    assert usage["status"] == "counted" and usage["overrun"] == {}
    counted = {row["budget"]: row for row in usage["budgets"]}[budget]
    assert counted["requested"] == "5.00" and counted["used"] == add(before["used"], 500)
    now = headroom(admin, "sales")[budget]
    assert (now["used"], now["held"]) == (add(before["used"], 500), before["held"])
    newest = ok(admin.get("/v1/ledger", params={"agent": "bot-8", "limit": "1"}))["entries"][0]
    assert (newest["kind"], newest["action"], newest["reservation"]) == ("usage", "crm.note", None)


def add(amount: str, cents: int) -> str:
    total = money(amount) + cents
    return f"{total // 100}.{total % 100:02d}"


# == idempotency ===================================================================================
def test_idempotent_retries_act_once(deployment: Deployment) -> None:
    admin, bot = deployment.admin, deployment.agent("idem-bot")
    budget = "idem:usd:month"
    body = {"action": "pay.invoice", "amounts": {"usd": "40.00"}, "idempotency_key": "idem-authorize-1"}
    first = bot.post("/v1/authorize", json=body)
    second = bot.post("/v1/authorize", json=body)
    assert ok(first) == ok(second)  # the same answer, reservation and lease included
    assert first.json()["decision"] == "allow"
    reservation = first.json()["reservation"]
    assert headroom(admin, "idem")[budget]["held"] == "40.00"  # held once
    holds = [e for e in whole_ledger(admin, agent="idem-bot") if e["kind"] == "hold"]
    assert [e["reservation"] for e in holds] == [reservation]

    before = state(admin)
    other = bot.post("/v1/authorize", json={**body, "amounts": {"usd": "41.00"}})
    assert other.status_code == 409 and error_of(other)["code"] == "idempotency_mismatch"
    assert state(admin) == before

    commit = {"amounts": {"usd": "30.00"}, "idempotency_key": "idem-commit-1"}
    done = ok(bot.post(f"/v1/reservations/{reservation}/commit", json=commit))
    assert ok(bot.post(f"/v1/reservations/{reservation}/commit", json=commit)) == done
    assert done["committed"] == {"usd": "30.00"} and done["released"] == {"usd": "10.00"}
    mismatch = bot.post(f"/v1/reservations/{reservation}/commit", json={**commit, "amounts": {"usd": "31.00"}})
    assert mismatch.status_code == 409 and error_of(mismatch)["code"] == "idempotency_mismatch"
    unkeyed = bot.post(f"/v1/reservations/{reservation}/commit", json={"amounts": {"usd": "30.00"}})
    assert unkeyed.status_code == 409 and error_of(unkeyed)["code"] == "already_committed"

    usage = {"action": "pay.fee", "amounts": {"usd": "2.50"}, "idempotency_key": "idem-usage-1"}
    assert ok(bot.post("/v1/usage", json=usage)) == ok(bot.post("/v1/usage", json=usage))
    row = headroom(admin, "idem")[budget]
    assert (row["used"], row["held"]) == ("32.50", "0.00")  # 30.00 committed + 2.50 counted once
    kinds = [e["kind"] for e in whole_ledger(admin, agent="idem-bot")]
    assert kinds == ["hold", "commit", "usage"]


# == bad input =====================================================================================
@dataclass(frozen=True)
class Bad:
    name: str
    method: str
    path: str
    status: int
    code: str
    field: str | None = None
    body: Any = None
    raw: bytes | None = None
    auth: str = "agent"
    """agent (bad-bot's key), admin, none, unknown (a well-formed key nobody issued) or malformed."""
    params: dict[str, str] | None = None


AUTHORIZE = "/v1/authorize"
ACT = {"action": "bad.act"}


def nested(levels: int) -> dict[str, Any]:
    """An object `levels` deep: {"a": {"a": … {}}}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


BAD_INPUTS = [
    Bad("negative", "POST", AUTHORIZE, 422, "invalid_amount", "amounts.usd", {**ACT, "amounts": {"usd": "-1.00"}}),
    Bad("non-numeric", "POST", AUTHORIZE, 422, "invalid_amount", "amounts.usd", {**ACT, "amounts": {"usd": "ten"}}),
    Bad("float", "POST", AUTHORIZE, 422, "invalid_amount", "amounts.usd", {**ACT, "amounts": {"usd": 12.5}}),
    Bad("nan", "POST", AUTHORIZE, 422, "invalid_amount", "amounts.usd", {**ACT, "amounts": {"usd": "NaN"}}),
    Bad("too-large", "POST", AUTHORIZE, 422, "amount_too_large", "amounts.usd", {**ACT, "amounts": {"usd": "1e20"}}),
    Bad(
        "too-large-decimal",
        "POST",
        AUTHORIZE,
        422,
        "amount_too_large",
        "amounts.usd",
        {**ACT, "amounts": {"usd": "10000000000000.01"}},
    ),
    Bad("too-long", "POST", AUTHORIZE, 422, "invalid_amount", "amounts.usd", {**ACT, "amounts": {"usd": "1" * 50}}),
    Bad("unknown-meter", "POST", AUTHORIZE, 422, "unknown_meter", "amounts.gold", {**ACT, "amounts": {"gold": "1"}}),
    Bad("unknown-field", "POST", AUTHORIZE, 422, "invalid_field", "colour", {**ACT, "colour": "red"}),
    Bad("amounts-not-object", "POST", AUTHORIZE, 422, "invalid_field", "amounts", {**ACT, "amounts": ["1"]}),
    Bad("no-action", "POST", AUTHORIZE, 422, "invalid_field", "action", {"amounts": {"usd": "1"}}),
    Bad("lease-zero", "POST", AUTHORIZE, 422, "invalid_field", "lease_seconds", {**ACT, "lease_seconds": 0}),
    Bad("malformed-json", "POST", AUTHORIZE, 400, "invalid_json", raw=b'{"action": "bad.act",'),
    Bad("not-an-object", "POST", AUTHORIZE, 400, "invalid_request", body=[ACT]),
    Bad("missing-auth", "POST", AUTHORIZE, 401, "unauthorized", body=ACT, auth="none"),
    Bad("unknown-key", "POST", AUTHORIZE, 401, "unauthorized", body=ACT, auth="unknown"),
    Bad("malformed-key", "POST", AUTHORIZE, 401, "unauthorized", body=ACT, auth="malformed"),
    Bad("admin-without-agent", "POST", AUTHORIZE, 422, "invalid_field", "agent", ACT, auth="admin"),
    Bad("admin-unknown-agent", "POST", AUTHORIZE, 422, "unknown_agent", "agent", {**ACT, "agent": "x"}, auth="admin"),
    Bad("usage-negative", "POST", "/v1/usage", 422, "invalid_amount", "amounts.usd", {**ACT, "amounts": {"usd": "-5"}}),
    Bad(
        "usage-unknown-meter",
        "POST",
        "/v1/usage",
        422,
        "unknown_meter",
        "amounts.gold",
        {**ACT, "amounts": {"gold": "1"}},
    ),
    Bad("usage-missing-auth", "POST", "/v1/usage", 401, "unauthorized", body=ACT, auth="none"),
    Bad("commit-negative", "POST", "{held}/commit", 422, "invalid_amount", "amounts.usd", {"amounts": {"usd": "-1"}}),
    Bad(
        "commit-unknown-meter",
        "POST",
        "{held}/commit",
        422,
        "unknown_meter",
        "amounts.gold",
        {"amounts": {"gold": "1"}},
    ),
    Bad("commit-unknown-field", "POST", "{held}/commit", 422, "invalid_field", "colour", {"colour": 1}),
    Bad("commit-malformed-json", "POST", "{held}/commit", 400, "invalid_json", raw=b"{"),
    Bad("commit-bad-key", "POST", "{held}/commit", 401, "unauthorized", body={}, auth="unknown"),
    Bad("release-unknown-field", "POST", "{held}/release", 422, "invalid_field", "amounts", {"amounts": {}}),
    Bad("extend-zero", "POST", "{held}/extend", 422, "invalid_field", "lease_seconds", {"lease_seconds": 0}),
    Bad("commit-unknown-reservation", "POST", "/v1/reservations/res_missing/commit", 404, "not_found", body={}),
    Bad("ledger-limit", "GET", "/v1/ledger", 422, "invalid_field", "limit", params={"limit": "0"}, auth="admin"),
    Bad(
        "ledger-since", "GET", "/v1/ledger", 422, "invalid_field", "since", params={"since": "yesterday"}, auth="admin"
    ),
    Bad("ledger-param", "GET", "/v1/ledger", 422, "invalid_field", "colour", params={"colour": "red"}, auth="admin"),
    Bad("ledger-cursor", "GET", "/v1/ledger", 422, "invalid_field", "cursor", params={"cursor": "x"}, auth="admin"),
    Bad("headroom-unknown-scope", "GET", "/v1/headroom", 404, "not_found", params={"scope": "nowhere"}, auth="admin"),
    Bad("unknown-route", "GET", "/v1/nothing", 404, "not_found", auth="admin"),
    Bad("trailing-slash", "GET", "/v1/whoami/", 404, "not_found", auth="admin"),
    Bad("context-too-deep", "POST", AUTHORIZE, 422, "invalid_field", "context", {**ACT, "context": nested(33)}),
    Bad(
        "context-deeper-than-json-is-written",
        "POST",
        AUTHORIZE,
        422,
        "invalid_field",
        "context",
        raw=b'{"action": "bad.act", "context": ' + b'{"a": ' * 300 + b"{}" + b"}" * 301,
    ),
    Bad("authorize-trailing-slash", "POST", AUTHORIZE + "/", 404, "not_found", body=ACT),
    Bad("wrong-method", "DELETE", AUTHORIZE, 405, "method_not_allowed", auth="admin"),
]
UNKNOWN_KEY = "rk_0123456789abcdef_" + "A" * 43
LENIENT_AMOUNT = Bad(
    "underscore-digits", "POST", AUTHORIZE, 422, "invalid_amount", "amounts.usd", {**ACT, "amounts": {"usd": "1_0"}}
)
"""Python's Decimal reads "1_0" as 10: not a decimal string by the contract."""
CASES = [pytest.param(bad, id=bad.name) for bad in [*BAD_INPUTS, LENIENT_AMOUNT]]


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_refused_and_changes_nothing(deployment: Deployment, bad: Bad) -> None:
    admin, bot = deployment.admin, deployment.agent("bad-bot")
    held = allowed(bot, action="bad.hold", amounts={"usd": "3.00"}) if bad.path.startswith("{held}") else None
    path = bad.path.replace("{held}", f"/v1/reservations/{held}")
    headers = {"content-type": "application/json"}
    auth = {
        "agent": deployment.agent_key_text["bad-bot"],
        "admin": deployment.admin_key,
        "unknown": UNKNOWN_KEY,
        "malformed": "not-a-key",
    }.get(bad.auth)
    if auth is not None:
        headers["authorization"] = f"Bearer {auth}"
    content = bad.raw if bad.raw is not None else None if bad.body is None else orjson.dumps(bad.body)
    before = state(admin)

    with httpx.Client(base_url=deployment.url, timeout=30.0) as raw_client:
        response = raw_client.request(bad.method, path, content=content, headers=headers, params=bad.params)
    if response.status_code == 200 and response.json().get("reservation"):
        ok(bot.post(f"/v1/reservations/{response.json()['reservation']}/release"))  # accepted wrongly: no stray hold

    assert response.status_code == bad.status, response.text
    error = error_of(response)
    assert error["code"] == bad.code, error
    if bad.field is None:
        assert error["details"] is None or "field" not in error["details"], error
    else:
        assert error["details"] == {"field": bad.field}, error
    if bad.status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert state(admin) == before
    if held is not None:  # the reservation the bad request named is untouched and still resolves
        assert ok(bot.post(f"/v1/reservations/{held}/release"))["released"] == {"usd": "3.00"}


def test_oversized_body_is_refused(deployment: Deployment) -> None:
    before = state(deployment.admin)
    huge = b'{"action": "bad.act", "context": {"blob": "' + b"x" * (5 * 1024 * 1024) + b'"}}'
    response = deployment.agent("bad-bot").post(AUTHORIZE, content=huge)
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"
    assert state(deployment.admin) == before


# == the ledger: filters and pages =================================================================
def test_ledger_filters_and_cursor_pages(deployment: Deployment) -> None:
    admin, a, b = deployment.admin, deployment.agent("ledger-a"), deployment.agent("ledger-b")
    for _ in range(3):
        held = allowed(a, action="ledger.one", amounts={"calls": "1"})
        ok(a.post(f"/v1/reservations/{held}/commit", json={}))
    for _ in range(2):
        held = allowed(b, action="ledger.two", amounts={"calls": "2"})
        ok(b.post(f"/v1/reservations/{held}/release"))
    ok(b.post("/v1/usage", json={"action": "ledger.one", "amounts": {"calls": "4"}}))

    everything = whole_ledger(admin, scope="ledger")
    assert [(e["agent"], e["action"], e["kind"]) for e in everything] == [
        *[("ledger-a", "ledger.one", kind) for kind in ("hold", "commit") * 3],
        *[("ledger-b", "ledger.two", kind) for kind in ("hold", "release") * 2],
        ("ledger-b", "ledger.one", "usage"),
    ]
    ids = [int(e["id"]) for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    def ids_of(**params: str) -> list[str]:
        return [e["id"] for e in whole_ledger(admin, **params)]

    def expected(keep: Any) -> list[str]:
        return [e["id"] for e in everything if keep(e)]

    assert ids_of(agent="ledger-a") == expected(lambda e: e["agent"] == "ledger-a")
    assert ids_of(action="ledger.two") == expected(lambda e: e["action"] == "ledger.two")
    assert ids_of(action="ledger.one", kind="commit") == expected(lambda e: e["kind"] == "commit")
    assert ids_of(agent="ledger-b", action="ledger.one") == expected(lambda e: e["kind"] == "usage")
    assert ids_of(agent="ledger-b", kind="hold") == expected(lambda e: (e["agent"], e["kind"]) == ("ledger-b", "hold"))
    assert len(ids_of(action="ledger.one")) == 7 and ids_of(action="ledger.none") == []

    # since is inclusive, until exclusive; both are RFC 3339 with a zone (Z or an offset).
    since, until = everything[3]["at"], everything[8]["at"]
    window = expected(lambda e: since <= e["at"] < until)
    assert 0 < len(window) < len(everything)
    assert ids_of(scope="ledger", since=since, until=until) == window
    offset = parse_time(since).astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()
    assert ids_of(scope="ledger", since=offset, until=until) == window
    assert ids_of(scope="ledger", since=everything[-1]["at"]) == [everything[-1]["id"]]

    # Cursor pages, either order: no page overlaps another, together they are everything.
    for order, page_size in (("desc", 2), ("asc", 3), ("desc", 11), ("asc", 1000)):
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            params = {"scope": "ledger", "order": order, "limit": str(page_size), **cursor_of(cursor)}
            page = ok(admin.get("/v1/ledger", params=params))
            assert len(page["entries"]) <= page_size
            pages.append([e["id"] for e in page["entries"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        flat = [entry for page_ids in pages for entry in page_ids]
        assert len(flat) == len(set(flat)), (order, page_size, pages)
        want = [e["id"] for e in everything]
        assert flat == (want if order == "asc" else want[::-1]), (order, page_size)
        assert all(len(p) == page_size for p in pages[:-1])

    # The whole tenant ledger pages the same way: newest first by default.
    tenant = whole_ledger(admin)
    newest_first: list[str] = []
    cursor = None
    while True:
        page = ok(admin.get("/v1/ledger", params={"limit": "7", **cursor_of(cursor)}))
        newest_first += [e["id"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert newest_first == [e["id"] for e in reversed(tenant)]


# == config: apply, dry run, validation ============================================================
def cfg_usd(limit: str) -> dict[str, Any]:
    return {
        "scope": "cfg",
        "meter": "usd",
        "limit": limit,
        "window": "month",
        "per_action_max": None,
        "actions": "*",
        "mode": "enforce",
        "per": "scope",
    }


def changed_config() -> dict[str, Any]:
    """The base config with one limit raised, one budget added and one agent removed."""
    document = base_config()
    document["scopes"]["cfg"]["budgets"][0]["limit"] = "75"
    document["scopes"]["cfg"]["budgets"].append({"meter": "calls", "limit": "10", "window": "month"})
    del document["agents"]["cfg-gone"]
    return document


EXPECTED_CHANGES = [
    {
        "op": "remove",
        "kind": "agent",
        "name": "cfg-gone",
        "before": {"scope": "cfg", "priority": "scheduled", "owner": None},
        "after": None,
    },
    {
        "op": "add",
        "kind": "budget",
        "name": "cfg:calls:month",
        "before": None,
        "after": {**cfg_usd("10"), "meter": "calls"},
    },
    {"op": "change", "kind": "budget", "name": "cfg:usd:month", "before": cfg_usd("50.00"), "after": cfg_usd("75.00")},
]


def config_now(admin: httpx.Client) -> dict[str, Any]:
    return ok(admin.get("/v1/config"))


def test_applying_the_same_config_twice_changes_nothing(deployment: Deployment) -> None:
    admin = deployment.admin
    before, ledger_before = config_now(admin), whole_ledger(admin)
    for _ in range(2):
        assert ok(admin.put("/v1/config", json=base_config())) == {
            "dry_run": False,
            "version": before["version"],
            "changes": [],
        }
    assert config_now(admin) == before
    assert whole_ledger(admin) == ledger_before  # no new config entry either


def test_the_same_config_in_another_form_changes_nothing(deployment: Deployment) -> None:
    admin = deployment.admin
    before, ledger_before = config_now(admin), whole_ledger(admin)
    as_yaml = yaml.safe_dump(base_config(), sort_keys=True).encode()
    forms = [
        admin.put("/v1/config", content=as_yaml, headers={"content-type": "application/yaml"}),
        admin.put("/v1/config", json=before["config"]),  # the server's own spelling: defaults filled in
        admin.put("/v1/config", json=base_config()),
    ]
    for answer in forms:
        assert ok(answer) == {"dry_run": False, "version": before["version"], "changes": []}
        assert config_now(admin)["version"] == before["version"]
    assert whole_ledger(admin) == ledger_before


def test_dry_run_returns_the_exact_diff_and_applies_nothing(deployment: Deployment) -> None:
    admin = deployment.admin
    before, ledger_before = config_now(admin), whole_ledger(admin)
    planned = ok(admin.put("/v1/config", params={"dry_run": "true"}, json=changed_config()))
    assert planned == {"dry_run": True, "version": before["version"], "changes": EXPECTED_CHANGES}
    assert config_now(admin) == before
    assert whole_ledger(admin) == ledger_before  # not even a config entry
    assert headroom(admin, "cfg")["cfg:usd:month"]["limit"] == "50.00"
    assert ok(admin.get("/v1/agents/cfg-gone"))["scope"] == "cfg"
    try:
        applied = ok(admin.put("/v1/config", params={"dry_run": "false"}, json=changed_config()))
        assert applied == {"dry_run": False, "version": before["version"] + 1, "changes": EXPECTED_CHANGES}
        assert headroom(admin, "cfg")["cfg:usd:month"]["limit"] == "75.00"
        gone = admin.get("/v1/agents/cfg-gone")
        assert gone.status_code == 404 and error_of(gone)["code"] == "not_found"
    finally:
        restored = ok(admin.put("/v1/config", json=base_config()))
    assert [(c["op"], c["name"]) for c in restored["changes"]] == [
        ("add", "cfg-gone"),
        ("remove", "cfg:calls:month"),
        ("change", "cfg:usd:month"),
    ]
    assert restored["version"] == before["version"] + 2


INVALID_CONFIGS = [
    ("bad-window", ("scopes", "cfg", "budgets", 0, "window"), "hourly", "scopes.cfg.budgets[0].window"),
    ("negative-limit", ("scopes", "cfg", "budgets", 0, "limit"), "-5", "scopes.cfg.budgets[0].limit"),
    ("unknown-scope", ("agents", "cfg-bot", "scope"), "nowhere", "agents.cfg-bot.scope"),
    ("unknown-field", ("scopes", "cfg", "colour"), "red", "scopes.cfg.colour"),
    ("bad-meter-kind", ("meters", "calls", "kind"), "product", "meters.calls.kind"),
]


@pytest.mark.parametrize("as_yaml", [False, True], ids=["json", "yaml"])
@pytest.mark.parametrize(
    ("where", "value", "path"), [c[1:] for c in INVALID_CONFIGS], ids=[c[0] for c in INVALID_CONFIGS]
)
def test_invalid_config_is_rejected_with_its_path(
    deployment: Deployment, where: tuple[Any, ...], value: str, path: str, as_yaml: bool
) -> None:
    admin = deployment.admin
    document = base_config()
    parent = document
    for step in where[:-1]:
        parent = parent[step]
    parent[where[-1]] = value
    before, ledger_before = config_now(admin), whole_ledger(admin)
    for dry_run in ("true", "false"):
        if as_yaml:
            body = yaml.safe_dump(document).encode()
            response = admin.put(
                "/v1/config", params={"dry_run": dry_run}, content=body, headers={"content-type": "application/yaml"}
            )
        else:
            response = admin.put("/v1/config", params={"dry_run": dry_run}, json=document)
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["code"] == "invalid_config"
        assert path in [item["path"] for item in error["details"]["errors"]], error
        assert all(item["message"] for item in error["details"]["errors"])
    assert config_now(admin) == before
    assert whole_ledger(admin) == ledger_before


def test_unparseable_config_bodies_are_refused(deployment: Deployment) -> None:
    admin = deployment.admin
    before = config_now(admin)
    broken_yaml = admin.put(
        "/v1/config", content=b"meters: {usd: {kind: sum\n", headers={"content-type": "application/yaml"}
    )
    assert broken_yaml.status_code == 400 and error_of(broken_yaml)["code"] == "invalid_json"
    assert "line" in error_of(broken_yaml)["message"]
    too_deep = admin.put(
        "/v1/config", content=b"meters: " + b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/yaml"}
    )
    assert too_deep.status_code == 400 and error_of(too_deep)["code"] == "invalid_json"
    assert "nested too deeply" in error_of(too_deep)["message"]
    no_config = admin.put("/v1/config", content=b"# nothing\n", headers={"content-type": "application/yaml"})
    assert no_config.status_code == 400 and error_of(no_config)["code"] == "invalid_request"
    broken_json = admin.put("/v1/config", content=b"{", headers={"content-type": "application/json"})
    assert broken_json.status_code == 400 and error_of(broken_json)["code"] == "invalid_json"
    not_a_map = admin.put("/v1/config", json=["meters"])
    assert not_a_map.status_code == 400 and error_of(not_a_map)["code"] == "invalid_request"
    bad_flag = admin.put("/v1/config", params={"dry_run": "maybe"}, json=base_config())
    assert bad_flag.status_code == 422 and error_of(bad_flag)["details"] == {"field": "dry_run"}
    assert config_now(admin) == before


def test_changing_a_limit_keeps_the_usage_already_counted(deployment: Deployment) -> None:
    admin, bot = deployment.admin, deployment.agent("keep-bot")
    held = allowed(bot, action="keep.spend", amounts={"usd": "12.00"})
    ok(bot.post(f"/v1/reservations/{held}/commit", json={"amounts": {"usd": "10.00"}}))
    open_hold = allowed(bot, action="keep.spend", amounts={"usd": "5.00"})
    row = headroom(admin, "keep")["keep:usd:month"]
    assert (row["limit"], row["used"], row["held"], row["remaining"]) == ("50.00", "10.00", "5.00", "35.00")
    raised = base_config()
    raised["scopes"]["keep"]["budgets"][0]["limit"] = "80"
    try:
        assert [c["name"] for c in ok(admin.put("/v1/config", json=raised))["changes"]] == ["keep:usd:month"]
        row = headroom(admin, "keep")["keep:usd:month"]
        assert (row["limit"], row["used"], row["held"], row["remaining"]) == ("80.00", "10.00", "5.00", "65.00")
        # Lowered below what is used, the budget is full but nothing is forgotten.
        lowered = base_config()
        lowered["scopes"]["keep"]["budgets"][0]["limit"] = "12"
        ok(admin.put("/v1/config", json=lowered))
        row = headroom(admin, "keep")["keep:usd:month"]
        assert (row["limit"], row["used"], row["held"], row["remaining"]) == ("12.00", "10.00", "5.00", "0.00")
        denied = authorize(bot, action="keep.spend", amounts={"usd": "1.00"})
        assert denied["decision"] == "deny" and [r["budget"] for r in denied["reasons"]] == ["keep:usd:month"]
    finally:
        ok(admin.put("/v1/config", json=base_config()))
    ok(bot.post(f"/v1/reservations/{open_hold}/commit", json={"amounts": {"usd": "5.00"}}))
    row = headroom(admin, "keep")["keep:usd:month"]
    assert (row["limit"], row["used"], row["held"], row["remaining"]) == ("50.00", "15.00", "0.00", "35.00")
    assert ok(admin.get("/v1/check"))["is_consistent"]


# == CRUD: scopes, agents, budgets =================================================================
def test_scopes_agents_and_budgets_crud(deployment: Deployment) -> None:
    admin = deployment.admin
    start = config_now(admin)
    scope = {"owner": "crud@example.com", "budgets": [{"meter": "usd", "limit": "30", "window": "month"}]}
    created = ok(admin.put("/v1/scopes/crud/team", json=scope))
    assert [(c["op"], c["kind"], c["name"]) for c in created["changes"]] == [
        ("add", "scope", "crud/team"),
        ("add", "budget", "crud/team:usd:month"),
    ]
    assert created["version"] == start["version"] + 1
    assert ok(admin.put("/v1/scopes/crud/team", json=scope))["changes"] == []  # idempotent
    got = ok(admin.get("/v1/scopes/crud/team"))
    assert (got["path"], got["owner"]) == ("crud/team", "crud@example.com")
    assert [(b["id"], b["limit"]) for b in got["budgets"]] == [("crud/team:usd:month", "30.00")]
    assert "crud/team" in [s["path"] for s in ok(admin.get("/v1/scopes"))["scopes"]]

    agent = ok(admin.put("/v1/agents/crud-bot", json={"scope": "crud/team", "priority": "interactive"}))
    assert agent["changes"] == [
        {
            "op": "add",
            "kind": "agent",
            "name": "crud-bot",
            "before": None,
            "after": {"scope": "crud/team", "priority": "interactive", "owner": None},
        }
    ]
    assert ok(admin.get("/v1/agents/crud-bot"))["scope"] == "crud/team"
    assert "crud-bot" in [a["name"] for a in ok(admin.get("/v1/agents"))["agents"]]
    key = ok(admin.post("/v1/keys", json={"agent": "crud-bot"}), 201)["key"]
    with deployment.client(key) as bot:
        ok(bot.post(f"/v1/reservations/{allowed(bot, action='crud.x', amounts={'usd': '1'})}/release"))

        cap = {"scope": "crud/team", "meter": "usd", "limit": "7", "window": "month", "actions": "crud.*"}
        added = ok(admin.put("/v1/budgets/crud-cap", json=cap))
        assert [(c["op"], c["name"]) for c in added["changes"]] == [("add", "crud-cap")]
        assert ok(admin.get("/v1/budgets/crud-cap"))["limit"] == "7.00"
        assert "crud-cap" in [b["id"] for b in ok(admin.get("/v1/budgets", params={"scope": "crud"}))["budgets"]]
        assert "crud-cap" not in [b["id"] for b in ok(admin.get("/v1/budgets", params={"scope": "cfg"}))["budgets"]]
        spent = allowed(bot, action="crud.x", amounts={"usd": "6"})
        ok(bot.post(f"/v1/reservations/{spent}/commit", json={}))
        changed = ok(admin.put("/v1/budgets/crud-cap", json={**cap, "limit": "9"}))
        assert [(c["op"], c["before"]["limit"], c["after"]["limit"]) for c in changed["changes"]] == [
            ("change", "7.00", "9.00")
        ]
        assert headroom(admin, "crud")["crud-cap"]["used"] == "6.00"  # replaced in place: usage kept
        denied = authorize(bot, action="crud.x", amounts={"usd": "4"})
        assert [r["budget"] for r in denied["reasons"]] == ["crud-cap"]

        assert [c["op"] for c in ok(admin.delete("/v1/budgets/crud-cap"))["changes"]] == ["remove"]
        for missing in (admin.get("/v1/budgets/crud-cap"), admin.delete("/v1/budgets/crud-cap")):
            assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
        no_scope = admin.put("/v1/budgets/crud-cap", json={k: v for k, v in cap.items() if k != "scope"})
        assert no_scope.status_code == 422 and error_of(no_scope)["details"] == {"field": "scope"}
        nowhere = admin.put("/v1/budgets/crud-cap", json={**cap, "scope": "nowhere"})
        assert nowhere.status_code == 404 and error_of(nowhere)["code"] == "not_found"

    in_use = admin.delete("/v1/scopes/crud/team")  # its agent still points at it
    assert in_use.status_code == 422 and error_of(in_use)["code"] == "invalid_config"
    assert "agents.crud-bot.scope" in [e["path"] for e in error_of(in_use)["details"]["errors"]]
    assert [c["op"] for c in ok(admin.delete("/v1/agents/crud-bot"))["changes"]] == ["remove"]
    assert admin.get("/v1/agents/crud-bot").status_code == 404
    assert admin.delete("/v1/agents/crud-bot").status_code == 404
    removed = ok(admin.delete("/v1/scopes/crud/team"))
    assert [(c["op"], c["name"]) for c in removed["changes"]] == [
        ("remove", "crud/team"),
        ("remove", "crud/team:usd:month"),
    ]
    for missing in (admin.get("/v1/scopes/crud/team"), admin.delete("/v1/scopes/crud/team")):
        assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    assert config_now(admin)["config"] == start["config"]


def test_every_listed_budget_is_reachable_by_its_id(deployment: Deployment) -> None:
    listed = ok(deployment.admin.get("/v1/budgets"))["budgets"]
    assert any("/" in row["id"] for row in listed)
    try:
        for row in listed:
            assert ok(deployment.admin.get(f"/v1/budgets/{row['id']}")) == row
            same = {name: value for name, value in row.items() if name != "id"}
            assert ok(deployment.admin.put(f"/v1/budgets/{row['id']}", json=same))["changes"] == [], row["id"]
    finally:
        ok(deployment.admin.put("/v1/config", json=base_config()))  # ids spelled out → back to the defaults


# == keys ==========================================================================================
def test_keys_are_listed_without_secrets_rotated_and_revoked(deployment: Deployment) -> None:
    admin = deployment.admin
    created = ok(admin.post("/v1/keys", json={"agent": "key-bot", "name": "ci-runner"}), 201)
    text, key_id = created["key"], created["id"]
    assert re.fullmatch(rf"rk_{key_id}_[A-Za-z0-9_-]{{43}}", text), created
    assert (created["role"], created["agent"], created["name"], created["is_active"]) == (
        "agent",
        "key-bot",
        "ci-runner",
        True,
    )
    with deployment.client(text) as bot:
        assert ok(bot.get("/v1/whoami"))["agent"] == "key-bot"

    listing = admin.get("/v1/keys")
    rows = {row["id"]: row for row in ok(listing)["keys"]}
    assert rows[key_id]["prefix"] == f"rk_{key_id}_…" and rows[key_id]["agent"] == "key-bot"
    secret = parse_key(text)[1]  # a secret may itself contain "_": split by the key's format
    for issued in [text, deployment.admin_key, *deployment.agent_key_text.values()]:
        assert parse_key(issued)[1] not in listing.text  # no secret is ever listed
    assert secret not in listing.text
    assert not any(re.search("secret|hash|sha", name) for row in rows.values() for name in row), rows[key_id]
    assert all(set(row) == set(rows[key_id]) for row in rows.values())

    rotated = ok(admin.post(f"/v1/keys/{key_id}/rotate"))
    assert rotated["id"] == key_id and rotated["key"] != text and rotated["rotated_at"] is not None
    with deployment.client(text) as old, deployment.client(rotated["key"]) as new:
        refused = old.get("/v1/whoami")
        assert refused.status_code == 401 and error_of(refused)["code"] == "unauthorized"
        assert ok(new.get("/v1/whoami"))["key"] == key_id

        revoked = ok(admin.delete(f"/v1/keys/{key_id}"))
        assert revoked["is_active"] is False and revoked["revoked_at"] is not None
        assert new.get("/v1/whoami").status_code == 401
        assert old.get("/v1/whoami").status_code == 401
    listed = {row["id"]: row for row in ok(admin.get("/v1/keys"))["keys"]}[key_id]
    assert (listed["is_active"], listed["revoked_at"]) == (False, revoked["revoked_at"])
    gone = admin.post(f"/v1/keys/{key_id}/rotate")  # a revoked key cannot be brought back
    assert gone.status_code == 404 and error_of(gone)["code"] == "not_found"
    assert admin.delete("/v1/keys/0000000000000000").status_code == 404

    unknown_agent = admin.post("/v1/keys", json={"agent": "nobody"})
    assert (unknown_agent.status_code, error_of(unknown_agent)["details"]) == (422, {"field": "agent"})
    bad_role = admin.post("/v1/keys", json={"role": "root"})
    assert (bad_role.status_code, error_of(bad_role)["details"]) == (422, {"field": "role"})


def test_the_last_admin_key_cannot_be_revoked(deployment: Deployment) -> None:
    admin = deployment.admin
    me = ok(admin.get("/v1/whoami"))["key"]
    active_admins = [k["id"] for k in ok(admin.get("/v1/keys"))["keys"] if k["role"] == "admin" and k["is_active"]]
    assert active_admins == [me]
    refused = admin.delete(f"/v1/keys/{me}")
    assert refused.status_code == 409 and error_of(refused)["code"] == "last_admin_key"
    assert ok(admin.get("/v1/whoami"))["key"] == me

    second = ok(admin.post("/v1/keys", json={"role": "admin", "name": "break-glass"}), 201)
    assert second["role"] == "admin" and second["agent"] is None
    with deployment.client(second["key"]) as other_admin:
        assert ok(other_admin.get("/v1/whoami"))["role"] == "admin"
        assert ok(other_admin.delete(f"/v1/keys/{second['id']}"))["is_active"] is False  # it may revoke itself
        assert other_admin.get("/v1/whoami").status_code == 401
    refused_again = admin.delete(f"/v1/keys/{me}")
    assert refused_again.status_code == 409 and error_of(refused_again)["code"] == "last_admin_key"


# == operations ====================================================================================
def test_health_readiness_and_metrics(deployment: Deployment) -> None:
    anonymous = deployment.anonymous
    assert ok(anonymous.get("/healthz")) == {"status": "ok"}
    assert ok(anonymous.get("/readyz")) == {"status": "ready"}
    bot = deployment.agent("bad-bot")
    ok(bot.post(f"/v1/reservations/{allowed(bot, action='ops.probe', amounts={'usd': '1'})}/release"))

    metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in metrics.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['remit_decisions_total{outcome="allow"}'] >= 1
    assert samples["remit_batch_size_count"] >= 1
    assert any(n.startswith('remit_http_request_duration_seconds_bucket{endpoint="authorize"') for n in samples)
    assert samples["remit_holds_live"] >= 0
    assert samples['remit_http_requests_total{endpoint="authorize",status="200"}'] >= 1


def test_openapi_document_is_served(deployment: Deployment) -> None:
    served = deployment.anonymous.get("/openapi.json")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert isinstance(served.json(), dict)


def test_openapi_document_describes_every_route(deployment: Deployment) -> None:
    document = ok(deployment.anonymous.get("/openapi.json"))
    assert str(document.get("openapi", "")).startswith("3.")
    paths = document.get("paths", {})
    for route in routes(Api(None, None, None)):  # type: ignore[arg-type]  # only the paths are read
        documented = {method.upper() for method in paths.get(route.path.replace(":path}", "}"), {})}
        assert route.methods is not None
        missing = (route.methods - {"HEAD"}) - documented
        assert not missing, f"{route.path}: {sorted(missing)} not in openapi.json"


def test_a_context_at_the_depth_limit_is_held_and_written(deployment: Deployment) -> None:
    """The ledger stores the context inside an entry's detail: at the limit it still writes (a
    context orjson could not write would fail its whole batch, every co-batched request too)."""
    bot = deployment.agent("bad-bot")
    held = allowed(bot, action="bad.hold", amounts={"usd": "1.00"}, context=nested(32))
    ok(bot.post(f"/v1/reservations/{held}/release"))
    entries = whole_ledger(deployment.admin, agent="bad-bot", kind="hold")
    hold = next(entry for entry in entries if entry["reservation"] == held)
    assert hold["detail"]["context"] == nested(32)
