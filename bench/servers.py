"""Is the HTTP server in the way? Canned decision answers from each server, no Remit behind them.

The same load as bench/http.py (`bench/loadgen.c`, 256 keep-alive agents looping authorize →
commit, closed loop) against servers that answer from `bench/bare/bare_apps.py` with fixed bytes, two
worker processes each. The server CPU per request here is what the server itself costs; the
difference to bench/http.py's figure is Remit's handler and engine.

    python bench/servers.py                    # every server that is installed, median of 3 runs
    python bench/servers.py --servers uvicorn-fastpath,granian-rsgi --runs 5

uvicorn is one of Remit's dependencies; granian is not (`.venv/bin/pip install granian` to
include it; a server that is not installed is skipped with a note).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# As in bench/http.py: this folder holds http.py, which must not shadow the standard library
# (bench/http.py, loaded below, imports urllib).
BENCH = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == BENCH:
    sys.path.pop(0)
sys.path.append(str(BENCH))

SERVERS: dict[str, list[str]] = {
    "uvicorn-fastpath": [
        sys.executable, "-m", "uvicorn", "bare_apps:asgi", "--http", "bare_apps:FastPathProtocol",
        "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
    ],
    "uvicorn-asgi": [
        sys.executable, "-m", "uvicorn", "bare_apps:asgi", "--http", "httptools",
        "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
    ],
    "granian-rsgi": [
        sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--log-level", "warning",
        "bare_apps:rsgi",
    ],
    "granian-asgi": [
        sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--log-level", "warning",
        "bare_apps:asgi",
    ],
}  # fmt: skip
START_SECONDS_MAX = 30
APPS = BENCH / "bare"
"""Where `bare_apps` is imported from: not this folder, whose http.py would shadow the standard library's."""


def _http_bench() -> Any:
    """bench/http.py's helpers (it cannot be imported by its name: `http` is the standard library's)."""
    spec = importlib.util.spec_from_file_location("remit_bench_http", BENCH / "http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_installed(name: str) -> bool:
    return importlib.util.find_spec(name.split("-", maxsplit=1)[0]) is not None


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the server did not listen on {port} within {START_SECONDS_MAX} s")


def one_run(name: str, bench: Any, binary: Path, keys: Path, args: argparse.Namespace) -> dict[str, float]:
    port = bench.free_port()
    where = "--app-dir" if name.startswith("uvicorn") else "--working-dir"
    command = [*SERVERS[name], "--workers", str(args.workers), "--host", "127.0.0.1", "--port", str(port)]
    command += [where, str(APPS)]
    env = {**os.environ, "PYTHONPATH": str(APPS)}  # spawned workers import bare_apps afresh
    process = subprocess.Popen(
        command, cwd=APPS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_listening(port, process)
        time.sleep(1.0)  # every worker up, not only the first to accept
        load = [
            str(binary), "127.0.0.1", str(port), str(args.agents), str(args.warmup), str(args.seconds), str(keys),
            "1.00",
        ]  # fmt: skip
        cpu_before = bench.cpu_seconds(process.pid)
        done = subprocess.run(load, capture_output=True, text=True, check=False)
        cpu_used = bench.cpu_seconds(process.pid) - cpu_before
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the whole group: the workers too, not only their supervisor
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if done.returncode != 0:
        raise SystemExit(f"{name}: load generator exit {done.returncode}: {done.stderr}{done.stdout}")
    figures = json.loads(done.stdout)
    if figures["errors"]:
        raise SystemExit(f"{name}: {figures['errors']} request errors, first: {figures['first_error']}")
    requests = figures["total_authorizations"] + figures["total_commits"]
    return {
        "requests_per_s": figures["requests_per_s"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "server_cpu_us_per_request": 1e6 * cpu_used / requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--agents", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    names = [name for name in args.servers.split(",") if name]
    unknown = [name for name in names if name not in SERVERS]
    if unknown:
        parser.error(f"unknown server {unknown[0]!r}; choose from {', '.join(SERVERS)}")
    if shutil.which("cc") is None:
        raise SystemExit("a C compiler (cc) is needed for bench/loadgen.c")
    bench = _http_bench()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        binary = bench.compile_loadgen(Path(directory))
        keys = Path(directory) / "keys.txt"
        keys.write_text("".join(f"agent-{i} key-{i}\n" for i in range(args.agents)))
        for name in names:
            if not _is_installed(name):
                print(f"{name}: not installed, skipped", file=sys.stderr)
                continue
            runs = []
            for number in range(args.runs):
                runs.append(one_run(name, bench, binary, keys, args))
                row = runs[-1]
                print(
                    f"{name} run {number + 1}/{args.runs}: {row['requests_per_s']:,.0f} requests/s, "
                    f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                    f"{row['server_cpu_us_per_request']:.1f} µs of server CPU a request",
                    file=sys.stderr,
                )
            results[name] = {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'server':<18}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'µs/request':>12}")
    for name, row in results.items():
        print(
            f"{name:<18}{row['requests_per_s']:>12,.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['server_cpu_us_per_request']:>12.1f}"
        )
    print(f"(median of {args.runs} runs; {args.agents} agents, closed loop; {args.workers} worker processes each)")


if __name__ == "__main__":
    main()
