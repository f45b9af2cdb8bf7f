"""The engine's tables: tenants, counters, rolling buckets, counted entities, reservations,
idempotency keys and the ledger. Every key leads with tenant_id."""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None

_COMMON = [
    """CREATE TABLE tenants (
        tenant_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        timezone TEXT NOT NULL,
        config_version BIGINT NOT NULL,
        config TEXT NOT NULL,
        write_seq BIGINT NOT NULL DEFAULT 0,
        lineage TEXT NOT NULL DEFAULT '{}',
        created_at_us BIGINT NOT NULL)""",
    """CREATE TABLE counters (
        tenant_id TEXT NOT NULL,
        budget_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        used BIGINT NOT NULL,
        held BIGINT NOT NULL,
        overrun BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, budget_id, instance))""",
    """CREATE TABLE rolling_buckets (
        tenant_id TEXT NOT NULL,
        budget_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        bucket_start BIGINT NOT NULL,
        used BIGINT NOT NULL,
        overrun BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, budget_id, instance, bucket_start))""",
    """CREATE TABLE counted_entities (
        tenant_id TEXT NOT NULL,
        budget_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        entity TEXT NOT NULL,
        PRIMARY KEY (tenant_id, budget_id, instance, window_start, entity))""",
    """CREATE TABLE reservations (
        tenant_id TEXT NOT NULL,
        reservation_id TEXT NOT NULL,
        status TEXT NOT NULL,
        agent TEXT NOT NULL,
        action TEXT NOT NULL,
        task TEXT,
        amounts TEXT NOT NULL,
        parts TEXT NOT NULL,
        lease_expires_at_us BIGINT NOT NULL,
        created_at_us BIGINT NOT NULL,
        resolved_at_us BIGINT,
        result TEXT,
        resolve_key TEXT,
        was_expired BOOLEAN NOT NULL,
        PRIMARY KEY (tenant_id, reservation_id))""",
    # Only live holds are in this index, so it stays as small as the work in flight: a batch
    # finds its tenant's overdue holds by range, the global sweep scans it whole.
    "CREATE INDEX reservations_due ON reservations (tenant_id, lease_expires_at_us) WHERE status = 'held'",
    """CREATE TABLE idempotency (
        tenant_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        response TEXT,
        created_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, idempotency_key))""",
]

_SQLITE = [
    # SQLite hands out entry ids from one rowid sequence; the (tenant_id, entry_id) index serves reads.
    """CREATE TABLE ledger (
        entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        at_us BIGINT NOT NULL,
        kind TEXT NOT NULL,
        reservation_id TEXT,
        agent TEXT,
        action TEXT,
        postings TEXT NOT NULL,
        detail TEXT NOT NULL)""",
    "CREATE UNIQUE INDEX ledger_tenant_entry ON ledger (tenant_id, entry_id)",
    "CREATE INDEX ledger_reservation ON ledger (tenant_id, reservation_id)",
]

_POSTGRES = [
    """CREATE TABLE ledger (
        tenant_id TEXT NOT NULL,
        entry_id BIGINT GENERATED ALWAYS AS IDENTITY,
        at_us BIGINT NOT NULL,
        kind TEXT NOT NULL,
        reservation_id TEXT,
        agent TEXT,
        action TEXT,
        postings TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (tenant_id, entry_id))""",
    "CREATE INDEX ledger_reservation ON ledger (tenant_id, reservation_id)",
    # The ledger is append-only: the database itself refuses to change or delete an entry.
    """CREATE FUNCTION remit_ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'the ledger is append-only'; END $$""",
    """CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
       FOR EACH ROW EXECUTE FUNCTION remit_ledger_is_append_only()""",
]

_SQLITE_TRIGGERS = [
    """CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
       BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
       BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
]


_POSTGRES_STORAGE = [
    # Counters are rewritten by every batch and reservations once each: room left on their
    # pages lets PostgreSQL update in place (HOT) instead of touching the index every time.
    "ALTER TABLE counters SET (fillfactor = 50)",
    "ALTER TABLE reservations SET (fillfactor = 80)",
    "ALTER TABLE tenants SET (fillfactor = 50)",
]


def upgrade() -> None:
    is_sqlite = op.get_bind().dialect.name == "sqlite"
    statements = _COMMON + (_SQLITE + _SQLITE_TRIGGERS if is_sqlite else _POSTGRES + _POSTGRES_STORAGE)
    for statement in statements:
        op.execute(statement)
