"""Stores: one narrow interface (`base.Store`), SQLite and PostgreSQL behind it."""
