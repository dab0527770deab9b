"""The document registry: the system of record for every upload (SQLAlchemy; SQLite in the embedded default).

Status moves queued -> processing -> ready | failed. The registry also keeps each document's ACL tokens,
so `GET /v1/documents/{id}` applies the same rule as the index filter (core.access.Principal.may_read).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from core.access import Principal
from core.errors import NotFound, Unavailable
from core.records import DocumentRecord, DocumentStatus

MAX_REASON_CHARS = 2000


class _Base(DeclarativeBase):
    pass


class DocumentRow(_Base):
    __tablename__ = "documents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(256), index=True)
    owner: Mapped[str] = mapped_column(String(256))
    file_name: Mapped[str] = mapped_column(String(1024))
    file_type: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    acl_tokens: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _now() -> datetime:
    return datetime.now(UTC)


def _record(row: DocumentRow) -> DocumentRecord:
    return DocumentRecord(
        id=row.id,
        tenant=row.tenant,
        owner=row.owner,
        file_name=row.file_name,
        file_type=row.file_type,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        status=DocumentStatus(row.status),
        chunk_count=row.chunk_count,
        failure_reason=row.failure_reason,
        acl_tokens=tuple(row.acl_tokens),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the worker's writes
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Registry:
    """Documents and their status. Safe to share between threads; each call is one transaction."""

    def __init__(self, url: str) -> None:
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args = {"check_same_thread": False, "timeout": 10}
        self._engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self._engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def create_schema(self) -> None:
        with self._guard():
            _Base.metadata.create_all(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        with self._session() as session:
            session.execute(select(1))

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise Unavailable(f"the document registry is unavailable: {exc.orig}") from exc

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._guard(), self._sessions.begin() as session:
            yield session

    def add(
        self,
        *,
        document_id: str,
        tenant: str,
        owner: str,
        file_name: str,
        file_type: str,
        sha256: str,
        size_bytes: int,
        acl_tokens: Sequence[str],
    ) -> DocumentRecord:
        now = _now()
        row = DocumentRow(
            id=document_id,
            tenant=tenant,
            owner=owner,
            file_name=file_name,
            file_type=file_type,
            sha256=sha256,
            size_bytes=size_bytes,
            status=DocumentStatus.QUEUED.value,
            chunk_count=0,
            failure_reason=None,
            attempts=0,
            acl_tokens=list(acl_tokens),
            created_at=now,
            updated_at=now,
        )
        with self._session() as session:
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, document_id: str) -> DocumentRecord:
        with self._session() as session:
            row = session.get(DocumentRow, document_id)
            if row is None:
                raise NotFound(f"document {document_id} not found")
            return _record(row)

    def get_visible(self, principal: Principal, document_id: str) -> DocumentRecord:
        """The document if the principal may read it; NotFound otherwise (existence is not leaked)."""
        try:
            record = self.get(document_id)
        except NotFound:
            raise NotFound(f"document {document_id} not found") from None
        if not principal.may_read(record.tenant, record.acl_tokens):
            raise NotFound(f"document {document_id} not found")
        return record

    def unfinished(self) -> list[str]:
        """Ids of documents still queued or processing, oldest first (re-queued after a restart)."""
        statement = (
            select(DocumentRow.id)
            .where(DocumentRow.status.in_([DocumentStatus.QUEUED.value, DocumentStatus.PROCESSING.value]))
            .order_by(DocumentRow.created_at)
        )
        with self._session() as session:
            return list(session.scalars(statement))

    def start_attempt(self, document_id: str) -> tuple[DocumentRecord, int]:
        """Mark the document processing and count the attempt; returns the record and the attempt number."""
        with self._session() as session:
            row = session.get(DocumentRow, document_id, with_for_update=True)
            if row is None:
                raise NotFound(f"document {document_id} not found")
            row.attempts += 1
            if not DocumentStatus(row.status).is_final:
                row.status = DocumentStatus.PROCESSING.value
                row.updated_at = _now()
            return _record(row), row.attempts

    def mark_queued(self, document_id: str) -> None:
        """Send a document back to `queued` (a retry, or recovery of an interrupted ingestion)."""
        self._set_status(document_id, DocumentStatus.QUEUED, chunk_count=0, reason=None)

    def mark_ready(self, document_id: str, chunk_count: int) -> None:
        self._set_status(document_id, DocumentStatus.READY, chunk_count=chunk_count, reason=None)

    def mark_failed(self, document_id: str, reason: str) -> None:
        self._set_status(document_id, DocumentStatus.FAILED, chunk_count=0, reason=reason[:MAX_REASON_CHARS])

    def _set_status(self, document_id: str, status: DocumentStatus, *, chunk_count: int, reason: str | None) -> None:
        with self._session() as session:
            row = session.get(DocumentRow, document_id, with_for_update=True)
            if row is None:
                raise NotFound(f"document {document_id} not found")
            row.status = status.value
            row.chunk_count = chunk_count
            row.failure_reason = reason
            row.updated_at = _now()
