"""A throwaway Postgres schema per test on this machine's server (127.0.0.1:5432, trust auth, database `test`;
.ci/run starts it when it is down). Set TESSERA_TEST_POSTGRES_URL to use another server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """Yields a URL whose connections work in a fresh, empty schema; the schema is dropped afterwards."""
    name = f"tessera_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()
