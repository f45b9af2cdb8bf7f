"""A batch of the engine that wrote a tenant last claims it without reading it first; on
PostgreSQL the claim fails the transaction itself when another writer came in between, so that
the writes sent behind it in the same round trip are never applied (`claim_owned_tenants`)."""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"

TENANT_MOVED_SQLSTATE = "RM001"
"""Also in store/postgres.py: how the engine tells this failure from any other."""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # SQLite answers in-process: the claim's row count is checked before anything is written
    op.execute(
        f"""CREATE FUNCTION remit_tenant_moved() RETURNS void LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'remit: the tenant was written by another process since this one last did'
              USING ERRCODE = '{TENANT_MOVED_SQLSTATE}'; END $$"""
    )
