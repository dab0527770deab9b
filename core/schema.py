"""The SQL schema: every table Tessera keeps (importing their modules registers them on Base.metadata), and
`migrate`, which brings a database to the newest revision under core/migrations.

Every process runs `migrate` at start (the API, each worker, `tessera migrate`); concurrent starts take a
lock first (a Postgres advisory lock, or a lock file beside a SQLite database), so one migrates and the
others find the schema current.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, inspect, text

import core.apikeys
import core.audit
import core.registry
from core.db import Database

log = logging.getLogger(__name__)

TABLE_MODULES = (core.registry, core.apikeys, core.audit)
MIGRATIONS = "core:migrations"
INITIAL_REVISION = "0001"
# The key of the Postgres advisory lock held while migrating (any constant; "tessera" in ASCII).
_ADVISORY_LOCK_KEY = 0x74657373657261


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "core/migrations holds no revision"
    return head


def current_revision(database: Database) -> str | None:
    with database.guard(), database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _sqlite_file_lock(url: URL) -> Iterator[None]:
    """SQLite: a lock file beside the database, taken before any connection opens. Connections opened while
    another switches a new database to WAL can get "database is locked" at once, busy timeout or not (seen
    with four starts at once on a loaded machine)."""
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        yield
        return
    with Path(f"{path}.migrate-lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def _postgres_advisory_lock(connection: Connection) -> Iterator[None]:
    if connection.dialect.name == "postgresql":
        # Released when the surrounding transaction ends (Postgres DDL is transactional).
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    yield


def migrate(database: Database) -> str:
    """Upgrade the database to the newest revision; returns it. A database whose tables `create_all` made
    before migrations existed is stamped at the initial revision, which is that schema."""
    with (
        database.guard(),
        _sqlite_file_lock(database.engine.url),
        database.engine.begin() as connection,
        _postgres_advisory_lock(connection),
    ):
        config = alembic_config(connection)
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None and inspect(connection).has_table("documents"):
            log.info("registry tables predate migrations: stamping revision %s", INITIAL_REVISION)
            command.stamp(config, INITIAL_REVISION)
            current = INITIAL_REVISION
        command.upgrade(config, "head")
    head = head_revision()
    if current != head:
        log.info("registry schema migrated from %s to %s", current or "empty", head)
    return head
