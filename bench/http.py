"""Authorize → commit over HTTP: one `remit serve` process, 256 simulated agents in another.

The bench starts `remit serve` on a free port with a fresh store and a config of one hot tenant
budget, one hot scope budget shared by every agent and a budget per agent (limits large enough
that nothing is denied), each agent with its own agent key. The load generator
(`bench/loadgen.c`, compiled on first use with `cc`) keeps one keep-alive connection per agent,
each looping authorize → commit of the reservation it was given. After WARMUP seconds it measures
for SECONDS, then lets every connection finish its pair. Every run must end with no request
errors, no hold left live, and `GET /v1/check` reporting a consistent ledger.
Figures are the median of --runs runs (default 5):

    python bench/http.py                         # table
    python bench/http.py --json                  # {"sqlite": {...}, "postgres": {...}}
    python bench/http.py --stores sqlite --runs 1 --no-log-requests
    python bench/http.py --workers 1             # one server process (default: one per core)
    python bench/http.py --server-cpus 0 --load-cpus 1     # pin with taskset
    python bench/http.py --profile /tmp/prof     # py-spy the server in the measured window

`decisions_per_s` counts authorize answers in the measured window (each allowed one is also
committed, so the server handles about twice as many requests); `p50_ms`/`p99_ms` are authorize
latencies as the agents saw them. The request log is on (as in production) and goes to a file.
PostgreSQL comes from REMIT_BENCH_PG (default postgresql://127.0.0.1:5432/postgres); each run
uses a fresh database created beside it and dropped afterwards. REMIT_BENCH_PYTHONPATH puts
another copy of the package in front (for trying changes without editing src/).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: run as a script, its folder would shadow the standard library's
# `http` package (which urllib needs), so the folder leaves the import path first.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parent))  # last: for pgdatabase and configs, never before the stdlib

import argparse
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from configs import hot_tenant_config
from pgdatabase import PgDatabase

LOADGEN_SOURCE = Path(__file__).with_name("loadgen.c")
SERVER_START_SECONDS_MAX = 60
AMOUNT_USD = "1.00"


def compile_loadgen(directory: Path) -> Path:
    binary = directory / "remit-loadgen"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(LOADGEN_SOURCE)], check=True)
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(command: list[str], cpus: str | None, niceness: int = 0) -> list[str]:
    """The command under taskset (CPU list) and nice (negative raises the priority; needs root)."""
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    return ["nice", "-n", str(niceness), *command] if niceness else command


def raise_priority(niceness: int) -> None:
    """With scheduler autogroups, `nice` only ranks processes within one session; the session's
    own weight against other sessions (other people's test runs) is set through /proc/self/autogroup."""
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        try:
            autogroup.write_text(str(niceness))
        except OSError as error:
            print(f"cannot set the autogroup's niceness: {error}", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants (the worker processes of `--workers`)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return own + sum(cpu_seconds(child) for child in children)


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), sum(fields) / os.sysconf("SC_CLK_TCK")


class Server:
    """`remit serve` as a child process; its stdout gives the keys, its stderr goes to a file."""

    def __init__(self, database_url: str, config_path: Path, log_path: Path, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-c", "import sys; from remit.cli import main; sys.exit(main())", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--database-url", database_url,
            "--tenant", "bench", "--config", str(config_path),
        ]  # fmt: skip
        if not args.log_requests:
            command.append("--no-log-requests")
        if args.workers > 1:
            command += ["--workers", str(args.workers)]
        env = dict(os.environ)
        if os.environ.get("REMIT_BENCH_PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["REMIT_BENCH_PYTHONPATH"]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            pinned(command, args.server_cpus, args.nice), stdout=subprocess.PIPE, stderr=self._log, env=env, text=True
        )
        self.admin_key = ""
        self.agent_keys: dict[str, str] = {}
        self._read_keys()

    def _read_keys(self) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + SERVER_START_SECONDS_MAX
        for line in self.process.stdout:
            if match := re.match(r"admin key: (\S+)", line):
                self.admin_key = match.group(1)
            elif match := re.match(r"agent key (\S+): (\S+)", line):
                self.agent_keys[match.group(1)] = match.group(2)
            elif line.startswith("remit serving"):
                break
            if time.monotonic() > deadline:
                break
        while time.monotonic() < deadline:
            try:
                self.get("/readyz")
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"benchmark invalid: the server did not start (exit {self.process.poll()})")

    def get(self, path: str, key: str | None = None) -> bytes:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def load(binary: Path, server: Server, keys_path: Path, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    command = [
        str(binary), "127.0.0.1", str(server.port), str(args.agents), str(args.warmup), str(seconds),
        str(keys_path), AMOUNT_USD, str(args.rate),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(pinned(command, args.load_cpus, args.nice), capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"benchmark invalid: load generator exit {done.returncode}: {done.stderr}{done.stdout}")
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["cpu_seconds"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if figures["errors"]:
        raise SystemExit(f"benchmark invalid: {figures['errors']} request errors, first: {figures['first_error']}")
    if figures["total_commits"] != figures["total_allowed"]:
        raise SystemExit(f"benchmark invalid: {figures['total_allowed']} allowed, {figures['total_commits']} committed")
    return figures


def profile(pid: int, path: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """py-spy over the measured window only (it starts once the warm-up is over)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    record = (
        f"{py_spy} record --pid {pid} --rate 250 --duration {int(args.seconds)} --format raw --threads --subprocesses"
    )
    command = ["sh", "-c", f"sleep {args.warmup}; exec {record} --nonblocking -o {path}"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_run(kind: str, binary: Path, args: argparse.Namespace, number: int) -> dict[str, float]:
    pg = PgDatabase() if kind == "postgres" else None
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        url = pg.url if pg else f"sqlite:///{work / 'bench.db'}"
        config_path = work / "bench.json"
        config_path.write_text(json.dumps(hot_tenant_config(args.agents)))
        server = Server(url, config_path, Path(args.log_dir or directory) / f"server-{kind}-{number}.log", args)
        try:
            if len(server.agent_keys) != args.agents:
                raise SystemExit(f"benchmark invalid: {len(server.agent_keys)} agent keys printed")
            keys_path = work / "keys.txt"
            keys_path.write_text("".join(f"{agent} {key}\n" for agent, key in server.agent_keys.items()))
            spy = profile(server.process.pid, f"{args.profile}-{kind}-{number}.txt", args) if args.profile else None
            cpu_before = cpu_seconds(server.process.pid)
            busy_before, total_before = machine_busy_seconds()
            started = time.perf_counter()
            figures = load(binary, server, keys_path, args, args.seconds)
            elapsed = time.perf_counter() - started
            cpu_used = cpu_seconds(server.process.pid) - cpu_before
            busy_after, total_after = machine_busy_seconds()
            if spy:
                spy.wait()
            check = json.loads(server.get("/v1/check", server.admin_key))
            if not check["is_consistent"]:
                raise SystemExit(f"benchmark invalid: ledger check failed: {check['mismatches'][:3]}")
            metrics = server.get("/metrics").decode()
            holds_live = metric(metrics, "remit_holds_live")
            if holds_live:
                raise SystemExit(f"benchmark invalid: {holds_live:.0f} holds still live after the run")
            batch_mean = metric(metrics, "remit_batch_size_sum") / max(1.0, metric(metrics, "remit_batch_size_count"))
        finally:
            server.stop()
            if pg:
                pg.drop()
    requests = figures["total_authorizations"] + figures["total_commits"]
    return {
        "decisions_per_s": figures["decisions_per_s"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "p90_ms": figures["p90_ms"],
        "max_ms": figures["max_ms"],
        "commit_p50_ms": figures["commit_p50_ms"],
        "commit_p99_ms": figures["commit_p99_ms"],
        "requests_per_s": figures["requests_per_s"],
        "denied": figures["denied"],
        "server_cpu_percent": 100 * cpu_used / elapsed,
        "server_cpu_us_per_request": 1e6 * cpu_used / requests,
        "batch_size_mean": batch_mean,
        "load_cpu_percent": 100 * figures["cpu_seconds"] / elapsed,
        "others_cpu_percent": 100 * (busy_after - busy_before) / elapsed
        - 100 * (cpu_used + figures["cpu_seconds"]) / elapsed,
        "machine_busy_percent": 100 * (busy_after - busy_before) / (total_after - total_before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--agents", type=int, default=256, help="concurrent agents (connections)")
    parser.add_argument(
        "--rate", type=float, default=0, help="pace the agents to this many decisions/s in all (0: closed loop)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before it")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="`remit serve --workers N`: server processes (default: one per core)",
    )
    parser.add_argument("--log-requests", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--server-cpus", help="taskset CPU list for the server, e.g. 0")
    parser.add_argument("--load-cpus", help="taskset CPU list for the load generator, e.g. 1")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run server and load generator at this niceness (e.g. -10 on a busy machine)",
    )
    parser.add_argument("--log-dir", help="keep the server's stderr (request log) here")
    parser.add_argument("--profile", help="py-spy the server in each run; raw stacks to PREFIX-store-run.txt")
    args = parser.parse_args()
    if args.nice:
        raise_priority(args.nice)
    with tempfile.TemporaryDirectory() as directory:
        binary = compile_loadgen(Path(directory))
        figures: dict[str, dict[str, float]] = {}
        for kind in args.stores.split(","):
            runs = []
            for number in range(args.runs):
                runs.append(one_run(kind, binary, args, number + 1))
                if not args.json:
                    row = runs[-1]
                    print(
                        f"{kind} run {number + 1}/{args.runs}: {row['decisions_per_s']:,.0f} decisions/s, "
                        f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                        f"server CPU {row['server_cpu_percent']:.0f}% "
                        f"({row['server_cpu_us_per_request']:.0f} µs/request), "
                        f"load gen CPU {row['load_cpu_percent']:.0f}%, other CPU {row['others_cpu_percent']:.0f}% "
                        f"(database, kernel, other work), batch {row['batch_size_mean']:.1f}",
                        file=sys.stderr,
                    )
            figures[kind] = {
                key: round(statistics.median(run[key] for run in runs), 2 if key.endswith("_ms") else 1)
                for key in runs[0]
            }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{'store':<10}{'decisions/s':>13}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'denied':>8}{'srv CPU %':>11}"
          f"{'µs/req':>8}{'batch':>7}")  # fmt: skip
    for kind, row in figures.items():
        print(
            f"{kind:<10}{row['decisions_per_s']:>13,.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['requests_per_s']:>9,.0f}{row['denied']:>8.0f}{row['server_cpu_percent']:>11.0f}"
            f"{row['server_cpu_us_per_request']:>8.0f}{row['batch_size_mean']:>7.1f}"
        )
    logging = "on, to a file" if args.log_requests else "off"
    pacing = f"paced to {args.rate:g} decisions/s in all" if args.rate else "closed loop (no think time)"
    processes = f"{args.workers} server process{'es' if args.workers > 1 else ''}"
    cpus = f"server CPUs {args.server_cpus or 'any'}, load CPUs {args.load_cpus or 'any'}"
    pinning = f"{processes}; {cpus}; nice {args.nice}"
    print(
        f"(median of {args.runs} runs; {args.agents} agents, {pacing}; {args.seconds:g} s measured after "
        f"{args.warmup:g} s warm-up; request log {logging}; {pinning})"
    )


if __name__ == "__main__":
    main()
