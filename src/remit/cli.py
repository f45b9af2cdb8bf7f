"""The `remit` command: parse, call the library, print — nothing else.

Every command that reads or changes a tenant talks either to a server (`--url` and `--key`,
through `remit.Client`) or straight to a database (`--database-url`, through `remit.Local`):
the same library calls a user makes from Python, so both paths print the same thing.
Bad input gets one line on stderr and exit code 2; a failed check exits 1.
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from remit.bootstrap import DEFAULT_DATABASE_URL, open_engine, redact, sqlite_path
from remit.engine import Engine
from remit.errors import ConfigError, RemitError
from remit.limits import (
    EXPIRY_ROUNDS_MAX,
    LEDGER_FOLLOW_ENTRIES_MAX,
    LEDGER_PAGE_SIZE_DEFAULT,
    LEDGER_PAGE_SIZE_MAX,
    REQUESTS_PER_KEY_PER_SECOND_DEFAULT,
    WORKERS_MAX,
)

if TYPE_CHECKING:
    from remit.client import Client
    from remit.local import Local

app = typer.Typer(
    name="remit",
    help="Remit: bounds what AI agents may do — budgets, reservations, a ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(
    name="keys", help="List, create, rotate and revoke API keys (an admin key's work).", no_args_is_help=True
)
app.add_typer(keys_app)
PIPED_WIDTH_CHARS = 1_000
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH_CHARS)
"""Into a pipe or a file, tables keep their natural width: rich would fold them, ids included, at 80."""

BAR_WIDTH_CHARS = 12
BUDGET_NAME_WIDTH_MAX = 28
"""`remit status` may fold a budget id past this width rather than squeeze every other column."""

DatabaseUrl = Annotated[
    str,
    typer.Option("--database-url", envvar="REMIT_DATABASE_URL", help="sqlite:///FILE or postgresql://…"),
]
Tenant = Annotated[str, typer.Option("--tenant", envvar="REMIT_TENANT", help="Tenant id (with --database-url).")]
Url = Annotated[
    str | None,
    typer.Option("--url", envvar="REMIT_URL", help="A Remit server (http://host:port); used instead of the database."),
]
Key = Annotated[str | None, typer.Option("--key", envvar="REMIT_KEY", help="API key (rk_…) for --url.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    _say_error(message)
    return typer.Exit(code)


def _say_error(message: str) -> None:
    # Plain print, not rich: an error stays on one line whatever the terminal width.
    print(f"remit: {' '.join(message.split())}", file=sys.stderr)


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False))


def _quiet_pool_logs() -> None:
    """A one-shot command reports a store it cannot open in its own line; psycopg's pool would
    also log each failed connection attempt to stderr (a server keeps those: they are its log)."""
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


def _refuse_missing_sqlite(database_url: str) -> None:
    """A command that works on what a database holds must not leave an empty one behind."""
    path = sqlite_path(database_url)
    if path is not None and not path.exists():
        raise _fail(f"no database at {path} (`remit init` or `remit serve` creates one)")


@contextmanager
def _engine(database_url: str, *, is_creating: bool = False) -> Iterator[Engine]:
    _quiet_pool_logs()
    if not is_creating:
        _refuse_missing_sqlite(database_url)
    try:
        engine = open_engine(database_url)
    except RemitError as error:
        raise _fail(error.message) from None
    except Exception as error:  # a database that cannot be opened is bad input for a CLI
        raise _fail(f"cannot open {redact(database_url)}: {error}") from None
    try:
        yield engine
    except RemitError as error:
        raise _fail(error.message) from None
    finally:
        engine.store.close()


@contextmanager
def _connect(
    url: str | None, key: str | None, database_url: str, tenant: str, *, is_creating_tenant: bool = False
) -> Iterator[Client | Local]:
    """A `Client` for `--url`, else a `Local` over the database; errors become one line and exit 2.

    Only `apply` creates a missing tenant: a mistyped `--tenant` must not leave an empty one behind.
    """
    import httpx

    from remit.client import Client
    from remit.local import Local

    server = url or None
    if server is not None and not key:
        raise _fail("--url needs --key (or REMIT_KEY): an API key such as rk_…")
    where = server or redact(database_url)
    if server is None:
        _quiet_pool_logs()
        if not is_creating_tenant:
            _refuse_missing_sqlite(database_url)
    connection: Client | Local
    try:
        connection = (
            Client(server, key=key or "")
            if server is not None
            else Local(database_url, tenant=tenant, create_tenant=is_creating_tenant)
        )
    except RemitError as error:
        raise _fail(error.message) from None
    except Exception as error:  # a URL that cannot even be parsed or opened is bad input
        raise _fail(f"cannot use {where}: {error}") from None
    try:
        yield connection
    except RemitError as error:
        raise _fail(error.message) from None
    except (httpx.HTTPError, OSError) as error:  # a transport failure the client did not map
        raise _fail(f"{where}: {type(error).__name__}: {error}") from None
    finally:
        connection.close()


def _packaged_demo_config() -> Path:
    return Path(str(resources.files("remit").joinpath("demo.yaml")))


# == demo and serve ============================================================================
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
        with _engine(f"sqlite:///{path}", is_creating=True) as engine:
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
    rate_limit: Annotated[
        int, typer.Option(min=0, help="The API's own limit: requests/s per key and process (0: none); past it, 429.")
    ] = REQUESTS_PER_KEY_PER_SECOND_DEFAULT,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=WORKERS_MAX, help="Server processes sharing the port (one Python process uses one core)."
        ),
    ] = 1,
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
            requests_per_key_per_second=rate_limit,
            workers=workers,
        )
        run_server(options, announce=lambda line: print(line, flush=True))
    except RemitError as error:
        raise _fail(error.message) from None


# == tenants and config ========================================================================
@app.command()
def init(
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the tenant's calendar windows.")] = "UTC",
    config: Annotated[
        Path | None, typer.Option(help="Config to start with (its agents get keys too); default: none.")
    ] = None,
) -> None:
    """Create the schema (if needed) and a tenant, and print its first admin key — once."""
    from remit.config import load_file
    from remit.server import announce_keys
    from remit.service import Service

    with _engine(database_url, is_creating=True) as engine:
        document = load_file(config) if config is not None else None
        engine.create_tenant(tenant, timezone=timezone)  # a no-op for a tenant that exists
        created = Service(engine).bootstrap_tenant(tenant, document, source=str(config or "<config>"))
    console.print(f"tenant {tenant} ready in {redact(database_url)}", highlight=False)
    announce_keys(created, tenant, print)


@app.command()
def apply(  # noqa: PLR0917 - one parameter per command-line option
    file: Annotated[Path, typer.Argument(help="YAML or JSON config.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change; change nothing.")] = False,
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
) -> None:
    """Validate and apply a config file (idempotent: budgets keep their usage); print what changed."""
    from remit.config import load_file

    try:
        document = load_file(file)
    except RemitError as error:
        raise _fail(error.message) from None
    with _connect(url, key, database_url, tenant, is_creating_tenant=True) as remit:
        try:
            result = remit.put_config(document, dry_run=dry_run)
        except ConfigError as error:
            # The library names the request ("config: …"), not the file; a user needs to know which file is wrong.
            message = f"{file}: {error.message.removeprefix('config: ')}"
            raise _fail(message) from None
    changes: list[dict[str, Any]] = result["changes"]
    for change in changes:
        console.print(_change_line(change), soft_wrap=True)
    if not changes:
        console.print(f"no changes (version {result['version']})", highlight=False)
    elif dry_run:
        console.print(f"dry run: {_changes(changes)}, nothing applied (version {result['version']})")
    else:
        console.print(f"applied {file}: version {result['version']}, {_changes(changes)}", highlight=False)


def _changes(changes: list[dict[str, Any]]) -> str:
    return f"{len(changes)} change{'' if len(changes) == 1 else 's'}"


_CHANGE_STYLES = {"add": ("+", "green"), "change": ("~", "yellow"), "remove": ("-", "red")}


def _change_line(change: Mapping[str, Any]) -> Text:
    """`+ budget id: field value, …`, `~ budget id: field old → new, …` or `- budget id`, one line."""
    sign, style = _CHANGE_STYLES.get(change["op"], ("?", "bold"))
    before: Mapping[str, Any] = change.get("before") or {}
    after: Mapping[str, Any] = change.get("after") or {}
    if change["op"] == "add":
        fields = [f"{name} {value}" for name, value in after.items() if value is not None]
    elif change["op"] == "change":
        fields = [
            f"{name} {_shown(before.get(name))} → {_shown(after.get(name))}"
            for name in [*before, *(n for n in after if n not in before)]
            if before.get(name) != after.get(name)
        ]
    else:
        fields = []
    detail = f": {', '.join(fields)}" if fields else ""
    return Text(f"{sign} {change['kind']} {change['name']}{detail}", style=style)


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


@app.command()
def check(
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Rebuild every counter from the ledger and compare with the live counters (exit 1 on mismatch)."""
    with _connect(url, key, database_url, tenant) as remit:
        report = remit.check()
    if as_json:
        _print_json(report)
    elif report["is_consistent"]:
        console.print(
            f"ledger check: consistent — {report['entries']} entries, {report['counters']} counters rebuilt and equal",
            highlight=False,
        )
    else:
        mismatches = report["mismatches"]
        console.print(f"ledger check: {len(mismatches)} MISMATCHES: {mismatches[:3]}", highlight=False, markup=False)
    if not report["is_consistent"]:
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


# == reads: headroom and the ledger =============================================================
@app.command()
def status(  # noqa: PLR0917 - one parameter per command-line option
    scope: Annotated[str | None, typer.Argument(help="Scope path (default: the whole tenant).")] = None,
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: AsJson = False,
) -> None:
    """Headroom of every budget in a scope's subtree: used and held against the limit, burn rate, exhaustion."""
    with _connect(url, key, database_url, tenant) as remit:
        headroom = remit.headroom(scope)
    if as_json:
        _print_json(headroom)
        return
    rows: list[dict[str, Any]] = headroom["budgets"]
    table = Table(
        title=f"headroom of {headroom['scope']} at {_short_time(headroom['at'])}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="█ used  ▒ held  · room; times UTC",
        caption_justify="left",
    )
    name_width = min(BUDGET_NAME_WIDTH_MAX, max((len(_budget_name(row)) for row in rows), default=6))
    table.add_column("budget", overflow="fold", min_width=name_width)
    table.add_column("used+held of limit", no_wrap=True)
    for column in ("used", "held", "limit", "remaining"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("resets", min_width=10)  # a time wraps at its space, never inside the date
    table.add_column("burn/h", justify="right", no_wrap=True)
    table.add_column("runs out", min_width=10)
    for row in rows:
        table.add_row(
            _budget_name(row),
            _bar(row["used"], row["held"], row["limit"]),
            row["used"],
            row["held"],
            row["limit"],
            row["remaining"],
            _short_time(row["resets_at"]) or ("rolling" if str(row["window"]).startswith("rolling") else "never"),
            row["burn_rate_per_hour"],
            _short_time(row["projected_exhaustion_at"]) or "—",
        )
    _print_table(table)
    if not headroom["budgets"]:
        console.print("no budgets in this scope", highlight=False)


def _print_table(table: Table) -> None:
    """The table at the terminal's width, or wider if it cannot fit: rich would drop or cut columns."""
    width_min = Measurement.get(console, console.options, table).minimum
    console.print(table, width=max(console.width, width_min), crop=False)


def _budget_name(row: Mapping[str, Any]) -> str:
    return str(row["budget"]) + (" (shadow)" if row.get("mode") == "shadow" else "")


def _bar(used_text: str, held_text: str, limit_text: str) -> Text:
    """█ used, ▒ held, · room; green under 75 %, yellow under 90 %, red from there."""
    try:
        used, held, limit = Decimal(used_text), Decimal(held_text), Decimal(limit_text)
    except InvalidOperation:
        return Text("?")
    share = (used + held) / limit if limit > 0 else Decimal(1)
    used_chars = min(BAR_WIDTH_CHARS, int(used / limit * BAR_WIDTH_CHARS)) if limit > 0 else BAR_WIDTH_CHARS
    taken_chars = min(BAR_WIDTH_CHARS, int(share * BAR_WIDTH_CHARS))
    if (used + held) > 0 and taken_chars == 0:
        taken_chars = 1  # a sliver in use shows, so "empty" means empty
        used_chars = 1 if used > 0 else 0  # as the glyph of what it is: used, else held
    held_chars = max(0, taken_chars - used_chars)
    style = "green" if share < Decimal("0.75") else "yellow" if share < Decimal("0.9") else "red"
    bar = Text()
    bar.append("█" * used_chars, style=style)
    bar.append("▒" * held_chars, style=style)
    bar.append("·" * (BAR_WIDTH_CHARS - used_chars - held_chars), style="dim")
    bar.append(f" {share * 100:5.1f}%")
    return bar


def _short_time(text: str | None, *, is_to_the_second: bool = False) -> str | None:
    """`2026-01-31 14:00Z`: an RFC 3339 time to the minute (or second), for tables; `--json` has it whole."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ" if is_to_the_second else "%Y-%m-%d %H:%MZ")


@app.command()
def ledger(  # noqa: PLR0917 - one parameter per command-line option
    scope: Annotated[str | None, typer.Option(help="Entries of agents in this scope's subtree.")] = None,
    agent: Annotated[str | None, typer.Option(help="Entries of this agent.")] = None,
    action: Annotated[str | None, typer.Option(help="Entries of this action (e.g. crm.discount.apply).")] = None,
    kind: Annotated[str | None, typer.Option(help="hold, commit, release, expiry, usage, …")] = None,
    since: Annotated[str | None, typer.Option(help="From this RFC 3339 time (e.g. 2026-01-31T00:00:00Z).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this RFC 3339 time.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=LEDGER_PAGE_SIZE_MAX, help="Entries per page.")
    ] = LEDGER_PAGE_SIZE_DEFAULT,
    cursor: Annotated[str | None, typer.Option(help="Continue after this cursor (from a previous page).")] = None,
    oldest_first: Annotated[bool, typer.Option("--oldest-first", help="Oldest entries first.")] = False,
    follow_all: Annotated[
        bool, typer.Option("--all", help=f"Follow cursors to the end (at most {LEDGER_FOLLOW_ENTRIES_MAX} entries).")
    ] = False,
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"entries": […], "next_cursor": …} as one JSON object.')
    ] = False,
) -> None:
    """Ledger entries, newest first: every hold, commit, release, expiry and usage report."""
    entries: list[dict[str, Any]] = []
    with _connect(url, key, database_url, tenant) as remit:
        while True:
            page = remit.ledger(
                scope=scope,
                agent=agent,
                action=action,
                kind=kind,
                since=since,
                until=until,
                cursor=cursor,
                limit=limit,
                order="asc" if oldest_first else "desc",
            )
            entries.extend(page["entries"])
            cursor = page["next_cursor"]
            if not follow_all or cursor is None or len(entries) >= LEDGER_FOLLOW_ENTRIES_MAX:
                break
    if as_json:
        _print_json({"entries": entries, "next_cursor": cursor})
        return
    table = Table(title=f"ledger ({len(entries)} entries)", title_justify="left")
    for column in ("id", "at", "kind", "agent", "action", "reservation", "postings"):
        table.add_column(column, justify="right" if column == "id" else "left", overflow="fold")
    for entry in entries:
        table.add_row(
            entry["id"],
            _short_time(entry["at"], is_to_the_second=True),
            entry["kind"],
            entry["agent"] or "",
            entry["action"] or "",
            entry["reservation"] or "",
            "\n".join(_posting_text(posting) for posting in entry["postings"]),
        )
    _print_table(table)
    if cursor is not None:
        console.print(f"more entries: add --cursor {cursor} (or --all)", highlight=False)


def _posting_text(posting: Mapping[str, Any]) -> str:
    amounts = [f"{name} {posting[name]}" for name in ("used", "held", "overrun") if _is_nonzero(posting.get(name))]
    return f"{posting['budget']}: {', '.join(amounts) or '0'}"


def _is_nonzero(text: Any) -> bool:
    try:
        return text is not None and Decimal(str(text)) != 0
    except InvalidOperation:
        return True


# == keys =======================================================================================
class KeyRole(enum.StrEnum):
    ADMIN = "admin"
    AGENT = "agent"


@keys_app.command("list")
def keys_list(
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: AsJson = False,
) -> None:
    """Every key of the tenant, revoked ones included (never a secret)."""
    with _connect(url, key, database_url, tenant) as remit:
        listing = remit.keys()
    if as_json:
        _print_json(listing)  # the API's shape, {"keys": [...]}, as `ledger --json` keeps its own
        return
    rows: list[dict[str, Any]] = listing["keys"]
    table = Table(title=f"{len(rows)} keys", title_justify="left")
    for column in ("id", "role", "agent", "name", "created", "rotated", "revoked"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["id"],
            row["role"],
            row["agent"] or "",
            row["name"] or "",
            _short_time(row["created_at"]),
            _short_time(row["rotated_at"]) or "",
            _short_time(row["revoked_at"]) or "",
            style=None if row["is_active"] else "dim",
        )
    _print_table(table)


@keys_app.command("create")
def keys_create(  # noqa: PLR0917 - one parameter per command-line option
    role: Annotated[KeyRole, typer.Option(help="admin (every command) or agent (acts as one agent).")],
    agent: Annotated[str | None, typer.Option(help="The agent an agent key acts as (required for agent).")] = None,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: AsJson = False,
) -> None:
    """Create a key and print it — once: only its hash is stored."""
    if role is KeyRole.AGENT and not agent:
        raise _fail("--role agent needs --agent NAME: the agent the key acts as")
    with _connect(url, key, database_url, tenant) as remit:
        created = remit.create_key(role.value, agent=agent, name=name)
    _print_new_key(created, as_json)


@keys_app.command("rotate")
def keys_rotate(  # noqa: PLR0917 - one parameter per command-line option
    key_id: Annotated[str, typer.Argument(help="The key's id (as `remit keys list` shows it).")],
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: AsJson = False,
) -> None:
    """Give a key a new secret and print it — once; the old secret stops working."""
    with _connect(url, key, database_url, tenant) as remit:
        rotated = remit.rotate_key(key_id)
    _print_new_key(rotated, as_json)


@keys_app.command("revoke")
def keys_revoke(  # noqa: PLR0917 - one parameter per command-line option
    key_id: Annotated[str, typer.Argument(help="The key's id (as `remit keys list` shows it).")],
    url: Url = None,
    key: Key = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    tenant: Tenant = "default",
    as_json: AsJson = False,
) -> None:
    """Revoke a key for good (a tenant keeps at least one admin key)."""
    with _connect(url, key, database_url, tenant) as remit:
        revoked = remit.revoke_key(key_id)
    if as_json:
        _print_json(revoked)
    else:
        print(f"revoked {revoked['role']} key {revoked['id']} at {_short_time(revoked['revoked_at'])}")


def _print_new_key(row: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(row)
        return
    who = f" for agent {row['agent']}" if row.get("agent") else ""
    # Plain print: the key must stay on one line, unstyled, to be copied.
    print(f"{row['role']} key {row['id']}{who}; shown once, keep it:")
    print(f"key: {row['key']}")


def _click_exceptions() -> ModuleType:
    """The exceptions typer raises for bad usage: those of its own copy of click (newer typers)
    or of click itself."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # pragma: no cover - a typer that uses click directly
        return importlib.import_module("click.exceptions")


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the console script; usage errors exit 2 with one line."""
    errors = _click_exceptions()
    try:
        result = app(args=argv, standalone_mode=False)
    except errors.NoArgsIsHelpError as error:  # `remit` or `remit keys` alone: the help
        print(error.ctx.get_help())
        sys.exit(0)
    except errors.UsageError as error:
        # A bad option, argument or command: one line, as every other error (not click's box).
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        _say_error(error.format_message() + hint)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C or end of input at a prompt
        _say_error("interrupted")
        sys.exit(130)
    except RemitError as error:  # pragma: no cover - commands map these themselves
        _say_error(error.message)
        sys.exit(2)
    # Out of standalone mode click returns the exit code of typer.Exit and --help, not exits.
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
