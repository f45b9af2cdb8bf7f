"""The `remit` command, run as a user runs it: a real process, real files, exit codes.

Proves the demo exhausts a budget and says why, that bad input gets one line and exit code 2,
that apply is idempotent and check passes on what the engine wrote, and that every command is
documented in the README.

status, ledger, keys, apply --dry-run and check run twice: straight on a SQLite file
(`--database-url`, through `remit.Local`) and against a real `remit serve` (`--url --key`,
through `remit.Client`). Each path first has bot-7 hold 120.00 usd and commit 95.00, so the
tests assert the numbers that must follow: 95.00 used of 5000.00 on sales this month, 4905.00 left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import PG_ADMIN_URL, require_postgres
from e2e.servers import RemitServer, free_port, running
from remit.bootstrap import open_engine
from remit.cli import app
from remit.engine import ActionInput

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "remit.yaml"


def remit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # REMIT_URL / REMIT_KEY / REMIT_DATABASE_URL of the developer's shell must not pick the target.
    env = {name: value for name, value in os.environ.items() if not name.startswith("REMIT_")}
    env["COLUMNS"] = "160"
    return subprocess.run(
        [sys.executable, "-m", "remit.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT,
        env=env,
        check=False,
    )


def test_demo_exhausts_a_budget_and_names_it() -> None:
    result = remit("demo", "--actions", "40")
    assert result.returncode == 0, result.stderr
    assert "What each budget allowed, denied and has left" in result.stdout
    assert "ledger check: consistent" in result.stdout
    match = re.search(r"Decisions: (\d+) allow, (\d+) deny", result.stdout)
    assert match is not None, result.stdout
    assert int(match.group(1)) > 0 and int(match.group(2)) > 0
    # A denial names its budget and says when (or whether) a retry can succeed.
    assert re.search(r"sales/renewals:\S+: .* — (retry after \d+s|no retry can succeed)", result.stdout)


def test_demo_uses_the_packaged_config_outside_the_repository(tmp_path: Path) -> None:
    result = remit("demo", "--actions", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ledger check: consistent" in result.stdout


def test_packaged_demo_config_is_the_example() -> None:
    assert (ROOT / "src" / "remit" / "demo.yaml").read_text() == EXAMPLE.read_text()


def test_apply_twice_then_check(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = remit("apply", str(EXAMPLE), "--database-url", url, "--tenant", "acme")
    assert first.returncode == 0, first.stderr
    assert "version 1" in first.stdout
    second = remit("apply", str(EXAMPLE), "--database-url", url, "--tenant", "acme")
    assert second.returncode == 0, second.stderr
    checked = remit("check", "--database-url", url, "--tenant", "acme", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["is_consistent"] is True


def test_invalid_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "meters: {usd: {kind: sum}}\nscopes:\n  ops:\n    budgets:\n      - {meter: usd, limit: '5', window: hourly}\n"
    )
    result = remit("apply", str(bad), "--database-url", f"sqlite:///{tmp_path / 'r.db'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad.yaml" in lines[0] and "scopes.ops.budgets[0].window" in lines[0] and "hourly" in lines[0]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("meters:\n  usd: {kind: sum\n")
    result = remit("apply", str(bad), "--database-url", f"sqlite:///{tmp_path / 'r.db'}")
    assert result.returncode == 2
    assert "broken.yaml" in result.stderr and "line" in result.stderr


def test_unsupported_database_url_is_exit_2() -> None:
    result = remit("check", "--database-url", "mysql://nowhere/db")
    assert result.returncode == 2
    assert "unsupported database URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_of_unknown_tenant_is_exit_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert remit("init", "--database-url", url, "--tenant", "somebody").returncode == 0
    result = remit("check", "--database-url", url, "--tenant", "nobody")
    assert result.returncode == 2
    assert "nobody" in result.stderr


@pytest.mark.parametrize("command", [("status",), ("check",), ("ledger",), ("keys", "list"), ("expire",)])
def test_a_command_on_a_sqlite_file_that_does_not_exist_creates_none(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "typo.db"
    result = remit(*command, "--database-url", f"sqlite:///{missing}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"remit: no database at {missing} (`remit init` or `remit serve` creates one)"
    assert list(tmp_path.iterdir()) == []


def _command_names() -> list[str]:
    names = [c.name or c.callback.__name__ for c in app.registered_commands if c.callback]
    for group in app.registered_groups:
        assert group.typer_instance is not None
        group_name = group.name or group.typer_instance.info.name
        names += [f"{group_name} {c.name}" for c in group.typer_instance.registered_commands]
    return sorted(names)


@pytest.mark.parametrize("command", _command_names())
def test_every_command_is_in_the_readme(command: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"remit {command}" in readme, f"`remit {command}` is not documented in README.md"


# == status, ledger, keys, apply --dry-run and check: on a database and over a server ===========
CRM_BUDGET = "sales/renewals:usd:hour:crm.*"
MONTH_BUDGET = "sales:usd:month"
"""Numbers are asserted on a monthly budget: an hourly one could reset between the seed and the assertion."""
TENANT = "acme"


def remit_many(*commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands run side by side: each is mostly interpreter start-up."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: remit(*args), commands))


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single stderr line of a failed command (exit 2), holding every fragment."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("remit: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def changed_config(path: Path) -> Path:
    """The example with the crm budget raised to 700, bot-8 removed and a scope `marketing` added."""
    document = yaml.safe_load(EXAMPLE.read_text())
    for budget in document["scopes"]["sales/renewals"]["budgets"]:
        if budget.get("actions") == "crm.*":
            budget["limit"] = "700"
    del document["agents"]["bot-8"]
    document["scopes"]["marketing"] = {"owner": "mia@example.com"}
    path.write_text(yaml.safe_dump(document))
    return path


def assert_headroom_after_seed(status_json: str) -> None:
    headroom = json.loads(status_json)
    assert headroom["scope"] == "sales"
    rows = {row["budget"]: row for row in headroom["budgets"]}
    month = rows[MONTH_BUDGET]
    assert (month["limit"], month["used"], month["held"], month["remaining"]) == ("5000.00", "95.00", "0.00", "4905.00")
    assert month["burn_rate_per_hour"] == "95.00"
    assert month["resets_at"] is not None
    assert CRM_BUDGET in rows  # the subtree: sales/renewals too
    assert "/:usd:month" not in rows  # the tenant is above it


def assert_status_table(stdout: str) -> None:
    line = next(line for line in stdout.splitlines() if f" {MONTH_BUDGET} " in line)
    assert "95.00" in line and "5000.00" in line and "4905.00" in line, line
    assert "1.9%" in line, line  # 95 of 5000


def assert_dry_run_diff(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert f"~ budget {CRM_BUDGET}: limit 600.00 → 700.00" in lines, result.stdout
    assert "- agent bot-8" in lines, result.stdout
    assert "+ scope marketing: owner mia@example.com" in lines, result.stdout
    assert lines[-1].startswith("dry run: 3 changes, nothing applied"), result.stdout


def assert_ledger_after_seed(ledger_json: str) -> None:
    page = json.loads(ledger_json)
    kinds = [entry["kind"] for entry in page["entries"]]
    assert kinds == ["commit", "hold", "config"], kinds  # newest first; applying the config is an entry too
    commit = page["entries"][0]
    assert (commit["agent"], commit["action"]) == ("bot-7", "crm.discount.apply")
    crm = next(posting for posting in commit["postings"] if posting["budget"] == CRM_BUDGET)
    assert crm["used"] == "95.00"
    assert page["next_cursor"] is None


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file with tenant acme (the example config) where bot-7 held 120.00 and committed 95.00."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'remit.db'}"
    created = remit("init", "--database-url", url, "--tenant", TENANT, "--config", str(EXAMPLE))
    assert created.returncode == 0, created.stderr
    assert re.search(r"^admin key: rk_[0-9a-f]{16}_\S{43}$", created.stdout, re.MULTILINE), created.stdout
    assert re.search(r"^agent key bot-7: rk_\S+$", created.stdout, re.MULTILINE), created.stdout
    engine = open_engine(url)
    try:
        decision = engine.authorize(
            TENANT,
            ActionInput(
                agent="bot-7",
                action="crm.discount.apply",
                amounts={"usd": "120.00"},
                touches={"accounts": ["acct:42"]},
            ),
        )
        assert decision.is_allowed and decision.reservation_id is not None, decision
        engine.commit(TENANT, decision.reservation_id, {"usd": "95.00"})
    finally:
        engine.store.close()
    return url


def on_database(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return remit(*args, "--database-url", url, "--tenant", TENANT)


def test_init_prints_the_admin_key_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = remit("init", "--database-url", url, "--tenant", "solo")
    assert first.returncode == 0, first.stderr
    keys = re.findall(r"^admin key: (rk_\S+)$", first.stdout, re.MULTILINE)
    assert len(keys) == 1, first.stdout
    assert "agent key" not in first.stdout  # no config, no agents
    second = remit("init", "--database-url", url, "--tenant", "solo")
    assert second.returncode == 0, second.stderr
    assert "already has keys" in second.stdout
    assert "rk_" not in second.stdout


def test_status_on_a_database(database_url: str) -> None:
    as_json = on_database(database_url, "status", "sales", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert_headroom_after_seed(as_json.stdout)
    table = on_database(database_url, "status")
    assert table.returncode == 0, table.stderr
    assert_status_table(table.stdout)
    assert "/:usd:month" in table.stdout and "19905.00" in table.stdout  # no scope: the whole tenant


def test_status_of_an_unknown_scope_is_one_line(database_url: str) -> None:
    one_line_error(on_database(database_url, "status", "nowhere"), "nowhere")


def test_ledger_on_a_database(database_url: str) -> None:
    database = ("--database-url", database_url, "--tenant", TENANT)
    as_json, commits, followed, table, bad_since = remit_many(
        ("ledger", "--json", *database),
        ("ledger", "--kind", "commit", "--json", *database),
        ("ledger", "--limit", "1", "--all", "--json", *database),
        ("ledger", "--agent", "bot-7", *database),
        ("ledger", "--since", "yesterday", *database),
    )
    assert as_json.returncode == 0, as_json.stderr
    assert_ledger_after_seed(as_json.stdout)
    assert [entry["kind"] for entry in json.loads(commits.stdout)["entries"]] == ["commit"]
    assert [entry["kind"] for entry in json.loads(followed.stdout)["entries"]] == ["commit", "hold", "config"]
    assert table.returncode == 0, table.stderr
    assert "crm.discount.apply" in table.stdout and "commit" in table.stdout and "hold" in table.stdout
    assert "used 95.00" in table.stdout
    one_line_error(bad_since, "since")


def test_keys_on_a_database(database_url: str) -> None:
    created = on_database(database_url, "keys", "create", "--role", "agent", "--agent", "bot-8", "--name", "ci")
    assert created.returncode == 0, created.stderr
    match = re.search(r"^key: rk_([0-9a-f]{16})_(\S{43})$", created.stdout, re.MULTILINE)
    assert match is not None, created.stdout
    key_id, secret = match.groups()
    listed = json.loads(on_database(database_url, "keys", "list", "--json").stdout)["keys"]
    row = next(row for row in listed if row["id"] == key_id)
    assert (row["role"], row["agent"], row["name"], row["is_active"]) == ("agent", "bot-8", "ci", True)
    assert all("key" not in row for row in listed)  # a listing never shows a secret
    rotated = on_database(database_url, "keys", "rotate", key_id)
    assert rotated.returncode == 0, rotated.stderr
    new = re.search(rf"^key: rk_{key_id}_(\S{{43}})$", rotated.stdout, re.MULTILINE)
    assert new is not None and new.group(1) != secret, rotated.stdout
    revoked = on_database(database_url, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked agent key {key_id}" in revoked.stdout
    one_line_error(on_database(database_url, "keys", "create", "--role", "agent", "--agent", "nobody"), "nobody")


def test_apply_dry_run_on_a_database(database_url: str, tmp_path: Path) -> None:
    assert_dry_run_diff(on_database(database_url, "apply", str(changed_config(tmp_path / "c.yaml")), "--dry-run"))
    unchanged = on_database(database_url, "apply", str(EXAMPLE), "--dry-run")
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout.strip() == "no changes (version 1)"
    after = json.loads(on_database(database_url, "status", "sales", "--json").stdout)
    assert next(r for r in after["budgets"] if r["budget"] == CRM_BUDGET)["limit"] == "600.00"


def test_check_on_a_database(database_url: str) -> None:
    checked = on_database(database_url, "check")
    assert checked.returncode == 0, checked.stderr
    assert re.search(r"ledger check: consistent — 3 entries, \d+ counters rebuilt and equal", checked.stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemitServer]:
    """A real `remit serve` over a SQLite file; bot-7 held 120.00 and committed 95.00 through it."""
    directory = tmp_path_factory.mktemp("served")
    with running(f"sqlite:///{directory / 'remit.db'}", directory, is_logging_requests=False) as served:
        assert served.admin_key is not None, served.stdout_lines
        with served.client(served.agent_keys["bot-7"]) as bot:
            held = bot.post(
                "/v1/authorize",
                json={
                    "action": "crm.discount.apply",
                    "amounts": {"usd": "120.00"},
                    "touches": {"accounts": ["acct:42"]},
                },
            )
            assert held.status_code == 200 and held.json()["decision"] == "allow", held.text
            committed = bot.post(
                f"/v1/reservations/{held.json()['reservation']}/commit", json={"amounts": {"usd": "95.00"}}
            )
            assert committed.status_code == 200, committed.text
        yield served


def over_url(server: RemitServer, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return remit(*args, "--url", server.url, "--key", key or server.admin_key or "")


def test_status_over_a_server(server: RemitServer) -> None:
    connection = ("--url", server.url, "--key", server.admin_key or "")
    as_json, table, unknown = remit_many(
        ("status", "sales", "--json", *connection), ("status", *connection), ("status", "nowhere", *connection)
    )
    assert as_json.returncode == 0, as_json.stderr
    assert_headroom_after_seed(as_json.stdout)
    assert table.returncode == 0, table.stderr
    assert_status_table(table.stdout)
    one_line_error(unknown, "nowhere")


def test_ledger_over_a_server(server: RemitServer) -> None:
    as_json = over_url(server, "ledger", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert_ledger_after_seed(as_json.stdout)
    followed = json.loads(over_url(server, "ledger", "--limit", "1", "--all", "--json").stdout)
    assert [entry["kind"] for entry in followed["entries"]] == ["commit", "hold", "config"]


def test_apply_dry_run_over_a_server(server: RemitServer, tmp_path: Path) -> None:
    assert_dry_run_diff(over_url(server, "apply", str(changed_config(tmp_path / "c.yaml")), "--dry-run"))
    unchanged = over_url(server, "apply", str(EXAMPLE), "--dry-run")
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout.strip() == "no changes (version 1)"


def test_check_and_keys_over_a_server(server: RemitServer) -> None:
    checked = over_url(server, "check", "--json")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["is_consistent"] is True and report["entries"] == 3
    listed = json.loads(over_url(server, "keys", "list", "--json").stdout)["keys"]
    assert {row["agent"] for row in listed if row["role"] == "agent"} == {"bot-7", "bot-8", "helper-1"}


def test_bad_server_input_is_one_line(server: RemitServer, tmp_path: Path) -> None:
    wrong_key = "rk_0123456789abcdef_" + "A" * 43
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "meters: {usd: {kind: sum}}\nscopes:\n  ops:\n    budgets:\n      - {meter: usd, limit: '5', window: hourly}\n"
    )
    unknown_key, agent_key, no_key, unreachable, not_a_url, invalid_file = remit_many(
        ("status", "--url", server.url, "--key", wrong_key),
        ("keys", "list", "--url", server.url, "--key", server.agent_keys["bot-7"]),
        ("status", "--url", server.url),
        ("status", "--url", f"http://127.0.0.1:{free_port()}", "--key", wrong_key),
        ("status", "--url", "not a url", "--key", wrong_key),
        ("apply", str(bad), "--dry-run", "--url", server.url, "--key", server.admin_key or ""),
    )
    one_line_error(unknown_key, "not valid")
    one_line_error(agent_key, "admin")
    one_line_error(no_key, "--key")
    one_line_error(unreachable, "cannot reach")
    one_line_error(not_a_url, "not a url")
    one_line_error(invalid_file, "bad.yaml", "scopes.ops.budgets[0].window", "hourly")


def test_init_with_an_unknown_time_zone_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    refused = remit("init", "--database-url", url, "--tenant", "mars", "--timezone", "Mars/Olympus")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == ["remit: unknown IANA time zone 'Mars/Olympus'"], refused.stderr
    assert "rk_" not in refused.stdout
    created = remit("init", "--database-url", url, "--tenant", "mars", "--timezone", "Europe/Paris")
    assert created.returncode == 0, created.stderr
    assert re.search(r"^admin key: rk_\S+$", created.stdout, re.MULTILINE), created.stdout  # the tenant was new


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("ledger", "--limit", "0"), "remit: Invalid value for '--limit'"),
        (("keys", "create", "--role", "boss"), "remit: Invalid value for '--role'"),
        (("apply",), "remit: Missing argument 'file'"),
        (("bogus",), "remit: No such command 'bogus'"),
        (("serve", "--port", "abc"), "remit: Invalid value for '--port'"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: tuple[str, ...], expected: str) -> None:
    result = remit(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "--help" in lines[0] and "╭" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("args", [(), ("--help",), ("keys",), ("ledger", "--help")])
def test_help_is_exit_0_on_stdout(args: tuple[str, ...]) -> None:
    result = remit(*args)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "[OPTIONS]" in result.stdout and result.stderr == ""


def test_a_postgresql_database_that_does_not_exist_is_one_line() -> None:
    """psycopg's pool logs each failed connection; the CLI says it once, in its own words."""
    require_postgres()
    missing = PG_ADMIN_URL.rsplit("/", 1)[0] + "/remit_no_such_database"
    for command in (("status",), ("check",)):
        result = remit(*command, "--database-url", missing)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("remit: cannot open"), result.stderr
        assert "remit_no_such_database" in lines[0]


def test_into_a_pipe_tables_are_not_folded_at_80_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert remit("apply", str(EXAMPLE), "--database-url", url).returncode == 0
    env = {name: value for name, value in os.environ.items() if not name.startswith("REMIT_") and name != "COLUMNS"}
    piped = subprocess.run(
        [sys.executable, "-m", "remit.cli", "status", "--database-url", url],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    rows = [line for line in piped.stdout.splitlines() if "sales/renewals:usd:hour:crm.*" in line]
    assert len(rows) == 1, piped.stdout  # the whole id on the row, copyable
    assert "20000.00" in piped.stdout
