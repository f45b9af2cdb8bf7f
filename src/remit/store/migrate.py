"""Schema migrations with Alembic. The migration scripts are raw SQL per dialect."""

from __future__ import annotations

from importlib import resources

import sqlalchemy
from alembic import command
from alembic.config import Config

_PG_MIGRATION_LOCK = 0x72656D6974
"""Advisory lock key ("remit") so servers starting together migrate one at a time."""


def upgrade(sqlalchemy_url: str) -> None:
    """Apply every pending migration to the database at `sqlalchemy_url`."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("remit.store").joinpath("migrations")))
    engine = sqlalchemy.create_engine(sqlalchemy_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                connection.commit()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
            if connection.dialect.name == "postgresql":
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK})
                connection.commit()
    finally:
        engine.dispose()
