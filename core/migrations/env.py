"""Alembic's entry point. `tessera migrate` and every process start run it through core.schema.migrate,
which hands over an open connection; the `alembic` command line (alembic.ini, for writing a new revision)
gives a URL instead."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from core.db import Base
from core.schema import TABLE_MODULES  # registers every table on Base.metadata

assert TABLE_MODULES
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    with create_engine(context.config.get_main_option("sqlalchemy.url") or "").connect() as own:
        _run(own)
        own.commit()
