"""Keys across server processes, per-agent idempotency, scope edits, and the API's own rate limit.

How: real `remit serve` processes (two on one database where a change must cross processes),
raw HTTP. Each test asserts what a caller sees: statuses, error codes, balances.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from remit.bootstrap import open_store

from .conftest import STORES, fresh_database
from .servers import RemitServer, error_of, running

ACT = {"action": "crm.discount.apply", "amounts": {"usd": "1.00"}}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(params=STORES)
def two_servers(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with (
        fresh_database(request.param, tmp_path) as url,
        running(url, tmp_path) as first,
        running(url, tmp_path) as second,
    ):
        assert second.admin_key is None, "a second server prints no keys"
        yield first, second


def test_a_key_rotated_on_one_server_works_at_once_on_the_other(two_servers: tuple[RemitServer, RemitServer]) -> None:
    first, second = two_servers
    admin, bot = first.admin_key, first.agent_keys["bot-8"]
    assert admin is not None
    assert httpx.get(f"{second.url}/v1/whoami", headers=auth(bot)).status_code == 200  # cached on the second
    key_id = bot.split("_")[1]
    rotated = httpx.post(f"{first.url}/v1/keys/{key_id}/rotate", headers=auth(admin))
    assert rotated.status_code == 200
    new_key = rotated.json()["key"]
    assert httpx.get(f"{second.url}/v1/whoami", headers=auth(new_key)).status_code == 200
    old = httpx.get(f"{second.url}/v1/whoami", headers=auth(bot))
    assert old.status_code == 401 and error_of(old)["code"] == "unauthorized"


def test_concurrent_revocations_keep_one_admin_key(two_servers: tuple[RemitServer, RemitServer]) -> None:
    first, second = two_servers
    assert first.admin_key is not None
    created = httpx.post(f"{first.url}/v1/keys", headers=auth(first.admin_key), json={"role": "admin"})
    other_admin = created.json()["key"]
    statuses: list[int] = []

    def revoke(server: RemitServer, key: str, victim: str) -> None:
        statuses.append(httpx.delete(f"{server.url}/v1/keys/{victim.split('_')[1]}", headers=auth(key)).status_code)

    threads = [
        threading.Thread(target=revoke, args=(first, first.admin_key, other_admin)),
        threading.Thread(target=revoke, args=(second, other_admin, first.admin_key)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Asked of the store, not over HTTP: a process trusts a key it checked for a few seconds.
    store = open_store(first.database_url)
    try:
        with store.transaction(is_read_only=True) as tx:
            active = [row for row in tx.list_keys("default") if row.role == "admin" and row.revoked_at_us is None]
    finally:
        store.close()
    assert len(active) == 1, f"statuses {statuses}: exactly one admin key must remain"
    assert sorted(statuses) in ([200, 401], [200, 409])


def test_idempotency_keys_belong_to_one_agent(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url, running(url, tmp_path) as server:
        bot7, bot8 = server.agent_keys["bot-7"], server.agent_keys["bot-8"]
        first = httpx.post(f"{server.url}/v1/authorize", headers=auth(bot7), json={**ACT, "idempotency_key": "k-1"})
        other = {**ACT, "amounts": {"usd": "2.00"}, "idempotency_key": "k-1"}
        second = httpx.post(f"{server.url}/v1/authorize", headers=auth(bot8), json=other)
        assert first.json()["decision"] == second.json()["decision"] == "allow"
        assert first.json()["reservation"] != second.json()["reservation"]
        mismatch = httpx.post(f"{server.url}/v1/authorize", headers=auth(bot7), json=other)
        assert mismatch.status_code == 409 and error_of(mismatch)["code"] == "idempotency_mismatch"
        assert "'k-1'" in error_of(mismatch)["message"]


def test_editing_a_scopes_owner_keeps_its_budgets_and_removing_an_agent_revokes_its_keys(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url, running(url, tmp_path) as server:
        admin = server.admin_key
        assert admin is not None
        before = httpx.get(f"{server.url}/v1/scopes/sales/renewals", headers=auth(admin)).json()["budgets"]
        edited = httpx.put(f"{server.url}/v1/scopes/sales/renewals", headers=auth(admin), json={"owner": "kim"})
        assert [(c["op"], c["kind"]) for c in edited.json()["changes"]] == [("change", "scope")]
        after = httpx.get(f"{server.url}/v1/scopes/sales/renewals", headers=auth(admin)).json()
        assert after["owner"] == "kim" and after["budgets"] == before
        config = httpx.get(f"{server.url}/v1/config", headers=auth(admin)).json()["config"]
        del config["agents"]["bot-8"]
        bot8 = server.agent_keys["bot-8"]
        planned = httpx.put(f"{server.url}/v1/config?dry_run=true", headers=auth(admin), json=config).json()
        assert "revoked_keys" not in planned, "a dry run revokes nothing"
        assert httpx.get(f"{server.url}/v1/whoami", headers=auth(bot8)).status_code == 200
        applied = httpx.put(f"{server.url}/v1/config", headers=auth(admin), json=config).json()
        assert applied["revoked_keys"] == [bot8.split("_")[1]]
        assert httpx.get(f"{server.url}/v1/whoami", headers=auth(bot8)).status_code == 401


def test_an_agent_key_cannot_tell_other_scopes_from_missing_ones(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url, running(url, tmp_path) as server:
        helper = server.agent_keys["helper-1"]
        for scope in ("sales", "nowhere"):
            answer = httpx.get(f"{server.url}/v1/headroom", params={"scope": scope}, headers=auth(helper))
            assert answer.status_code == 404, scope
        own = httpx.get(f"{server.url}/v1/headroom", params={"scope": "support"}, headers=auth(helper))
        assert own.status_code == 200 and {b["scope"] for b in own.json()["budgets"]} == {"support"}


def test_past_the_rate_limit_a_key_gets_429_and_balances_do_not_move(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url, running(url, tmp_path, extra_args=("--rate-limit", "2")) as server:
        bot = server.agent_keys["bot-7"]
        with httpx.Client(base_url=server.url, headers=auth(bot)) as client:
            answers = [client.post("/v1/authorize", json=ACT) for _ in range(8)]
        statuses = [answer.status_code for answer in answers]
        assert statuses[:4] == [200] * 4, statuses  # the burst: twice the rate
        limited = [answer for answer in answers if answer.status_code == 429]
        assert limited, statuses
        assert error_of(limited[0])["code"] == "rate_limited" and int(limited[0].headers["retry-after"]) >= 1
        admin = server.admin_key
        assert admin is not None
        held = httpx.get(f"{server.url}/v1/headroom", params={"scope": "sales"}, headers=auth(admin)).json()
        month = next(b for b in held["budgets"] if b["budget"] == "sales:usd:month")
        assert month["held"] == f"{statuses.count(200)}.00"


def test_wrong_secrets_for_a_key_id_do_not_use_up_that_key(tmp_path: Path) -> None:
    """Key ids are not secret (listings, `prefix`): wrong secrets count against the sender's
    address, never against the real key, and past that address's limit they get 429 unread."""
    with fresh_database("sqlite", tmp_path) as url, running(url, tmp_path, extra_args=("--rate-limit", "2")) as server:
        bot = server.agent_keys["bot-7"]
        key_id = bot.split("_")[1]
        forged = f"rk_{key_id}_{'A' * (len(bot) - len(key_id) - 4)}"
        with httpx.Client(base_url=server.url, headers=auth(bot)) as client:
            assert client.get("/v1/whoami").status_code == 200  # checked and cached: 1 of its burst of 4
            with httpx.Client(base_url=server.url, headers=auth(forged)) as guesser:
                guesses = [guesser.get("/v1/whoami") for _ in range(8)]
            statuses = [answer.status_code for answer in guesses]
            assert statuses[:4] == [401] * 4, statuses  # the address's burst: twice the rate
            assert statuses[-1] == 429, statuses
            assert "invalid keys from this address" in error_of(guesses[-1])["message"]
            # The real key still has the rest of its own burst, and is still cached (no read
            # that the address's empty bucket would refuse).
            assert [client.get("/v1/whoami").status_code for _ in range(3)] == [200] * 3
