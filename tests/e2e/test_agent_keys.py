"""An agent key acts as its own agent and nothing more — checked over every route, both stores.

How: the module server's example tenant has agents bot-7, bot-8 and helper-1, each with the key
the server printed. bot-8 holds one reservation and has committed another. bot-7's key then
tries, route by route (the list comes from `remit.api.app.routes()`, so a new route without a
case fails here): to act as bot-8 (403 forbidden), to commit / release / extend bot-8's
reservations (404, as if they did not exist), and every admin endpoint (403). After each case
the tenant's balances, ledger, config and keys are exactly as before and bot-8's reservation
still resolves. What an agent key may do — act and read its own path — is checked too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from .servers import client, ok, refused, served_routes, tenant_state

OWN_PATH = ("/", "sales", "sales/renewals", "sales/renewals/agent:bot-7")
ADMIN_ONLY = "this needs an admin key"


@dataclass
class Fleet:
    admin: httpx.Client
    bot7: httpx.Client
    bot8: httpx.Client
    anonymous: httpx.Client
    held: str
    """bot-8's reservation, still held (a long lease: it cannot expire during the module)."""
    committed: str
    """bot-8's committed reservation."""
    bot7_key_id: str
    bot8_key_id: str


def forbidden(response: httpx.Response) -> None:
    assert ADMIN_ONLY in refused(response, 403, "forbidden")["message"]


@pytest.fixture(scope="module")
def fleet(module_server: Any) -> Iterator[Fleet]:
    url, keys = module_server.url, module_server.agent_keys
    clients = [
        client(url, module_server.admin_key),
        client(url, keys["bot-7"]),
        client(url, keys["bot-8"]),
        client(url),
    ]
    try:
        admin, bot7, bot8, anonymous = clients
        done = ok(bot8.post("/v1/authorize", json={"action": "crm.sync", "amounts": {"usd": "4"}}))
        ok(bot8.post(f"/v1/reservations/{done['reservation']}/commit", json={}))
        held = ok(
            bot8.post("/v1/authorize", json={"action": "crm.sync", "amounts": {"usd": "6"}, "lease_seconds": 3600})
        )
        assert held["decision"] == "allow"
        own = ok(bot7.post("/v1/authorize", json={"action": "crm.sync", "amounts": {"usd": "1"}}))
        ok(bot7.post(f"/v1/reservations/{own['reservation']}/release"))
        key_ids = {row["agent"]: row["id"] for row in ok(admin.get("/v1/keys"))["keys"] if row["role"] == "agent"}
        yield Fleet(
            admin, bot7, bot8, anonymous, held["reservation"], done["reservation"], key_ids["bot-7"], key_ids["bot-8"]
        )
    finally:
        for opened in clients:
            opened.close()


# == one case per route: bot-7's key reaches past its agent ========================================
def public(fleet: Fleet) -> None:
    """No key needed and no tenant data served: nothing for an agent key to overreach."""


def authorize(fleet: Fleet) -> None:
    for other in ("bot-8", "helper-1", "nobody"):
        body = {"agent": other, "action": "crm.sync", "amounts": {"usd": "1"}}
        assert "bot-7" in refused(fleet.bot7.post("/v1/authorize", json=body), 403, "forbidden")["message"]


def usage(fleet: Fleet) -> None:
    body = {"agent": "bot-8", "action": "crm.sync", "amounts": {"usd": "1"}}
    refused(fleet.bot7.post("/v1/usage", json=body), 403, "forbidden")


def reservation_case(action: str, body: dict[str, Any]) -> Callable[[Fleet], None]:
    def case(fleet: Fleet) -> None:
        for reservation in (fleet.held, fleet.committed):
            path = f"/v1/reservations/{reservation}/{action}"
            refused(fleet.bot7.post(path, json=body), 404, "not_found")

    return case


def headroom(fleet: Fleet) -> None:
    """Allowed, but only its own path: another scope (helper-1's support) is as missing as a made-up one."""
    rows = ok(fleet.bot7.get("/v1/headroom"))["budgets"]
    assert rows and {row["scope"] for row in rows} <= set(OWN_PATH)
    for scope in ("support", "no-such-scope"):
        refused(fleet.bot7.get("/v1/headroom", params={"scope": scope}), 404, "not_found")


def ledger(fleet: Fleet) -> None:
    """Allowed, but only its own entries — asking for bot-8's gives nothing."""
    entries = ok(fleet.bot7.get("/v1/ledger", params={"limit": "1000"}))["entries"]
    assert entries and {entry["agent"] for entry in entries} == {"bot-7"}
    assert ok(fleet.bot7.get("/v1/ledger", params={"agent": "bot-8"}))["entries"] == []
    for scope in ("support", "no-such-scope"):
        refused(fleet.bot7.get("/v1/ledger", params={"scope": scope}), 404, "not_found")


def whoami(fleet: Fleet) -> None:
    assert ok(fleet.bot7.get("/v1/whoami"))["role"] == "agent"


def admin_only(method: str, path: str, body: Any = None) -> Callable[[Fleet], None]:
    def case(fleet: Fleet) -> None:
        target = path.format(own=fleet.bot7_key_id, other=fleet.bot8_key_id)
        forbidden(fleet.bot7.request(method, target, json=body))

    return case


def several(*cases: Callable[[Fleet], None]) -> Callable[[Fleet], None]:
    def case(fleet: Fleet) -> None:
        for each in cases:
            each(fleet)

    return case


def get_agent(fleet: Fleet) -> None:
    """An agent key reads its own agent; any other is as if it did not exist."""
    assert ok(fleet.bot7.get("/v1/agents/bot-7"))["scope"] == "sales/renewals"
    for other in ("bot-8", "helper-1"):
        refused(fleet.bot7.get(f"/v1/agents/{other}"), 404, "not_found")


SCOPE = {"owner": "mallory@example.com"}
BUDGET = {"scope": "sales/renewals", "meter": "usd", "limit": "1000000", "window": "month"}
CASES: dict[tuple[str, str], Callable[[Fleet], None]] = {
    ("/healthz", "GET"): public,
    ("/readyz", "GET"): public,
    ("/metrics", "GET"): public,
    ("/openapi.json", "GET"): public,
    ("/v1/authorize", "POST"): authorize,
    ("/v1/usage", "POST"): usage,
    ("/v1/reservations/{reservation}/commit", "POST"): reservation_case("commit", {"amounts": {"usd": "0"}}),
    ("/v1/reservations/{reservation}/release", "POST"): reservation_case("release", {}),
    ("/v1/reservations/{reservation}/extend", "POST"): reservation_case("extend", {"lease_seconds": 5}),
    ("/v1/headroom", "GET"): headroom,
    ("/v1/ledger", "GET"): ledger,
    ("/v1/whoami", "GET"): whoami,
    ("/v1/check", "GET"): admin_only("GET", "/v1/check"),
    ("/v1/config", "GET"): admin_only("GET", "/v1/config"),
    ("/v1/config", "PUT"): several(
        admin_only("PUT", "/v1/config", {"meters": {"usd": {"kind": "sum"}}}),
        admin_only("PUT", "/v1/config?dry_run=true", {"meters": {"usd": {"kind": "sum"}}}),
    ),
    ("/v1/scopes", "GET"): admin_only("GET", "/v1/scopes"),
    ("/v1/scopes/{path:path}", "GET"): admin_only("GET", "/v1/scopes/sales/renewals"),
    ("/v1/scopes/{path:path}", "PUT"): several(
        admin_only("PUT", "/v1/scopes/sales/renewals", SCOPE), admin_only("PUT", "/v1/scopes/mine", SCOPE)
    ),
    ("/v1/scopes/{path:path}", "DELETE"): admin_only("DELETE", "/v1/scopes/support"),
    ("/v1/agents", "GET"): admin_only("GET", "/v1/agents"),
    ("/v1/agents/{name}", "GET"): get_agent,
    ("/v1/agents/{name}", "PUT"): several(
        admin_only("PUT", "/v1/agents/bot-7", {"scope": "support", "priority": "interactive"}),
        admin_only("PUT", "/v1/agents/bot-9", {"scope": "sales/renewals"}),
    ),
    ("/v1/agents/{name}", "DELETE"): several(
        admin_only("DELETE", "/v1/agents/bot-8"), admin_only("DELETE", "/v1/agents/bot-7")
    ),
    ("/v1/budgets", "GET"): admin_only("GET", "/v1/budgets"),
    ("/v1/budgets/{budget:path}", "GET"): admin_only("GET", "/v1/budgets/sales:usd:month"),
    ("/v1/budgets/{budget:path}", "PUT"): several(
        admin_only("PUT", "/v1/budgets/sales:usd:month", BUDGET), admin_only("PUT", "/v1/budgets/mine", BUDGET)
    ),
    ("/v1/budgets/{budget:path}", "DELETE"): admin_only("DELETE", "/v1/budgets/sales:usd:month"),
    ("/v1/keys", "GET"): admin_only("GET", "/v1/keys"),
    ("/v1/keys", "POST"): several(
        admin_only("POST", "/v1/keys", {"role": "admin"}), admin_only("POST", "/v1/keys", {"agent": "bot-8"})
    ),
    ("/v1/keys/{key}", "DELETE"): several(
        admin_only("DELETE", "/v1/keys/{other}"), admin_only("DELETE", "/v1/keys/{own}")
    ),
    ("/v1/keys/{key}/rotate", "POST"): several(
        admin_only("POST", "/v1/keys/{other}/rotate"), admin_only("POST", "/v1/keys/{own}/rotate")
    ),
}


def test_every_case_is_a_served_route() -> None:
    stale = set(CASES) - set(served_routes())
    assert not stale, f"agent-key cases for routes the app no longer serves: {sorted(stale)}"


@pytest.mark.parametrize(("path", "method"), served_routes(), ids=[f"{m} {p}" for p, m in served_routes()])
def test_an_agent_key_cannot_reach_past_its_agent(fleet: Fleet, path: str, method: str) -> None:
    case = CASES.get((path, method))
    assert case is not None, f"{method} {path} has no agent-key case in {__file__}"
    before = tenant_state(fleet.admin)
    case(fleet)
    assert tenant_state(fleet.admin) == before
    extended = ok(fleet.bot8.post(f"/v1/reservations/{fleet.held}/extend", json={"lease_seconds": 3600}))
    assert extended["status"] == "held"  # bot-8's own key still resolves its own reservation
    assert ok(fleet.bot7.get("/v1/whoami"))["agent"] == "bot-7"  # bot-7's key was neither rotated nor revoked


def test_an_agent_key_acts_as_its_own_agent(fleet: Fleet) -> None:
    before = {row["budget"]: row for row in ok(fleet.admin.get("/v1/headroom"))["budgets"]}
    named = ok(fleet.bot7.post("/v1/authorize", json={"agent": "bot-7", "action": "crm.sync", "amounts": {"usd": "2"}}))
    implied = ok(fleet.bot7.post("/v1/authorize", json={"action": "crm.sync", "amounts": {"usd": "3"}}))
    assert named["decision"] == implied["decision"] == "allow"
    assert "sales/renewals/agent:bot-7:usd:day" in {row["budget"] for row in implied["budgets"]}
    ok(fleet.bot7.post(f"/v1/reservations/{named['reservation']}/commit", json={}))
    ok(fleet.bot7.post(f"/v1/reservations/{implied['reservation']}/release"))
    counted = ok(fleet.bot7.post("/v1/usage", json={"action": "crm.note", "amounts": {"usd": "1"}}))
    assert counted["status"] == "counted"
    after = {row["budget"]: row for row in ok(fleet.admin.get("/v1/headroom"))["budgets"]}
    bot7_day = "sales/renewals/agent:bot-7:usd:day"
    assert Decimal(after[bot7_day]["used"]) - Decimal(before[bot7_day]["used"]) == Decimal("3.00")  # 2 + 1
    newest = ok(fleet.admin.get("/v1/ledger", params={"limit": "5"}))["entries"]
    assert [(e["kind"], e["agent"]) for e in newest[:3]] == [
        ("usage", "bot-7"),
        ("release", "bot-7"),
        ("commit", "bot-7"),
    ]
