"""The benchmarks start as the README runs them (`python bench/<name>.py`).

How: each script is run with --help in a subprocess. bench/http.py shares its name with the
standard library's `http` package; a script whose folder leads the import path would import it
in place of the standard library as soon as `remit` loads httpx — this once broke bench/engine.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", ["engine.py", "http.py"])
def test_a_bench_script_starts(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout
