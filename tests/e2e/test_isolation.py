"""Tenant isolation (DESIGN.md §1 invariant 5) over every route the API serves, both stores.

How: tenant A is the module server's own tenant, with holds, commits and keys of its own.
Tenant B is bootstrapped on the same database by a second `remit serve --tenant other` (which
prints B's keys); B's keys are then used against A's server process, so one process serves
both tenants through the same caches. The route list comes from `remit.api.app.routes()`: each
(path, method) must have a case below — a new route without one fails this module. Each case
aims B's admin (or agent) key at A's reservation ids, key ids, scope, agent and budget names
and A's idempotency keys, and checks that B gets 404 / 422 or sees only its own data; after
every case A's balances, ledger, config and keys are exactly what they were and A's keys work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from .servers import client, ok, refused, served_routes, start_server, tenant_state

B_CONFIG = {
    "tenant": {"timezone": "UTC"},
    "meters": {"usd": {"kind": "sum", "scale": 2}},
    "scopes": {"ops": {"owner": "b@other.example", "budgets": [{"meter": "usd", "limit": "100", "window": "month"}]}},
    "agents": {"b-bot": {"scope": "ops"}},
}
B_BUDGET = "ops:usd:month"
A_BUDGET = "sales:usd:month"
"""A budget of A's that B does not have."""
A_BUDGETS = (A_BUDGET, "/:usd:month", "sales/renewals:accounts:day", "sales/renewals/agent:bot-7:usd:day")
"""A's budgets at the root, on a scope, a nested scope and an agent: ids with and without '/'."""
A_IDEMPOTENCY_KEY = "iso-shared-key"


@dataclass
class World:
    a_admin: httpx.Client
    a_bot: httpx.Client
    b_admin: httpx.Client
    b_bot: httpx.Client
    anonymous: httpx.Client
    a_held: str
    """A's reservation still held (a long lease, so it cannot expire during the module)."""
    a_committed: str
    a_key_ids: list[str]
    a_agents: list[str]


@pytest.fixture(scope="module")
def world(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("isolation")
    config_path = directory / "other.yaml"
    config_path.write_text(yaml.safe_dump(B_CONFIG))
    other = start_server(
        module_server.database_url, directory, tenant="other", config=config_path, is_logging_requests=False
    )
    other.stop()  # it only bootstrapped B; B's keys are used against A's process from here on
    assert other.admin_key is not None and set(other.agent_keys) == {"b-bot"}, other.stdout_lines
    url = module_server.url
    clients = [
        client(url, module_server.admin_key),
        client(url, module_server.agent_keys["bot-7"]),
        client(url, other.admin_key),
        client(url, other.agent_keys["b-bot"]),
        client(url),
    ]
    try:
        a_admin, a_bot, b_admin, b_bot, anonymous = clients
        assert ok(b_admin.get("/v1/whoami"))["tenant"] == "other"
        committed = ok(a_bot.post("/v1/authorize", json={"action": "crm.sync", "amounts": {"usd": "10"}}))
        ok(a_bot.post(f"/v1/reservations/{committed['reservation']}/commit", json={"idempotency_key": "iso-c"}))
        held = ok(
            a_bot.post(
                "/v1/authorize",
                json={
                    "action": "crm.sync",
                    "amounts": {"usd": "5"},
                    "lease_seconds": 3600,
                    "idempotency_key": A_IDEMPOTENCY_KEY,
                },
            )
        )
        ok(a_bot.post("/v1/usage", json={"action": "crm.note", "amounts": {"usd": "1"}, "idempotency_key": "iso-u"}))
        b_start = ok(b_bot.post("/v1/authorize", json={"action": "ops.run", "amounts": {"usd": "1"}}))
        ok(b_bot.post(f"/v1/reservations/{b_start['reservation']}/commit", json={}))
        keys = [row["id"] for row in ok(a_admin.get("/v1/keys"))["keys"]]
        agents = [row["name"] for row in ok(a_admin.get("/v1/agents"))["agents"]]
        yield World(
            a_admin, a_bot, b_admin, b_bot, anonymous, held["reservation"], committed["reservation"], keys, agents
        )
    finally:
        for opened in clients:
            opened.close()


def b_ledger(world: World, **params: str) -> list[dict[str, Any]]:
    page = ok(world.b_admin.get("/v1/ledger", params={"limit": "1000", **params}))
    entries: list[dict[str, Any]] = page["entries"]
    return entries


# == one case per route: B aims at A's things ======================================================
def public_health(world: World) -> None:
    assert ok(world.anonymous.get("/healthz")) == {"status": "ok"}


def public_ready(world: World) -> None:
    assert ok(world.anonymous.get("/readyz")) == {"status": "ready"}


def public_metrics(world: World) -> None:
    text = world.anonymous.get("/metrics").text
    for private in ("default", "other", "bot-7", "sales", world.a_held, *world.a_key_ids):
        assert private not in text, private  # process-wide figures only, no tenant's names or ids


def public_openapi(world: World) -> None:
    text = world.anonymous.get("/openapi.json").text
    for private in (world.a_held, *world.a_key_ids):
        assert private not in text


def authorize(world: World) -> None:
    body = {"agent": "bot-7", "action": "crm.sync", "amounts": {"usd": "1"}}
    refused(world.b_admin.post("/v1/authorize", json=body), 422, "unknown_agent")
    # A's idempotency key names nothing in B: B gets its own fresh decision, not A's answer or a 409.
    own = ok(
        world.b_bot.post(
            "/v1/authorize",
            json={"action": "ops.run", "amounts": {"usd": "2"}, "idempotency_key": A_IDEMPOTENCY_KEY},
        )
    )
    assert own["decision"] == "allow" and own["reservation"] != world.a_held
    assert {row["budget"] for row in own["budgets"]} == {B_BUDGET}
    ok(world.b_bot.post(f"/v1/reservations/{own['reservation']}/release"))


def usage(world: World) -> None:
    body = {"agent": "bot-7", "action": "crm.note", "amounts": {"usd": "1"}}
    refused(world.b_admin.post("/v1/usage", json=body), 422, "unknown_agent")
    own = ok(
        world.b_bot.post("/v1/usage", json={"action": "ops.run", "amounts": {"usd": "1"}, "idempotency_key": "iso-u"})
    )
    assert {row["budget"] for row in own["budgets"]} == {B_BUDGET}


def reservation_case(action: str, body: dict[str, Any]) -> Callable[[World], None]:
    def case(world: World) -> None:
        for reservation in (world.a_held, world.a_committed):
            for caller in (world.b_admin, world.b_bot):
                refused(caller.post(f"/v1/reservations/{reservation}/{action}", json=body), 404, "not_found")

    case.__name__ = f"reservation_{action}"
    return case


def headroom(world: World) -> None:
    assert [row["budget"] for row in ok(world.b_admin.get("/v1/headroom"))["budgets"]] == [B_BUDGET]
    assert [row["budget"] for row in ok(world.b_bot.get("/v1/headroom"))["budgets"]] == [B_BUDGET]
    for scope in ("sales", "sales/renewals", "support"):
        refused(world.b_admin.get("/v1/headroom", params={"scope": scope}), 404, "not_found")


def ledger(world: World) -> None:
    entries = b_ledger(world)
    assert entries, "B has entries of its own"
    assert {e["agent"] for e in entries} <= {None, "b-bot"}
    a_reservations = {world.a_held, world.a_committed}
    assert not a_reservations & {e["reservation"] for e in entries}
    assert all(p["budget"] == B_BUDGET for e in entries for p in e["postings"])
    assert b_ledger(world, agent="bot-7") == []
    refused(world.b_admin.get("/v1/ledger", params={"scope": "sales"}), 404, "not_found")  # A's scope: not B's
    a_entries = ok(world.a_admin.get("/v1/ledger", params={"limit": "1000"}))["entries"]
    newest_a = max(int(e["id"]) for e in a_entries)
    # A cursor past A's entries still pages through B's only.
    assert all(e["agent"] in (None, "b-bot") for e in b_ledger(world, cursor=str(newest_a + 1)))


def whoami(world: World) -> None:
    assert ok(world.b_admin.get("/v1/whoami"))["tenant"] == "other"
    assert ok(world.b_bot.get("/v1/whoami"))["tenant"] == "other"


def check(world: World) -> None:
    report = ok(world.b_admin.get("/v1/check"))
    assert report["tenant"] == "other" and report["is_consistent"]
    assert report["entries"] == len(b_ledger(world))


def get_config(world: World) -> None:
    document = ok(world.b_admin.get("/v1/config"))["config"]
    assert set(document["scopes"]) == {"ops"} and set(document["agents"]) == {"b-bot"}


def put_config(world: World) -> None:
    admin = world.b_admin
    current = ok(admin.get("/v1/config"))
    taken = {**B_CONFIG, "scopes": {**B_CONFIG["scopes"], "sales": {"owner": "b@other.example"}}}
    planned = ok(admin.put("/v1/config", params={"dry_run": "true"}, json=taken))
    assert [(c["op"], c["kind"], c["name"]) for c in planned["changes"]] == [("add", "scope", "sales")]
    applied = ok(admin.put("/v1/config", json=taken))
    assert applied["version"] == current["version"] + 1
    assert [(c["op"], c["name"]) for c in ok(admin.put("/v1/config", json=B_CONFIG))["changes"]] == [
        ("remove", "sales")
    ]


def list_scopes(world: World) -> None:
    assert [s["path"] for s in ok(world.b_admin.get("/v1/scopes"))["scopes"]] == ["ops"]


def get_scope(world: World) -> None:
    for path in ("sales", "sales/renewals"):
        refused(world.b_admin.get(f"/v1/scopes/{path}"), 404, "not_found")


def put_scope(world: World) -> None:
    created = ok(world.b_admin.put("/v1/scopes/sales", json={"owner": "b@other.example"}))
    assert [(c["op"], c["name"]) for c in created["changes"]] == [("add", "sales")]  # B's own, new
    assert ok(world.b_admin.get("/v1/scopes/sales"))["budgets"] == []
    ok(world.b_admin.delete("/v1/scopes/sales"))


def delete_scope(world: World) -> None:
    for path in ("sales/renewals", "support"):
        refused(world.b_admin.delete(f"/v1/scopes/{path}"), 404, "not_found")


def list_agents(world: World) -> None:
    assert [a["name"] for a in ok(world.b_admin.get("/v1/agents"))["agents"]] == ["b-bot"]


def get_agent(world: World) -> None:
    for name in world.a_agents:
        refused(world.b_admin.get(f"/v1/agents/{name}"), 404, "not_found")
        refused(world.b_bot.get(f"/v1/agents/{name}"), 404, "not_found")


def put_agent(world: World) -> None:
    created = ok(world.b_admin.put("/v1/agents/bot-7", json={"scope": "ops"}))
    assert [(c["op"], c["name"], c["after"]["scope"]) for c in created["changes"]] == [("add", "bot-7", "ops")]
    assert ok(world.a_bot.get("/v1/whoami"))["tenant"] == "default"  # A's bot-7 key still acts in A only
    ok(world.b_admin.delete("/v1/agents/bot-7"))


def delete_agent(world: World) -> None:
    for name in world.a_agents:
        refused(world.b_admin.delete(f"/v1/agents/{name}"), 404, "not_found")


def list_budgets(world: World) -> None:
    assert [b["id"] for b in ok(world.b_admin.get("/v1/budgets"))["budgets"]] == [B_BUDGET]
    assert ok(world.b_admin.get("/v1/budgets", params={"scope": "sales"}))["budgets"] == []


def get_budget(world: World) -> None:
    for budget in A_BUDGETS:
        refused(world.b_admin.get(f"/v1/budgets/{budget}"), 404, "not_found")


def put_budget(world: World) -> None:
    body = {"scope": "ops", "meter": "usd", "limit": "1", "window": "month"}
    created = ok(world.b_admin.put(f"/v1/budgets/{A_BUDGET}", json=body))
    assert [(c["op"], c["name"], c["after"]["scope"]) for c in created["changes"]] == [("add", A_BUDGET, "ops")]
    refused(world.b_admin.put(f"/v1/budgets/{A_BUDGET}", json={**body, "scope": "sales"}), 404, "not_found")
    ok(world.b_admin.delete(f"/v1/budgets/{A_BUDGET}"))


def delete_budget(world: World) -> None:
    for budget in A_BUDGETS:
        refused(world.b_admin.delete(f"/v1/budgets/{budget}"), 404, "not_found")


def keys(world: World) -> None:
    listed = {row["id"] for row in ok(world.b_admin.get("/v1/keys"))["keys"]}
    assert listed and not listed & set(world.a_key_ids)
    refused(world.b_admin.post("/v1/keys", json={"agent": "bot-7"}), 422, "unknown_agent")


def create_key(world: World) -> None:
    created = ok(world.b_admin.post("/v1/keys", json={"role": "admin", "name": "iso"}), 201)
    with client(str(world.b_admin.base_url), created["key"]) as fresh:
        assert ok(fresh.get("/v1/whoami"))["tenant"] == "other"
        assert ok(fresh.delete(f"/v1/keys/{created['id']}"))["is_active"] is False


def revoke_key(world: World) -> None:
    for key_id in world.a_key_ids:
        refused(world.b_admin.delete(f"/v1/keys/{key_id}"), 404, "not_found")


def rotate_key(world: World) -> None:
    for key_id in world.a_key_ids:
        refused(world.b_admin.post(f"/v1/keys/{key_id}/rotate"), 404, "not_found")


CASES: dict[tuple[str, str], Callable[[World], None]] = {
    ("/healthz", "GET"): public_health,
    ("/readyz", "GET"): public_ready,
    ("/metrics", "GET"): public_metrics,
    ("/openapi.json", "GET"): public_openapi,
    ("/v1/authorize", "POST"): authorize,
    ("/v1/usage", "POST"): usage,
    ("/v1/reservations/{reservation}/commit", "POST"): reservation_case("commit", {"idempotency_key": "iso-c"}),
    ("/v1/reservations/{reservation}/release", "POST"): reservation_case("release", {}),
    ("/v1/reservations/{reservation}/extend", "POST"): reservation_case("extend", {"lease_seconds": 60}),
    ("/v1/headroom", "GET"): headroom,
    ("/v1/ledger", "GET"): ledger,
    ("/v1/whoami", "GET"): whoami,
    ("/v1/check", "GET"): check,
    ("/v1/config", "GET"): get_config,
    ("/v1/config", "PUT"): put_config,
    ("/v1/scopes", "GET"): list_scopes,
    ("/v1/scopes/{path:path}", "GET"): get_scope,
    ("/v1/scopes/{path:path}", "PUT"): put_scope,
    ("/v1/scopes/{path:path}", "DELETE"): delete_scope,
    ("/v1/agents", "GET"): list_agents,
    ("/v1/agents/{name}", "GET"): get_agent,
    ("/v1/agents/{name}", "PUT"): put_agent,
    ("/v1/agents/{name}", "DELETE"): delete_agent,
    ("/v1/budgets", "GET"): list_budgets,
    ("/v1/budgets/{budget:path}", "GET"): get_budget,
    ("/v1/budgets/{budget:path}", "PUT"): put_budget,
    ("/v1/budgets/{budget:path}", "DELETE"): delete_budget,
    ("/v1/keys", "GET"): keys,
    ("/v1/keys", "POST"): create_key,
    ("/v1/keys/{key}", "DELETE"): revoke_key,
    ("/v1/keys/{key}/rotate", "POST"): rotate_key,
}


def test_every_case_is_a_served_route() -> None:
    stale = set(CASES) - set(served_routes())
    assert not stale, f"isolation cases for routes the app no longer serves: {sorted(stale)}"


@pytest.mark.parametrize(("path", "method"), served_routes(), ids=[f"{m} {p}" for p, m in served_routes()])
def test_another_tenant_can_read_or_change_nothing(world: World, path: str, method: str) -> None:
    case = CASES.get((path, method))
    assert case is not None, f"{method} {path} has no tenant-isolation case in {__file__}"
    before = tenant_state(world.a_admin)
    case(world)
    assert tenant_state(world.a_admin) == before
    # A's own keys and reservations still work as A's.
    assert ok(world.a_bot.get("/v1/whoami"))["tenant"] == "default"
    extended = ok(world.a_bot.post(f"/v1/reservations/{world.a_held}/extend", json={"lease_seconds": 3600}))
    assert extended["status"] == "held"
