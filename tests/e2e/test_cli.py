"""The `remit` command, run as a user runs it: a real process, real files, exit codes.

Proves the demo exhausts a budget and says why, that bad input gets one line and exit code 2,
that apply is idempotent and check passes on what the engine wrote, and that every command is
documented in the README.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from remit.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "remit.yaml"


def remit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    env.pop("REMIT_DATABASE_URL", None)
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
    assert '"consistent": true' in checked.stdout


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
    result = remit("check", "--database-url", f"sqlite:///{tmp_path / 'r.db'}", "--tenant", "nobody")
    assert result.returncode == 2
    assert "nobody" in result.stderr


@pytest.mark.parametrize(
    "command", sorted(c.name or c.callback.__name__ for c in app.registered_commands if c.callback)
)
def test_every_command_is_in_the_readme(command: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"remit {command}" in readme, f"`remit {command}` is not documented in README.md"
