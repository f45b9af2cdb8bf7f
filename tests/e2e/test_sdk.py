"""The Python SDK against a real `remit serve` process, over SQLite and PostgreSQL.

Proves `action()` holds on enter, commits the held amounts (or the actuals given to
`act.commit`) on exit, releases on any exception — KeyboardInterrupt and asyncio cancellation
included — raises `Denied` with the reasons and `retry_after_seconds`, and keeps a one-second
lease alive from the background for as long as the block runs; that AsyncClient does the same;
that API errors arrive as the `RemitError` subclass their status names, with their code; and
that `Local` answers the same scenario with the same dicts as `Client`.

How: one server per module and backend (`module_server`); each test makes its own scope, agent
and agent key through the admin API, so no test can exhaust a budget another relies on. Only the
denial test uses the demo's bot-7, whose $250/day budget it exhausts. Effects are read back
through headroom and the ledger, not from the client's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remit
from remit.errors import ConfigError, Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized, Unavailable

from .conftest import fresh_database, store_of
from .servers import EXAMPLE_CONFIG, RemitServer, free_port


@pytest.fixture
def admin(module_server: RemitServer) -> Iterator[remit.Client]:
    with remit.Client(module_server.url, key=module_server.admin_key) as client:
        yield client


@pytest.fixture
def agent(module_server: RemitServer, admin: remit.Client) -> Iterator[tuple[str, remit.Client]]:
    """A fresh agent with $100/day and 5 accounts/day of its own, and a client holding its key."""
    name = new_agent(admin)
    key = admin.create_key("agent", agent=name)["key"]
    with remit.Client(module_server.url, key=key) as client:
        yield name, client


def new_agent(api: remit.Client | remit.Local, name: str | None = None) -> str:
    name = name or f"sdk-{uuid.uuid4().hex[:10]}"
    budgets = [
        {"meter": "usd", "limit": "100", "window": "day"},
        {"meter": "accounts", "limit": "5", "window": "day"},
    ]
    api.put_scope(f"sdk/{name}", {"owner": "qa@example.com", "budgets": budgets})
    api.put_agent(name, {"scope": f"sdk/{name}", "priority": "interactive"})
    return name


def usd_row(api: remit.Client, name: str) -> dict[str, Any]:
    rows = api.headroom(f"sdk/{name}")["budgets"]
    return next(row for row in rows if row["meter"] == "usd")


def kinds(api: remit.Client, action: str, reservation: str) -> list[str]:
    entries = api.ledger(action=action, order="asc")["entries"]
    return [entry["kind"] for entry in entries if entry["reservation"] == reservation]


def test_an_allowed_action_commits_the_held_amounts_on_exit(
    admin: remit.Client, agent: tuple[str, remit.Client]
) -> None:
    name, client = agent
    ran = False
    with client.action("crm.discount.apply", usd="40.00", touches={"accounts": ["acct:42"]}) as act:
        assert act.decision is not None and act.decision["decision"] == "allow"
        assert usd_row(admin, name)["held"] == "40.00"
        ran = True
    assert ran
    assert act.result is not None
    assert act.result["status"] == "committed"
    assert act.result["committed"] == {"usd": "40.00", "accounts": "1"}
    assert (usd_row(admin, name)["used"], usd_row(admin, name)["held"]) == ("40.00", "0.00")
    assert kinds(admin, "crm.discount.apply", act.reservation) == ["hold", "commit"]


def test_act_commit_posts_the_actuals_once(admin: remit.Client, agent: tuple[str, remit.Client]) -> None:
    name, client = agent
    with client.action("sdk.actuals", amounts={"usd": "40.00"}) as act:
        committed = act.commit(usd="25.50")
        with pytest.raises(Conflict) as again:
            act.commit(usd="1.00")
    assert again.value.code == "already_committed"
    assert act.result is committed
    assert (committed["committed"], committed["released"]) == ({"usd": "25.50"}, {"usd": "14.50"})
    assert usd_row(admin, name)["used"] == "25.50"
    assert kinds(admin, "sdk.actuals", act.reservation) == ["hold", "commit"]


@pytest.mark.parametrize("failure", [ValueError, KeyboardInterrupt])
def test_an_exception_in_the_block_releases_the_hold(
    admin: remit.Client, agent: tuple[str, remit.Client], failure: type[BaseException]
) -> None:
    name, client = agent
    with pytest.raises(failure), client.action("sdk.fails", usd="60.00") as act:
        assert usd_row(admin, name)["held"] == "60.00"
        raise failure("the action failed")
    assert act.result is not None and act.result["status"] == "released"
    assert (usd_row(admin, name)["used"], usd_row(admin, name)["held"]) == ("0.00", "0.00")
    assert kinds(admin, "sdk.fails", act.reservation) == ["hold", "release"]


def test_a_denial_raises_denied_with_reasons_and_retry_after(module_server: RemitServer) -> None:
    # examples/remit.yaml: bot-7 has $250/day of its own; crm.* actions are at most $150 each.
    with remit.Client(module_server.url, key=module_server.agent_keys["bot-7"]) as bot:
        for _ in range(2):
            with bot.action("crm.discount.apply", usd="120.00"):
                pass
        ran = False
        with pytest.raises(remit.Denied) as raised, bot.action("crm.discount.apply", usd="20.00"):
            ran = True
        assert not ran
        denied = raised.value
        assert (denied.code, denied.outcome) == ("denied", "deny")
        assert [(r["code"], r["budget"]) for r in denied.reasons] == [
            ("budget_exhausted", "sales/renewals/agent:bot-7:usd:day")
        ]
        assert isinstance(denied.retry_after_seconds, int)
        assert 0 < denied.retry_after_seconds <= 25 * 3600  # at the day's end in New York
        assert denied.decision["reservation"] is None
        day = next(b for b in denied.decision["budgets"] if b["budget"] == "sales/renewals/agent:bot-7:usd:day")
        assert (day["used"], day["remaining"]) == ("240.00", "10.00")

        with pytest.raises(remit.Denied) as too_big, bot.action("crm.discount.apply", usd="160.00"):
            pass
        assert "per_action_max_exceeded" in [r["code"] for r in too_big.value.reasons]


def test_the_lease_is_extended_in_the_background(admin: remit.Client, agent: tuple[str, remit.Client]) -> None:
    _, client = agent
    with client.action("sdk.slow", usd="10.00", lease_seconds=1) as act:
        time.sleep(2.5)  # past the 1 s lease: without the extender the hold expires and the commit is late
    assert act.extend_error is None
    assert act.result is not None
    assert (act.result["status"], act.result["is_late"]) == ("committed", False)
    history = kinds(admin, "sdk.slow", act.reservation)
    assert history[0] == "hold" and history[-1] == "commit"
    assert history.count("extend") >= 3
    assert "expire" not in history


def test_async_client_holds_commits_releases_and_denies(module_server: RemitServer, admin: remit.Client) -> None:
    name = new_agent(admin)

    async def scenario() -> None:
        async with remit.AsyncClient(module_server.url, key=module_server.admin_key, agent=name) as client:
            async with client.action("sdk.async", usd="30.00") as act:
                assert act.decision is not None and act.decision["decision"] == "allow"
            assert act.result is not None and act.result["committed"] == {"usd": "30.00"}

            async with client.action("sdk.async", usd="30.00") as actual:
                await actual.commit(usd="12.00")
            assert actual.result is not None and actual.result["released"] == {"usd": "18.00"}

            with pytest.raises(RuntimeError):
                async with client.action("sdk.async", usd="30.00") as failed:
                    raise RuntimeError("the action failed")
            assert failed.result is not None and failed.result["status"] == "released"

            with pytest.raises(remit.Denied) as denied:
                async with client.action("sdk.async", usd="90.00"):
                    pass
            assert [r["code"] for r in denied.value.reasons] == ["budget_exhausted"]

            answer = await client.authorize("sdk.async", usd="1.00")
            with pytest.raises(NotFound):
                await client.commit("res_missing")
            await client.release(answer["reservation"])

    asyncio.run(scenario())
    assert (usd_row(admin, name)["used"], usd_row(admin, name)["held"]) == ("42.00", "0.00")


def test_async_cancellation_releases_the_hold(module_server: RemitServer, admin: remit.Client) -> None:
    name = new_agent(admin)
    actions: list[Any] = []

    async def scenario() -> None:
        async with remit.AsyncClient(module_server.url, key=module_server.admin_key, agent=name) as client:
            entered = asyncio.Event()

            async def hold_forever() -> None:
                async with client.action("sdk.cancelled", usd="50.00") as act:
                    actions.append(act)
                    entered.set()
                    await asyncio.sleep(60)

            task = asyncio.get_running_loop().create_task(hold_forever())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    (act,) = actions
    assert act.result is not None and act.result["status"] == "released"
    assert usd_row(admin, name)["held"] == "0.00"
    assert kinds(admin, "sdk.cancelled", act.reservation) == ["hold", "release"]


def test_async_cancellation_at_any_moment_leaks_no_hold(module_server: RemitServer, admin: remit.Client) -> None:
    # Cancelled before the request left, while the server decided, or inside the block: whatever
    # the moment, every hold placed is released (close() waits for releases still in flight).
    name = new_agent(admin)

    async def scenario() -> None:
        async with remit.AsyncClient(module_server.url, key=module_server.admin_key, agent=name) as client:

            async def act() -> None:
                async with client.action("sdk.cancel.anytime", usd="1.00"):
                    await asyncio.sleep(60)

            for delay_ms in range(0, 40, 2):
                task = asyncio.get_running_loop().create_task(act())
                await asyncio.sleep(delay_ms / 1000)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(scenario())
    assert usd_row(admin, name)["held"] == "0.00"
    entries = admin.ledger(action="sdk.cancel.anytime", limit=1000)["entries"]
    placed = sum(1 for entry in entries if entry["kind"] == "hold")
    assert placed > 0
    assert sum(1 for entry in entries if entry["kind"] == "release") == placed


def test_async_lease_is_extended_in_the_background(module_server: RemitServer, admin: remit.Client) -> None:
    name = new_agent(admin)

    async def scenario() -> Any:
        async with remit.AsyncClient(module_server.url, key=module_server.admin_key, agent=name) as client:
            async with client.action("sdk.async.slow", usd="10.00", lease_seconds=1) as act:
                await asyncio.sleep(1.6)  # past the lease: without the extender the commit would be late
            return act

    act = asyncio.run(scenario())
    assert act.extend_error is None
    assert (act.result["status"], act.result["is_late"]) == ("committed", False)
    history = kinds(admin, "sdk.async.slow", act.reservation)
    assert history.count("extend") >= 3 and "expire" not in history


def test_api_errors_arrive_as_their_class_with_their_code(
    module_server: RemitServer, admin: remit.Client, agent: tuple[str, remit.Client]
) -> None:
    _, client = agent
    stranger = remit.Client(module_server.url, key="rk_0123456789abcdef_" + "A" * 43)
    with stranger, pytest.raises(Unauthorized) as unknown:
        stranger.whoami()
    assert unknown.value.code == "unauthorized"
    with pytest.raises(Forbidden):
        client.keys()
    with pytest.raises(NotFound) as missing:
        client.commit("res_missing")
    assert missing.value.code == "not_found"

    answer = client.authorize("sdk.errors", usd="1.00")
    client.commit(answer["reservation"])
    with pytest.raises(Conflict) as resolved:
        client.release(answer["reservation"])
    assert resolved.value.code == "already_committed"

    with pytest.raises(InvalidRequest) as no_agent:
        admin.authorize("sdk.errors", usd="1.00")
    assert (no_agent.value.code, no_agent.value.field) == ("invalid_field", "agent")
    with pytest.raises(InvalidRequest) as unknown_meter:
        client.authorize("sdk.errors", amounts={"nope": "1"})
    assert unknown_meter.value.code == "unknown_meter"
    with pytest.raises(InvalidRequest) as a_float:
        client.authorize("sdk.errors", usd=1.5)  # type: ignore[arg-type]
    assert a_float.value.code == "invalid_amount"
    with pytest.raises(ConfigError) as bad_config:
        admin.put_config({"meters": {"usd": {"kind": "bogus"}}}, dry_run=True)
    assert bad_config.value.code == "invalid_config" and bad_config.value.errors
    with pytest.raises(InvalidRequest) as bad_yaml:
        admin.put_config("meters: [unclosed", dry_run=True)
    assert bad_yaml.value.code == "invalid_json"

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = remit.Client(nowhere, key=module_server.admin_key, connect_timeout_seconds=2)
    with unreachable, pytest.raises(Unavailable) as down:
        unreachable.whoami()
    assert nowhere in down.value.message


def test_keys_config_and_reads_over_http(module_server: RemitServer, admin: remit.Client) -> None:
    name = new_agent(admin)
    created = admin.create_key("agent", agent=name, name="sdk test")
    assert created["role"] == "agent" and created["key"].startswith("rk_")
    with remit.Client(module_server.url, key=created["key"]) as client:
        assert client.whoami()["agent"] == name
        admin.rotate_key(created["id"])
        with pytest.raises(Unauthorized):
            client.whoami()
    assert created["id"] in [key["id"] for key in admin.keys()["keys"]]
    assert admin.revoke_key(created["id"])["is_active"] is False

    assert admin.whoami()["role"] == "admin"
    assert admin.check()["is_consistent"] is True
    version = admin.get_config()["version"]
    plan = admin.put_config(EXAMPLE_CONFIG.read_text(), dry_run=True)  # YAML text: the demo config again
    assert plan["dry_run"] is True and plan["version"] == version
    assert plan["changes"]  # it would remove this module's sdk/* scopes and agents
    assert admin.get_scope(f"sdk/{name}")["path"] == f"sdk/{name}"
    assert admin.get_agent(name)["scope"] == f"sdk/{name}"
    assert {row["meter"] for row in admin.budgets(f"sdk/{name}")["budgets"]} == {"usd", "accounts"}
    assert name in [agent["name"] for agent in admin.agents()["agents"]]
    assert f"sdk/{name}" in [scope["path"] for scope in admin.scopes()["scopes"]]
    admin.delete_agent(name)
    admin.delete_scope(f"sdk/{name}")
    with pytest.raises(NotFound):
        admin.get_scope(f"sdk/{name}")

    first = admin.ledger(limit=2)
    assert len(first["entries"]) == 2 and first["next_cursor"] is not None
    second = admin.ledger(limit=2, cursor=first["next_cursor"])
    assert int(second["entries"][0]["id"]) < int(first["entries"][-1]["id"])


def test_a_top_level_budget_by_id(admin: remit.Client) -> None:
    admin.put_scope("sdkflat", {"budgets": []})
    admin.put_budget("sdkflat-usd", {"scope": "sdkflat", "meter": "usd", "limit": "10", "window": "day"})
    assert admin.get_budget("sdkflat-usd")["limit"] == "10.00"
    admin.delete_budget("sdkflat-usd")
    with pytest.raises(NotFound):
        admin.get_budget("sdkflat-usd")


def test_a_nested_scopes_budget_by_id(admin: remit.Client) -> None:
    assert admin.get_budget("sales/renewals:accounts:day")["meter"] == "accounts"


def _comparable(value: Any) -> Any:
    """The answer with what must differ between two stores masked: ids, times, config versions, and
    the root budget's totals (the module's other tests spend from it on the server)."""
    masked = {"reservation", "lease_expires_at", "resets_at", "at", "projected_exhaustion_at", "id", "version"}
    if isinstance(value, dict):
        if value.get("scope") == "/":
            masked |= {"used", "held", "remaining"}
        return {key: "…" if key in masked else _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


def test_local_answers_the_same_scenario_as_client(
    module_server: RemitServer, admin: remit.Client, tmp_path: Path
) -> None:
    name = f"sdk-{uuid.uuid4().hex[:10]}"
    with fresh_database(store_of(module_server), tmp_path) as database_url, remit.Local(database_url) as local:
        local.put_config(EXAMPLE_CONFIG.read_text())
        answers: dict[str, list[Any]] = {"client": [], "local": []}
        apis: list[tuple[str, remit.Client | remit.Local]] = [("client", admin), ("local", local)]
        for label, api in apis:
            record = answers[label].append
            record(new_agent(api, name))
            api.agent = name
            allowed = api.authorize("sdk.same", usd="60.00", touches={"accounts": ["acct:1"]})
            record(allowed)
            record(api.authorize("sdk.same", usd="50.00"))
            record(api.commit(allowed["reservation"], {"usd": "55.00"}))
            with pytest.raises(Conflict) as resolved:
                api.release(allowed["reservation"])
            record((resolved.value.code, resolved.value.message.replace(allowed["reservation"], "…")))
            with pytest.raises(NotFound) as missing:
                api.extend("res_missing")
            record((missing.value.code, missing.value.message))
            with pytest.raises(remit.Denied) as denied, api.action("sdk.same", usd="50.00"):
                pass
            record(denied.value.reasons)
            with api.action("sdk.same", usd="5.00") as act:
                act.commit(usd="4.00")
            record(act.result)
            record(api.usage("sdk.same.usage", usd="1.00"))
            record(api.headroom(f"sdk/{name}"))
            record([(e["kind"], e["postings"]) for e in api.ledger(agent=name, order="asc")["entries"]])
            record(api.get_agent(name))
            record(api.budgets(f"sdk/{name}"))
        assert _comparable(answers["local"]) == _comparable(answers["client"])
        assert answers["local"][2]["decision"] == "deny"
