"""The SQL database behind the registry, the API keys and the audit log (SQLite or any SQLAlchemy URL)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.errors import Unavailable

log = logging.getLogger(__name__)
_SQLITE_BUSY_TIMEOUT_S = 10.0


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
    cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_READ_ONLY = "tessera_read_only"  # an execution option: the connection's transactions only read


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE: the write lock from the first statement, so each session() block is serialisable. In WAL
    # mode this blocks other writers only (for busy_timeout); readers of the last commit go on. A read()
    # block takes no lock: a deferred BEGIN reads the last commit.
    read_only = connection.get_execution_options().get(_READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def _held(lock: threading.Lock, timeout_s: float) -> Iterator[None]:
    if not lock.acquire(timeout=timeout_s):
        raise Unavailable("the registry database is busy")
    try:
        yield
    finally:
        lock.release()


class Database:
    """One engine per process; each `session()` block is one transaction."""

    def __init__(self, url: str) -> None:
        sqlite = url.startswith("sqlite")
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S} if sqlite else {}
        # A pooled connection to a server can be dropped while idle, so it is pinged before use; a SQLite file's cannot.
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not sqlite)
        # SQLite: this process's transactions queue on a lock before BEGIN IMMEDIATE. Otherwise each thread that
        # finds the write lock taken sleeps in SQLite's busy handler, in steps of up to 100 ms, however soon
        # the lock is free: under 16 concurrent queries (each writes its audit record) that made the tail.
        # Other processes still wait through busy_timeout.
        self._writer_lock: threading.Lock | None = None
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
            self._writer_lock = threading.Lock()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{_READ_ONLY: True}))

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
        with self.guard(), self._one_writer(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A transaction that only reads. On SQLite it waits neither for this process's writer lock nor for
        SQLite's: it sees the last commit while a writer works (WAL), so an API-key lookup or a listing does not
        queue behind writes (during ingestion, threads waiting for the writer lock were a tenth of py-spy's
        samples; ingestion's own rate did not change measurably). It is rolled back, so nothing written in it
        persists, and an ORM change left in it is an error. Build what is returned inside the block: the rows
        expire with the rollback."""
        with self.guard(), self._read_sessions() as session:
            try:
                yield session
                if session.new or session.dirty or session.deleted:
                    raise RuntimeError("a read transaction was given changes to write: use session()")
            finally:
                session.rollback()

    def _one_writer(self) -> AbstractContextManager[object]:
        if self._writer_lock is None:
            return nullcontext()
        return _held(self._writer_lock, _SQLITE_BUSY_TIMEOUT_S)

    def close(self) -> None:
        self.engine.dispose()
