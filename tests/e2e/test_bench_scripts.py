"""The benchmarks start as the README runs them (`python bench/<name>.py`).

How: each script is run with --help in a subprocess. bench/http.py shares its name with the
standard library's `http` package; a script whose folder leads the import path would import it
in place of the standard library as soon as `remit` loads httpx — this once broke bench/engine.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", ["engine.py", "http.py", "servers.py"])
def test_a_bench_script_starts(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout


def test_the_servers_bench_measures_a_server() -> None:
    """bench/servers.py end to end on the one server Remit depends on: a short real run."""
    command = [
        sys.executable, str(BENCH / "servers.py"), "--servers", "uvicorn-fastpath", "--runs", "1",
        "--seconds", "1", "--warmup", "0.5", "--agents", "16", "--json",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)["uvicorn-fastpath"]
    assert figures["requests_per_s"] > 100
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert figures["server_cpu_us_per_request"] > 0


def test_the_servers_bench_refuses_an_unknown_server() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "servers.py"), "--servers", "nginx"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown server 'nginx'" in result.stderr
