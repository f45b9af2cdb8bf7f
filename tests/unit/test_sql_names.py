"""Both SQL dialects define the same named statements, and every name the store uses exists.

How: `load_statements` parses `-- name:` blocks of sql/sqlite.sql and sql/postgres.sql; the two
name sets must be equal and no block empty. The names the shared store code runs are read
from src/remit/store/base.py (and the dialect modules) with `ast`: every string literal passed
as the first argument to `_execute` or `_execute_many` must be defined in both dialects, and
every defined statement must be used somewhere (no dead SQL).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import remit.store
from remit.store.base import load_statements

STORE_DIR = Path(remit.store.__file__).parent
DIALECTS = ("sqlite", "postgres")


def used_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("_execute", "_execute_many", "_send")
        ):
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"{path.name}:{node.lineno}: statement names are literals, so this test can check them"
            )
            names.add(first.value)
    return names


def all_used_names() -> set[str]:
    return set().union(*(used_names(path) for path in STORE_DIR.glob("*.py")))


def test_dialects_define_the_same_names() -> None:
    sqlite, postgres = (set(load_statements(dialect)) for dialect in DIALECTS)
    assert sqlite - postgres == set(), "defined only in sqlite.sql"
    assert postgres - sqlite == set(), "defined only in postgres.sql"
    assert len(sqlite) >= 20


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_name_is_defined_twice(dialect: str) -> None:
    text = (STORE_DIR / "sql" / f"{dialect}.sql").read_text(encoding="utf-8")
    names = re.findall(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    assert len(names) == len(set(names)), sorted(name for name in set(names) if names.count(name) > 1)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_statement_has_a_body(dialect: str) -> None:
    for name, statement in load_statements(dialect).items():
        assert statement.strip(), f"{dialect}.sql: {name} is empty"
        assert not statement.rstrip().endswith(";"), f"{dialect}.sql: {name} keeps its trailing ';'"


def test_base_uses_only_defined_names() -> None:
    used = used_names(STORE_DIR / "base.py")
    assert len(used) >= 20
    for dialect in DIALECTS:
        missing = used - set(load_statements(dialect))
        assert not missing, f"{dialect}.sql lacks {sorted(missing)}"


def test_every_defined_statement_is_used() -> None:
    used = all_used_names()
    for dialect in DIALECTS:
        unused = set(load_statements(dialect)) - used
        assert not unused, f"{dialect}.sql defines statements nothing runs: {sorted(unused)}"
