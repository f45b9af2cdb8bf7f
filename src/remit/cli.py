"""The `remit` command: parse, call the library, print — nothing else.

Bad input gets one line on stderr and exit code 2; a failed check exits 1.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from remit.bootstrap import DEFAULT_DATABASE_URL, open_engine
from remit.engine import Engine
from remit.errors import RemitError
from remit.limits import EXPIRY_ROUNDS_MAX

app = typer.Typer(
    name="remit",
    help="Remit: bounds what AI agents may do — budgets, reservations, a ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

DatabaseUrl = Annotated[
    str,
    typer.Option("--database-url", envvar="REMIT_DATABASE_URL", help="sqlite:///FILE or postgresql://…"),
]
Tenant = Annotated[str, typer.Option("--tenant", envvar="REMIT_TENANT", help="Tenant id.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    # Plain print, not rich: an error stays on one line whatever the terminal width.
    print(f"remit: {' '.join(message.split())}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def _engine(database_url: str) -> Iterator[Engine]:
    try:
        engine = open_engine(database_url)
    except RemitError as error:
        raise _fail(error.message) from None
    except Exception as error:  # a database that cannot be opened is bad input for a CLI
        raise _fail(f"cannot open {database_url}: {error}") from None
    try:
        yield engine
    except RemitError as error:
        raise _fail(error.message) from None
    finally:
        engine.store.close()


def _packaged_demo_config() -> Path:
    return Path(str(resources.files("remit").joinpath("demo.yaml")))


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option(help="Config to apply (default: examples/remit.yaml).")] = None,
    database: Annotated[Path | None, typer.Option(help="SQLite file to create (default: a temporary one).")] = None,
    actions: Annotated[int, typer.Option(min=1, max=10_000, help="Actions per simulated agent.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed of the fleet.")] = 7,
) -> None:
    """Apply the demo config to a fresh SQLite file, run a small fleet, print what each budget did."""
    from remit.demo import budget_rows, check_line, run_demo

    config_path = config or (Path("examples/remit.yaml") if Path("examples/remit.yaml").exists() else None)
    config_path = config_path or _packaged_demo_config()
    with tempfile.TemporaryDirectory() as directory:
        path = database or Path(directory) / "remit-demo.db"
        if path.exists():
            raise _fail(f"{path} exists; the demo needs a fresh file")
        with _engine(f"sqlite:///{path}") as engine:
            console.print(f"Applying [bold]{config_path}[/] to a fresh SQLite file ({path})")
            console.print(f"Running 4 simulated agents × {actions} actions …")
            tally = run_demo(engine, config_path, seed=seed, actions_per_agent=actions)
            rows = budget_rows(engine, tally)
            report = engine.check("demo")
    columns = ("scope", "envelope", "limit", "used", "held", "left", "allowed", "denied")
    table = Table(title="What each budget allowed, denied and has left", caption="* would have denied (shadow)")
    for column in columns:
        table.add_column(column, justify="left" if column in {"scope", "envelope"} else "right", overflow="fold")
    for row in rows:
        table.add_row(*(str(row[key]) for key in columns))
    console.print(table)
    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(tally.decisions.items()))
    console.print(f"Decisions: {outcomes}")
    if tally.sample_denials:
        console.print("Some denials, as the agents saw them:")
        for line in tally.sample_denials:
            console.print(f"  • {line}", highlight=False, markup=False)
    console.print(check_line(report))
    if not report.is_consistent:
        raise typer.Exit(1)


@app.command()
def serve(  # noqa: PLR0917 - one parameter per command-line option
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    config: Annotated[
        Path | None, typer.Option(help="Config a new tenant starts with (default: the demo, examples/remit.yaml).")
    ] = None,
    bootstrap: Annotated[
        bool, typer.Option("--bootstrap/--no-bootstrap", help="Create the tenant and its first keys if missing.")
    ] = True,
    log_requests: Annotated[
        bool, typer.Option("--log-requests/--no-log-requests", help="One JSON line per request.")
    ] = True,
) -> None:
    """Serve the HTTP API. The first start creates the tenant, applies the config and prints its keys once."""
    from remit.config import load_file
    from remit.server import ServeOptions
    from remit.server import serve as run_server

    config_path = config or _packaged_demo_config()
    try:
        document = load_file(config_path) if bootstrap else None
        options = ServeOptions(
            database_url=database_url,
            host=host,
            port=port,
            tenant=tenant,
            config=document,
            config_source=str(config_path),
            is_logging_requests=log_requests,
        )
        run_server(options, announce=lambda line: print(line, flush=True))
    except RemitError as error:
        raise _fail(error.message) from None


@app.command()
def init(
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the tenant's calendar windows.")] = "UTC",
) -> None:
    """Create the database schema (if needed) and a tenant."""
    with _engine(database_url) as engine:
        engine.create_tenant(tenant, timezone=timezone)
    console.print(f"tenant {tenant} ready in {database_url}")


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="YAML or JSON config.")],
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
) -> None:
    """Validate and apply a config file (idempotent: budgets keep their usage)."""
    from remit.config import load_file

    with _engine(database_url) as engine:
        engine.create_tenant(tenant)
        applied = engine.apply_config(tenant, load_file(file), source=str(file))
    console.print(
        f"applied {file}: version {applied.version}, {len(applied.budgets)} budgets, "
        f"{len(applied.scopes)} scopes, {len(applied.agents)} agents"
    )


@app.command()
def check(
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Rebuild every counter from the ledger and compare with the live counters (exit 1 on mismatch)."""
    with _engine(database_url) as engine:
        report = engine.check(tenant)
    if as_json:
        print(
            json.dumps(
                {
                    "tenant": report.tenant_id,
                    "entries": report.entries,
                    "counters": report.counters,
                    "consistent": report.is_consistent,
                    "mismatches": report.mismatches,
                }
            )
        )
    else:
        from remit.demo import check_line

        console.print(check_line(report), highlight=False)
    if not report.is_consistent:
        raise typer.Exit(1)


@app.command()
def expire(database_url: DatabaseUrl = DEFAULT_DATABASE_URL) -> None:
    """Expire every hold whose lease has run out (servers also do this on their own)."""
    total = 0
    with _engine(database_url) as engine:
        for _ in range(EXPIRY_ROUNDS_MAX):
            expired = engine.expire_holds()
            total += expired
            if expired == 0:
                break
        else:
            console.print(f"stopped after {EXPIRY_ROUNDS_MAX} rounds; run again for the rest")
    console.print(f"expired {total} holds")


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the console script; usage errors exit 2 with one line."""
    try:
        return app(args=argv, standalone_mode=True)
    except RemitError as error:  # pragma: no cover - commands map these themselves
        raise _fail(error.message) from None


if __name__ == "__main__":
    main()
