"""Each tenant keeps a lower bound of its live holds' lease deadlines, so a batch looks for
overdue holds only once one can be overdue (see `Transaction.claim_tenants`)."""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # 0: existing tenants are looked at by their next batch, which sets the real bound.
    op.execute("ALTER TABLE tenants ADD COLUMN next_due_us BIGINT NOT NULL DEFAULT 0")
