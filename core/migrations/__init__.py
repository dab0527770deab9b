"""Alembic migrations of the SQL schema (registry, API keys, audit log); applied by core.schema.migrate."""
