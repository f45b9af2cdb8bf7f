"""Two `remit serve` processes on one PostgreSQL database never let a shared budget overspend.

How: a fresh PostgreSQL database (a failure, not a skip, under CI=true when PostgreSQL is
missing), a config whose one budget — limit 1000 units at the tenant root — every action
holds, and two server processes on it: the first prints the keys, the second prints none.
500 concurrent clients (asyncio + httpx, one connection each), split evenly over the two
servers, each loop authorize 1 unit → commit until denied; every request carries an
idempotency key, so a dropped connection is retried without acting twice. Exactly 1000 units
are committed (counted from the commit answers, from GET /v1/headroom on both servers and from
the ledger), no answer is a 5xx, every allow showed `used + held <= limit`, both servers
decided some of them, every denial names the budget, and GET /v1/check finds the counters
equal to the ledger rebuilt.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .servers import RemitServer, client, start_server

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LIMIT_UNITS = 1000
CLIENTS = 500
BUDGET = "/:units:total"
CONFIG = {
    # `total` never resets, so a run that crosses midnight cannot get a second window's worth.
    "tenant": {"timezone": "UTC", "budgets": [{"meter": "units", "limit": str(LIMIT_UNITS), "window": "total"}]},
    "meters": {"units": {"kind": "sum"}},
    "scopes": {"fleet": {"owner": "ops@example.com"}},
    "agents": {"worker": {"scope": "fleet"}},
}
RUN_TIMEOUT_SECONDS = 120.0
TRANSPORT_ATTEMPTS_MAX = 3


@dataclass
class Tally:
    committed_units: int = 0
    allows_by_server: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    denials: list[dict[str, Any]] = field(default_factory=list)
    overspent: list[dict[str, Any]] = field(default_factory=list)
    """Budget reports of allows where used + held > limit (must stay empty)."""
    transport_retries: int = 0


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any], tally: Tally) -> httpx.Response:
    """POST, retried on a dropped connection: every body carries an idempotency key, so a retry never acts twice."""
    for _ in range(TRANSPORT_ATTEMPTS_MAX - 1):
        try:
            return await http.post(path, json=body)
        except httpx.TransportError:
            tally.transport_retries += 1
    return await http.post(path, json=body)


async def run_client(number: int, url: str, key: str, tls: ssl.SSLContext, tally: Tally) -> None:
    """One agent with its own connection: hold 1 unit, commit it, again — until the budget says no."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=httpx.Timeout(60.0), verify=tls
    ) as http:
        for attempt in itertools.count():
            body = {"action": "unit.work", "amounts": {"units": "1"}, "idempotency_key": f"c{number}-{attempt}"}
            answer = await post(http, "/v1/authorize", body, tally)
            tally.statuses[answer.status_code] += 1
            if answer.status_code != 200:
                return
            decision = answer.json()
            if decision["decision"] != "allow":
                tally.denials.append(decision)
                return
            tally.allows_by_server[url] += 1
            for row in decision["budgets"]:
                if int(row["used"]) + int(row["held"]) > int(row["limit"]):
                    tally.overspent.append(row)
            path = f"/v1/reservations/{decision['reservation']}/commit"
            commit = await post(http, path, {"idempotency_key": f"commit-{number}-{attempt}"}, tally)
            tally.statuses[commit.status_code] += 1
            if commit.status_code != 200:
                return
            tally.committed_units += int(commit.json()["committed"].get("units", "0"))


async def run_fleet(servers: list[RemitServer], key: str) -> Tally:
    tally = Tally()
    tls = ssl.create_default_context()  # built once: httpx would build one per client (plain HTTP needs none)
    loops = [run_client(number, servers[number % len(servers)].url, key, tls, tally) for number in range(CLIENTS)]
    await asyncio.wait_for(asyncio.gather(*loops), RUN_TIMEOUT_SECONDS)
    return tally


def test_two_servers_share_one_budget_exactly(pg_url: str, tmp_path: Path) -> None:
    config_path = tmp_path / "shared.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    servers: list[RemitServer] = []
    try:
        servers.append(start_server(pg_url, tmp_path, config=config_path, is_logging_requests=False))
        servers.append(start_server(pg_url, tmp_path, config=config_path, is_logging_requests=False))
        first, second = servers
        assert first.admin_key is not None and set(first.agent_keys) == {"worker"}, first.stdout_lines
        # The second process finds the tenant bootstrapped: it prints no key at all.
        assert second.admin_key is None and second.agent_keys == {}, second.stdout_lines
        assert not any("rk_" in line for line in second.stdout_lines), second.stdout_lines
        assert any("already has keys" in line for line in second.stdout_lines), second.stdout_lines

        tally = asyncio.run(run_fleet(servers, first.agent_keys["worker"]))

        assert set(tally.statuses) == {200}, (tally.statuses, tally.transport_retries)  # no 5xx, no 4xx either
        assert tally.overspent == []
        assert tally.committed_units == LIMIT_UNITS
        assert sum(tally.allows_by_server.values()) == LIMIT_UNITS
        assert len(tally.allows_by_server) == 2 and min(tally.allows_by_server.values()) > 0, tally.allows_by_server
        assert len(tally.denials) == CLIENTS  # every client stopped at a denial, none at an error
        for denial in tally.denials:
            assert [reason["budget"] for reason in denial["reasons"]] == [BUDGET], denial
            assert denial["reservation"] is None

        for server in servers:  # both processes read the same state
            with client(server.url, first.admin_key) as admin:
                rows = {row["budget"]: row for row in admin.get("/v1/headroom").json()["budgets"]}
                assert (rows[BUDGET]["used"], rows[BUDGET]["held"], rows[BUDGET]["remaining"]) == ("1000", "0", "0")
                check = admin.get("/v1/check").json()
                assert check["is_consistent"], check["mismatches"]
        with client(first.url, first.admin_key) as admin:
            commits, cursor = 0, None
            while True:
                params = {"kind": "commit", "limit": "1000", **({"cursor": cursor} if cursor else {})}
                page = admin.get("/v1/ledger", params=params).json()
                commits += sum(int(p["used"]) for e in page["entries"] for p in e["postings"] if p["budget"] == BUDGET)
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert commits == LIMIT_UNITS
    finally:
        for server in servers:
            server.stop()
