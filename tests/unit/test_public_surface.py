"""The public surface of `remit` is exactly the names a user needs, and importing it does no I/O.

How: `remit.__all__` is compared with the expected list and every name in it is resolved. The
import check runs `import remit` (and the modules it pulls in) in a fresh interpreter whose
working directory is an empty temporary directory, then lists that directory: a module that
opened a database (the default is ./remit.db) or wrote a file at import would leave
something behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import remit

EXPECTED = [
    "ActionInput",
    "AsyncClient",
    "Client",
    "ConfigError",
    "Conflict",
    "Decision",
    "Denied",
    "Engine",
    "InvalidRequest",
    "Local",
    "NotFound",
    "Outcome",
    "RemitError",
    "open_engine",
    "open_store",
]


def test_all_is_exactly_the_expected_list() -> None:
    assert sorted(remit.__all__) == sorted(EXPECTED)
    assert len(remit.__all__) == len(set(remit.__all__))


def test_every_exported_name_exists() -> None:
    for name in remit.__all__:
        assert getattr(remit, name, None) is not None, name


def test_exported_errors_share_the_base() -> None:
    for name in ("ConfigError", "Conflict", "Denied", "InvalidRequest", "NotFound"):
        assert issubclass(getattr(remit, name), remit.RemitError)
        assert isinstance(getattr(remit, name).code, str)


def test_star_import_gives_only_all() -> None:
    namespace: dict[str, object] = {}
    exec("from remit import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == sorted(EXPECTED)


CHILD = """
import os, sys
import remit, remit.config, remit.engine, remit.bootstrap, remit.client, remit.store.sqlite, remit.store.postgres
import remit.domain.windows, remit.domain.evaluation
print(sorted(os.listdir(".")))
"""


def test_importing_remit_does_no_io(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []
    assert result.stderr == ""
