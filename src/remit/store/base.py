"""The store interface and the SQL work both dialects share.

A store hands out transactions. A transaction is a unit of work: it rolls back unless
`commit()` is called. The SQL itself lives in named blocks, one file per dialect
(`sql/sqlite.sql`, `sql/postgres.sql`); the dialect classes only say how a list is passed
and how a transaction begins.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

from remit.domain.budgets import Counter, CounterKey
from remit.domain.ledger import EntryKind, LedgerEntry, Posting
from remit.domain.reservations import HoldPart, Reservation, Status

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_statements(dialect: str) -> dict[str, str]:
    """Parse `-- name: X` blocks of `sql/<dialect>.sql` into {name: statement}."""
    text = resources.files("remit.store").joinpath(f"sql/{dialect}.sql").read_text(encoding="utf-8")
    pieces = _NAME.split(text)
    statements: dict[str, str] = {}
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        statements[name] = "\n".join(lines).strip().rstrip(";")
    return statements


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(slots=True)
class BatchWrite:
    """Everything one batch changes for one tenant, written at once."""

    counters: list[Counter] = field(default_factory=list)
    new_reservations: list[Reservation] = field(default_factory=list)
    changed_reservations: list[Reservation] = field(default_factory=list)
    entries: list[LedgerEntry] = field(default_factory=list)
    idempotency: list[tuple[str, str, str]] = field(default_factory=list)
    """(key, fingerprint, response JSON)."""
    unclaimed: list[str] = field(default_factory=list)
    """Idempotency keys claimed by requests that were refused: their claims are withdrawn."""
    next_due_us: int | None = None
    """The tenant's new bound on its holds' deadlines (see `claim_tenants`); None leaves it as it is."""


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant_id: str
    timezone: str
    config_version: int
    config: str
    lineage: str
    """JSON: every meter and budget identity the tenant's configs have ever declared."""


@dataclass(frozen=True, slots=True)
class TenantClaim:
    """What a batch learns of a tenant as it locks the tenant's row (`Transaction.claim_tenants`)."""

    config_version: int
    write_seq: int
    """The sequence before this batch: the batch itself has moved it on by one."""
    next_due_us: int
    """No live hold of the tenant has a lease deadline before this (a lower bound: holds that
    ended since may have had it). A batch looks for overdue holds only once it is reached."""


class TenantMoved(Exception):
    """An owned claim found that another writer changed the tenant: the batch is run again the
    ordinary way, reading what it needs (`Engine._execute_once`)."""


@dataclass(frozen=True, slots=True)
class KeyRow:
    tenant_id: str
    key_id: str
    secret_sha256: str
    role: str
    agent: str | None
    name: str | None
    created_at_us: int
    rotated_at_us: int | None
    revoked_at_us: int | None


@dataclass(frozen=True, slots=True)
class LedgerFilter:
    """What the audit explorer asks for; None matches everything."""

    agent: str | None = None
    agents: Sequence[str] | None = None
    """Entries of any of these agents (a scope's subtree)."""
    action: str | None = None
    kind: str | None = None
    since_us: int = 0
    until_us: int = 2**62


class Transaction(abc.ABC):
    """One unit of work on the store. Locks taken here are held until commit or rollback."""

    def __init__(self, statements: dict[str, str]) -> None:
        self._sql = statements

    # -- dialect hooks ---------------------------------------------------------------------
    @abc.abstractmethod
    def _list(self, values: Sequence[Any]) -> Any:
        """How a list of values is passed as one parameter."""

    @abc.abstractmethod
    def _keyed(self, tenant_id: str, rows: Sequence[Sequence[Any]]) -> Any:
        """Parameters for a look-up of one tenant's rows by many composite keys (`rows`)."""

    @abc.abstractmethod
    def _execute(self, name: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run a named statement and return its rows (empty for statements without rows)."""

    @abc.abstractmethod
    def _execute_many(self, name: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    def _send(self, name: str, params: Sequence[Any]) -> None:
        """Run a named statement whose rows nobody reads (PostgreSQL pipelines it: no wait)."""

    @abc.abstractmethod
    def commit(self) -> None: ...

    # -- tenants ---------------------------------------------------------------------------
    def create_tenant(self, tenant_id: str, name: str, timezone: str, now_us: int) -> None:
        self._execute("insert_tenant", (tenant_id, name, timezone, now_us))

    def lock_tenants(self, tenant_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Lock the tenants' rows (in id order); returns {tenant: (config_version, write_seq)}."""
        rows = self._execute("lock_tenants", (self._list(sorted(tenant_ids)),))
        return {row[0]: (row[1], row[2]) for row in rows}

    def claim_tenants(self, tenant_ids: Sequence[str]) -> dict[str, TenantClaim]:
        """Lock the tenants' rows (in id order) for a batch and move each one's `write_seq` on.

        Every transaction that changes a tenant's counters or holds starts here, so a process
        that finds the sequence it last wrote knows that nothing of the tenant changed since.
        Tenants that do not exist are left out.
        """
        rows = self._execute("claim_tenants", (self._list(sorted(tenant_ids)),))
        return {row[0]: TenantClaim(row[1], row[2], row[3]) for row in rows}

    def claim_owned(self, claims: Sequence[tuple[str, int, int]]) -> None:
        """Claim tenants this engine wrote last, without reading them: each (tenant, write_seq,
        config_version) moves its `write_seq` on if the row still has both values.

        If any has not (another process wrote, or applied a config), the transaction fails with
        `TenantMoved` — here, or at the latest at commit (PostgreSQL sends the claim, the
        batch's writes and the commit in one round trip), and nothing of it is applied.
        """
        rows = sorted(claims)
        claimed = self._execute("claim_owned_tenants", (dumps([list(row) for row in rows]),))
        if len(claimed) != len(rows):
            raise TenantMoved("another process wrote a tenant of this batch since this engine last did")

    def load_tenant(self, tenant_id: str) -> TenantRow | None:
        rows = self._execute("load_tenant", (tenant_id,))
        return TenantRow(*rows[0]) if rows else None

    def list_tenants(self) -> list[str]:
        return [row[0] for row in self._execute("list_tenants", ())]

    def save_config(self, tenant_id: str, timezone: str, config_json: str, lineage_json: str) -> int:
        rows = self._execute("update_tenant_config", (timezone, config_json, lineage_json, tenant_id))
        return int(rows[0][0])

    # -- counters --------------------------------------------------------------------------
    def lock_counters(self, tenant_id: str, keys: Iterable[CounterKey]) -> dict[CounterKey, Counter]:
        """Lock (creating where missing) the counters of `keys`, in key order."""
        wanted = sorted(set(keys))
        counters = self._counters_from(self._execute("lock_counters", self._keyed(tenant_id, wanted)))
        missing = [key for key in wanted if key not in counters]
        if missing:
            self._execute_many("ensure_counter", [(tenant_id, budget, instance) for budget, instance in missing])
            counters.update(self._counters_from(self._execute("lock_counters", self._keyed(tenant_id, missing))))
        return counters

    @staticmethod
    def _counters_from(rows: list[tuple[Any, ...]]) -> dict[CounterKey, Counter]:
        return {
            (budget, instance): Counter((budget, instance), window_start, used, held, overrun)
            for budget, instance, window_start, used, held, overrun in rows
        }

    def load_buckets(self, tenant_id: str, counters: Sequence[Counter]) -> None:
        """Fill the rolling buckets of `counters` (already locked)."""
        by_key = {counter.key: counter for counter in counters}
        params = self._keyed(tenant_id, list(by_key))
        for budget, instance, start, used, overrun in self._execute("load_buckets", params):
            counter = by_key[(budget, instance)]
            counter.buckets[start] = used
            if overrun:
                counter.overrun_buckets[start] = overrun

    def load_counted(self, tenant_id: str, wanted: Iterable[tuple[Counter, str]]) -> None:
        """Mark which of the (counter, entity) pairs are already counted in the counter's window."""
        by_key: dict[CounterKey, Counter] = {}
        rows = []
        for counter, entity in wanted:
            by_key[counter.key] = counter
            rows.append((counter.key[0], counter.key[1], counter.window_start, entity))
        if not rows:
            return
        params = self._keyed(tenant_id, rows)
        for budget, instance, entity in self._execute("load_counted", params):
            by_key[(budget, instance)].counted_entities.add(entity)

    def all_counters(self, tenant_id: str) -> dict[CounterKey, Counter]:
        counters = self._counters_from(self._execute("all_counters", (tenant_id,)))
        for budget, instance, start, used, overrun in self._execute("all_buckets", (tenant_id,)):
            counter = counters.setdefault((budget, instance), Counter((budget, instance)))
            counter.buckets[start] = used
            if overrun:
                counter.overrun_buckets[start] = overrun
        return counters

    def all_counted(self, tenant_id: str) -> dict[CounterKey, dict[int, set[str]]]:
        counted: dict[CounterKey, dict[int, set[str]]] = {}
        for budget, instance, window_start, entity in self._execute("all_counted", (tenant_id,)):
            counted.setdefault((budget, instance), {}).setdefault(window_start, set()).add(entity)
        return counted

    # -- reservations ----------------------------------------------------------------------
    def lock_reservations(self, tenant_id: str, ids: Iterable[str]) -> dict[str, Reservation]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = self._execute("lock_reservations", (tenant_id, self._list(wanted)))
        return {row[0]: self._reservation_from(tenant_id, row) for row in rows}

    @staticmethod
    def _reservation_from(tenant_id: str, row: tuple[Any, ...]) -> Reservation:
        (rid, status, agent, action, task, amounts, parts, lease, created, resolved, result, key, was_expired) = row
        return Reservation(
            tenant_id=tenant_id,
            id=rid,
            status=Status(status),
            agent=agent,
            action=action,
            task=task,
            amounts=orjson.loads(amounts),
            parts=[HoldPart.from_row(part) for part in orjson.loads(parts)],
            lease_expires_at_us=lease,
            created_at_us=created,
            resolved_at_us=resolved,
            result=orjson.loads(result) if result else None,
            resolve_key=key,
            was_expired=bool(was_expired),
        )

    def due_reservations(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        """(tenant, reservation) of holds whose lease has run out, oldest first."""
        return [(row[0], row[1]) for row in self._execute("due_reservations", (now_us, limit))]

    def first_holds(self, tenant_id: str, limit: int) -> list[tuple[str, int]]:
        """(reservation, lease deadline) of the tenant's first `limit` live holds to run out."""
        return [(row[0], row[1]) for row in self._execute("first_holds_of_tenant", (tenant_id, limit))]

    def held_parts(self, tenant_id: str) -> list[tuple[str, list[HoldPart]]]:
        return [
            (rid, [HoldPart.from_row(part) for part in orjson.loads(parts)])
            for rid, parts in self._execute("held_reservations", (tenant_id,))
        ]

    # -- idempotency -----------------------------------------------------------------------
    def claim_idempotency(self, tenant_id: str, keys: Sequence[str], now_us: int) -> dict[str, tuple[str, str]]:
        """Claim `keys` for this transaction; return the answers already recorded for the others.

        Claiming and answering happen in one transaction, so a failed batch leaves no claim
        behind (the mistake OpenMeter #5118 describes).
        """
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        claimed = {row[0] for row in self._execute("claim_new_idempotency", (tenant_id, now_us, self._list(wanted)))}
        existing = [key for key in wanted if key not in claimed]
        if not existing:
            return {}
        rows = self._execute("claim_idempotency", (tenant_id, self._list(existing)))
        return {key: (fingerprint, response) for key, fingerprint, response in rows}

    # -- ledger ----------------------------------------------------------------------------
    def ledger_page(self, tenant_id: str, after_id: int, limit: int) -> list[LedgerEntry]:
        return self._entries_from(tenant_id, self._execute("ledger_page", (tenant_id, after_id, limit)))

    def ledger_entries(self, tenant_id: str) -> Iterator[LedgerEntry]:
        """Every entry of the tenant in order, read a page at a time (ends: each page moves `after` on)."""
        after = 0
        page_size = 5000
        while page := self.ledger_page(tenant_id, after, page_size):
            yield from page
            if len(page) < page_size or page[-1].id is None or page[-1].id <= after:
                return
            after = page[-1].id

    def _entries_from(self, tenant_id: str, rows: list[tuple[Any, ...]]) -> list[LedgerEntry]:
        return [
            LedgerEntry(
                kind=EntryKind(kind),
                tenant_id=tenant_id,
                at_us=at_us,
                reservation_id=rid,
                agent=agent,
                action=action,
                postings=[Posting.from_row(row) for row in orjson.loads(postings)],
                detail=orjson.loads(detail),
                id=entry_id,
            )
            for entry_id, at_us, kind, rid, agent, action, postings, detail in rows
        ]

    def ledger_query(
        self, tenant_id: str, query: LedgerFilter, *, cursor_id: int | None, is_newest_first: bool, limit: int
    ) -> list[LedgerEntry]:
        """One page of filtered entries after (or, newest first, before) `cursor_id`."""
        agents = None if query.agents is None else self._list(list(query.agents))
        if is_newest_first:
            start = 2**62 if cursor_id is None else cursor_id
        else:
            start = 0 if cursor_id is None else cursor_id
        params = (
            tenant_id,
            start,
            query.agent,
            query.agent,
            agents,
            agents,
            query.action,
            query.action,
            query.kind,
            query.kind,
            query.since_us,
            query.until_us,
            limit,
        )
        if is_newest_first:
            return self._entries_from(tenant_id, self._execute("ledger_before", params))
        return self._entries_from(tenant_id, self._execute("ledger_after", params))

    def recent_postings(self, tenant_id: str, since_us: int, limit: int) -> list[tuple[int, list[Posting]]]:
        """Postings of usage (commits, late commits, post-hoc) since `since_us`, newest first."""
        rows = self._execute("ledger_recent_postings", (tenant_id, since_us, limit))
        return [(at_us, [Posting.from_row(row) for row in orjson.loads(postings)]) for at_us, postings in rows]

    def count_held(self) -> int:
        return int(self._execute("count_held", ())[0][0])

    # -- API keys --------------------------------------------------------------------------
    def insert_key(self, key: KeyRow) -> None:
        self._execute(
            "insert_key",
            (key.tenant_id, key.key_id, key.secret_sha256, key.role, key.agent, key.name, key.created_at_us),
        )

    def find_key(self, key_id: str) -> KeyRow | None:
        rows = self._execute("find_key", (key_id,))
        return KeyRow(*rows[0]) if rows else None

    def list_keys(self, tenant_id: str) -> list[KeyRow]:
        return [KeyRow(*row) for row in self._execute("list_keys", (tenant_id,))]

    def rotate_key(self, tenant_id: str, key_id: str, secret_sha256: str, now_us: int) -> bool:
        return bool(self._execute("rotate_key", (secret_sha256, now_us, tenant_id, key_id)))

    def revoke_key(self, tenant_id: str, key_id: str, now_us: int) -> bool:
        return bool(self._execute("revoke_key", (now_us, tenant_id, key_id)))

    def count_admin_keys(self, tenant_id: str) -> int:
        return int(self._execute("count_admin_keys", (tenant_id,))[0][0])

    # -- writing a batch -------------------------------------------------------------------
    def write(self, tenant_id: str, batch: BatchWrite) -> None:
        if batch.next_due_us is not None:
            self._send("set_next_due", (batch.next_due_us, tenant_id))
        counters = [counter for counter in batch.counters if counter.is_dirty]
        if counters:
            self._execute_many(
                "update_counter",
                [(c.window_start, c.used, c.held, c.overrun, tenant_id, c.key[0], c.key[1]) for c in counters],
            )
        self._write_rolling(tenant_id, counters)
        if batch.new_reservations:
            self._execute_many(
                "insert_reservation", [self._reservation_row(tenant_id, r) for r in batch.new_reservations]
            )
        if batch.changed_reservations:
            self._execute_many(
                "update_reservation",
                [
                    (
                        r.status.value,
                        r.lease_expires_at_us,
                        r.resolved_at_us,
                        dumps(r.result) if r.result else None,
                        r.resolve_key,
                        r.was_expired,
                        tenant_id,
                        r.id,
                    )
                    for r in batch.changed_reservations
                ],
            )
        counted = [
            (tenant_id, p.budget_id, p.instance, p.window_start, entity)
            for entry in batch.entries
            for p in entry.postings
            for entity in p.entities
        ]
        if counted:
            self._execute_many("insert_counted", counted)
        if batch.entries:
            self._execute_many(
                "insert_entry",
                [
                    (
                        tenant_id,
                        e.at_us,
                        e.kind.value,
                        e.reservation_id,
                        e.agent,
                        e.action,
                        dumps([p.to_row() for p in e.postings]),
                        dumps(e.detail),
                    )
                    for e in batch.entries
                ],
            )
        if batch.unclaimed:
            self._execute_many("withdraw_claim", [(tenant_id, key) for key in batch.unclaimed])
        if batch.idempotency:
            now_us = batch.entries[-1].at_us if batch.entries else 0
            self._execute_many(
                "insert_idempotency",
                [(tenant_id, key, fingerprint, response, now_us) for key, fingerprint, response in batch.idempotency],
            )

    def _write_rolling(self, tenant_id: str, counters: list[Counter]) -> None:
        buckets: list[tuple[Any, ...]] = []
        prune_buckets: list[tuple[Any, ...]] = []
        prune_counted: list[tuple[Any, ...]] = []
        for counter in counters:
            budget, instance = counter.key
            if counter.buckets:
                floor = counter.bucket_floor
                prune_buckets.append((tenant_id, budget, instance, floor))
                buckets.extend(
                    (tenant_id, budget, instance, start, used, counter.overrun_buckets.get(start, 0))
                    for start, used in counter.buckets.items()
                    if start >= floor
                )
            if counter.has_advanced:
                prune_counted.append((tenant_id, budget, instance, counter.window_start))
        if buckets:
            self._execute_many("upsert_bucket", buckets)
            self._execute_many("prune_buckets", prune_buckets)
        if prune_counted:
            self._execute_many("prune_counted", prune_counted)

    @staticmethod
    def _reservation_row(tenant_id: str, r: Reservation) -> tuple[Any, ...]:
        return (
            tenant_id,
            r.id,
            r.status.value,
            r.agent,
            r.action,
            r.task,
            dumps(r.amounts),
            dumps([part.to_row() for part in r.parts]),
            r.lease_expires_at_us,
            r.created_at_us,
            r.resolved_at_us,
            dumps(r.result) if r.result else None,
            r.resolve_key,
            r.was_expired,
        )


class Store(abc.ABC):
    """A place Remit keeps its state. Thread-safe: each thread gets its own connection."""

    dialect: str
    is_in_process = False
    """True when the store's work is this process's CPU, never a wait on a server (SQLite): a
    batch may then run on the event loop's own thread (`AsyncBatcher`), once
    `try_writer_lock` has succeeded there."""

    def try_writer_lock(self) -> bool:
        """Take this thread's writers' lock if no other writer holds it (without waiting)."""
        return True

    def release_writer_lock(self) -> None:
        """Let go of a lock `try_writer_lock` took that no transaction released (a no-op otherwise)."""
        return None

    def checkpoint(self) -> None:
        """Move what the write-ahead log holds into the database, from the calling thread, so
        that commits need not (SQLite; a no-op where the database server does it)."""
        return None

    @abc.abstractmethod
    def migrate(self) -> None:
        """Bring the schema up to date (idempotent; safe for several processes at once)."""

    @abc.abstractmethod
    def _begin(self, *, is_read_only: bool = False) -> Transaction: ...

    @abc.abstractmethod
    def _rollback(self, transaction: Transaction) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @contextmanager
    def transaction(self, *, is_read_only: bool = False) -> Iterator[Transaction]:
        """A unit of work: rolled back unless `commit()` was called inside the block.

        A read-only one takes no write lock on SQLite (headroom, ledger and key reads must not
        queue behind batches); on both stores it sees one consistent snapshot.
        """
        transaction = self._begin(is_read_only=is_read_only)
        try:
            yield transaction
        finally:
            self._rollback(transaction)
