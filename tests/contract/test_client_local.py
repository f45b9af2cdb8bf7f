"""`remit.Local`, the SDK in-process over each store (SQLite, PostgreSQL).

Proves Local keeps the `action()` contract on the engine's own methods — commit of the held
amounts on exit, actuals once, release on any exception, `Denied` with reasons and a retry
time, a one-second lease kept alive from a thread — and that its admin calls (config as YAML
text, keys, headroom, the ledger, check) answer in the HTTP API's shapes and raise its errors.
Many threads sharing one Local never authorise past a limit. (Local against a real server on
the same scenario: tests/e2e/test_sdk.py.)

How: one database per module and store, and a fresh tenant per test in it (tenants share
nothing, and migrating a new database per test would triple the run time); the demo config is
applied as YAML text through Local itself; effects are read back through headroom, the ledger
and `check()`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remit
from conftest import EXAMPLE_CONFIG, fresh_database
from remit.errors import ConfigError, Conflict, InvalidRequest, NotFound

DAY_BUDGET = "sales/renewals/agent:bot-7:usd:day"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory.mktemp("local")) as url:
        yield url


@pytest.fixture
def local(module_database: str) -> Iterator[remit.Local]:
    """Local as bot-7 by default, in a tenant of its own with the demo config."""
    with remit.Local(module_database, tenant=f"t-{uuid.uuid4().hex[:10]}", agent="bot-7") as opened:
        opened.put_config(EXAMPLE_CONFIG.read_text())
        yield opened


def row(local: remit.Local, budget: str) -> dict[str, Any]:
    return next(b for b in local.headroom("sales")["budgets"] if b["budget"] == budget)


def history(local: remit.Local, reservation: str) -> list[str]:
    entries = local.ledger(agent="bot-7", order="asc")["entries"]
    return [entry["kind"] for entry in entries if entry["reservation"] == reservation]


def test_leaving_the_block_commits_the_held_amounts(local: remit.Local) -> None:
    with local.action("crm.discount.apply", usd="120.00", touches={"accounts": ["acct:42"]}) as act:
        assert act.decision is not None and act.decision["decision"] == "allow"
        assert row(local, DAY_BUDGET)["held"] == "120.00"
    assert act.result is not None
    assert act.result["committed"] == {"usd": "120.00", "accounts": "1"}
    assert (row(local, DAY_BUDGET)["used"], row(local, DAY_BUDGET)["held"]) == ("120.00", "0.00")
    assert history(local, act.reservation) == ["hold", "commit"]


def test_act_commit_posts_actuals_once(local: remit.Local) -> None:
    with local.action("crm.discount.apply", usd="120.00") as act:
        act.commit(usd="95.00")
        with pytest.raises(Conflict):
            act.release()
    assert act.result is not None and act.result["released"] == {"usd": "25.00"}
    assert row(local, DAY_BUDGET)["used"] == "95.00"
    assert history(local, act.reservation) == ["hold", "commit"]


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_an_exception_releases_the_hold(local: remit.Local, failure: type[BaseException]) -> None:
    with pytest.raises(failure), local.action("crm.discount.apply", usd="120.00") as act:
        raise failure("the discount service failed")
    assert act.result is not None and act.result["status"] == "released"
    assert (row(local, DAY_BUDGET)["used"], row(local, DAY_BUDGET)["held"]) == ("0.00", "0.00")
    assert history(local, act.reservation) == ["hold", "release"]


def test_release_inside_the_block_ends_the_hold(local: remit.Local) -> None:
    with local.action("crm.discount.apply", usd="120.00") as act:
        act.release()
    assert history(local, act.reservation) == ["hold", "release"]


def test_a_denial_raises_denied_and_the_block_never_runs(local: remit.Local) -> None:
    for _ in range(2):
        with local.action("crm.discount.apply", usd="120.00"):
            pass
    ran = False
    with pytest.raises(remit.Denied) as raised, local.action("crm.discount.apply", usd="20.00"):
        ran = True
    assert not ran
    assert [(r["code"], r["budget"]) for r in raised.value.reasons] == [("budget_exhausted", DAY_BUDGET)]
    assert raised.value.retry_after_seconds is not None and raised.value.retry_after_seconds > 0
    assert row(local, DAY_BUDGET)["held"] == "0.00"


def test_the_lease_is_extended_from_a_thread(local: remit.Local) -> None:
    with local.action("crm.discount.apply", usd="10.00", lease_seconds=1) as act:
        time.sleep(1.5)  # past the lease: without the extender the commit would be late
    assert act.extend_error is None
    assert act.result is not None and act.result["is_late"] is False
    kinds = history(local, act.reservation)
    assert kinds.count("extend") >= 3 and "expire" not in kinds


def test_threads_sharing_a_local_never_pass_a_limit(local: remit.Local) -> None:
    outcomes: list[str] = []

    def spend() -> None:
        for _ in range(5):
            try:
                with local.action("crm.discount.apply", usd="10.00"):
                    outcomes.append("allow")
            except remit.Denied:
                outcomes.append("deny")

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("allow") == 25  # bot-7's $250 a day, $10 at a time
    assert row(local, DAY_BUDGET)["used"] == "250.00"
    assert local.check()["is_consistent"] is True


def test_usage_and_errors_in_the_api_shapes(local: remit.Local) -> None:
    counted = local.usage("llm.chat", agent="helper-1", task="t-1", tokens="1500")
    assert counted["status"] == "counted" and counted["overrun"] == {}
    with pytest.raises(NotFound):
        local.commit("res_missing")
    with pytest.raises(InvalidRequest) as unknown:
        local.authorize("crm.discount.apply", amounts={"nope": "1"})
    assert unknown.value.code == "unknown_meter"
    with pytest.raises(InvalidRequest) as twice:
        local.authorize("crm.discount.apply", amounts={"usd": "1"}, usd="2")
    assert twice.value.code == "invalid_field"
    with pytest.raises(ConfigError):
        local.put_config("meters: {usd: {kind: bogus}}", dry_run=True)
    with pytest.raises(InvalidRequest) as bad_yaml:
        local.put_config("meters: [unclosed")
    assert bad_yaml.value.code == "invalid_json"


def test_config_keys_and_reads(local: remit.Local) -> None:
    again = local.put_config(EXAMPLE_CONFIG.read_text(), dry_run=True)
    assert again == {"dry_run": True, "version": local.get_config()["version"], "changes": []}
    assert local.whoami() == {"tenant": local.tenant, "key": "local", "role": "admin", "agent": None}
    created = local.create_key("agent", agent="bot-8")
    assert created["key"].startswith("rk_")
    assert local.rotate_key(created["id"])["rotated_at"] is not None
    assert local.revoke_key(created["id"])["is_active"] is False
    assert [key["id"] for key in local.keys()["keys"]] == [created["id"]]
    with pytest.raises(Conflict) as last_admin:
        admin = local.create_key("admin")
        local.revoke_key(admin["id"])
    assert last_admin.value.code == "last_admin_key"
    assert local.get_scope("sales/renewals")["owner"] == "jane@example.com"
    assert local.get_budget("support:tokens:day")["limit"] == "2000000"
    with local.action("crm.discount.apply", usd="1.00"):
        pass
    page = local.ledger(limit=1, order="asc")
    assert page["entries"][0]["kind"] == "config" and page["next_cursor"] is not None


def test_tenants_are_apart_and_a_path_is_a_database(tmp_path: Path) -> None:
    path = tmp_path / "remit.db"
    with remit.Local(path) as first, remit.Local(str(path), tenant="acme") as second:
        first.put_config(EXAMPLE_CONFIG.read_text())
        assert second.get_config()["version"] == 0
        assert second.scopes() == {"scopes": []}
        with pytest.raises(InvalidRequest) as unknown:
            second.authorize("crm.discount.apply", agent="bot-7", usd="1.00")
        assert unknown.value.code == "unknown_agent"


def test_the_runnable_example_in_the_docs_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "sdk.md").read_text()
    section = text.split("## A runnable example", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    printed: list[str] = []
    exec(compile(code, "docs/sdk.md", "exec"), {"print": lambda *parts: printed.append(" ".join(map(str, parts)))})
    assert printed[0] == "committed 95.00"
    assert printed[1].startswith("denied: budget_exhausted retry after ")
    assert printed[2] == "remaining 155.00"


class LostAnswers(remit.Local):
    """Local whose chosen requests land in the store but whose answers are lost (a reset connection):
    the worst case for a retry, which must not act twice."""

    def __init__(self, database: str, tenant: str, losses: dict[str, int]) -> None:
        super().__init__(database, tenant=tenant, agent="bot-7")
        self.losses = losses

    def _call(self, call: Any) -> Any:
        answer = super()._call(call)
        if self.losses.get(call.operation, 0) > 0:
            self.losses[call.operation] -= 1
            raise remit.errors.Unavailable("the connection was reset after the request landed")
        return answer


@pytest.mark.parametrize("losses", [{"authorize": 2}, {"commit": 3}, {"authorize": 1, "commit": 1}])
def test_action_retries_lost_answers_and_acts_once(module_database: str, losses: dict[str, int]) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with LostAnswers(module_database, tenant, dict(losses)) as flaky:
        flaky.put_config(EXAMPLE_CONFIG.read_text())
        with flaky.action("crm.discount.apply", usd="10.00") as act:
            pass
        assert act.result is not None and act.result["status"] == "committed"
        assert row(flaky, DAY_BUDGET)["used"] == "10.00" and row(flaky, DAY_BUDGET)["held"] == "0.00"
        kinds = [entry["kind"] for entry in flaky.ledger(agent="bot-7", order="asc")["entries"]]
        assert kinds == ["hold", "commit"], "one hold and one commit, however many attempts"
        assert flaky.check()["is_consistent"]


def test_action_gives_up_after_its_attempts_having_acted_once(module_database: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with LostAnswers(module_database, tenant, {"commit": 99}) as flaky:
        flaky.put_config(EXAMPLE_CONFIG.read_text())
        with pytest.raises(remit.errors.Unavailable), flaky.action("crm.discount.apply", usd="10.00"):
            pass
        # Every attempt carried the same key: the first landed, the rest replayed it.
        assert row(flaky, DAY_BUDGET)["used"] == "10.00"
        assert [e["kind"] for e in flaky.ledger(agent="bot-7", order="asc")["entries"]] == ["hold", "commit"]
