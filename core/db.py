"""The SQL database behind the registry, the API keys and the audit log (SQLite or any SQLAlchemy URL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.errors import Unavailable

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything Tessera stores is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite opens a transaction only at the first write, so a read-modify-write (read the status, then
    # write it) could interleave with another thread's and lose its update: SQLite ignores FOR UPDATE.
    # Transactions are begun explicitly instead (_sqlite_begin), taking the write lock at once.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the worker's writes
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes, one fsync per checkpoint
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE: the write lock from the first statement, so each session() block is serialisable. In WAL
    # mode this blocks other writers only (for busy_timeout); readers of the last commit go on.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine per process; each `session()` block is one transaction."""

    def __init__(self, url: str) -> None:
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args = {"check_same_thread": False, "timeout": 10}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except (OperationalError, ProgrammingError) as exc:
            # Down, unreachable, or missing a table (a failed deployment): unavailable either way. What the
            # driver said (addresses, ports) goes to the log, not to the caller.
            log.warning("the registry database is unavailable: %s", exc.orig)
            raise Unavailable("the registry database is unavailable") from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.guard(), self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
