"""The service's tables and indexes: API keys, and ledger indexes for the audit filters and burn rates."""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"

_STATEMENTS = [
    # A key is `rk_<key_id>_<secret>`; only the SHA-256 of the secret is kept. The secret is
    # 256 random bits, so a fast hash is enough (no password-style stretching is needed).
    """CREATE TABLE api_keys (
        tenant_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        role TEXT NOT NULL,
        agent TEXT,
        name TEXT,
        created_at_us BIGINT NOT NULL,
        rotated_at_us BIGINT,
        revoked_at_us BIGINT,
        PRIMARY KEY (tenant_id, key_id))""",
    # Authentication starts from the key alone; key ids are random, so one global index is safe.
    "CREATE UNIQUE INDEX api_keys_lookup ON api_keys (key_id)",
    # The audit explorer filters by agent and by time; burn rates read the last hour.
    "CREATE INDEX ledger_agent ON ledger (tenant_id, agent, entry_id)",
    "CREATE INDEX ledger_time ON ledger (tenant_id, at_us)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)
