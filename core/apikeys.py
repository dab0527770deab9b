"""Service accounts: API keys accepted as `Authorization: Bearer tsk_...` beside JWTs.

A key is shown once, at creation; only its SHA-256 is stored (the secret part is 256 random bits, so a
fast hash is enough: there is nothing to brute-force). Every request looks the key up, so a revoked key
is refused at once. A key acts as the subject `svc:<name>` of its tenant, in the groups given at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, DateTime, String, select
from sqlalchemy.orm import Mapped, mapped_column

from core.access import Principal, check_identifier
from core.db import Base, Database, as_utc, utcnow
from core.errors import AccessError, AuthError, InputError, NotFound

KEY_PREFIX = "tsk_"
SERVICE_SUBJECT_PREFIX = "svc:"
_KEY_ID = r"[0-9a-f]{16}"  # secrets.token_hex(8), as create() issues it
_KEY_ID_SHAPE = re.compile(_KEY_ID)
_KEY_SHAPE = re.compile(rf"^tsk_({_KEY_ID})_([A-Za-z0-9_\-]{{43}})$")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(256), index=True)
    name: Mapped[str] = mapped_column(String(256))
    groups: Mapped[list[str]] = mapped_column(JSON)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    tenant: str
    name: str
    groups: tuple[str, ...]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def subject(self) -> str:
        return SERVICE_SUBJECT_PREFIX + self.name


def _record(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        groups=tuple(row.groups),
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        revoked_at=as_utc(row.revoked_at) if row.revoked_at else None,
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, database: Database) -> None:
        self._db = database

    def create(self, *, tenant: str, name: str, groups: Sequence[str], created_by: str) -> tuple[ApiKeyRecord, str]:
        """A new key; returns its record and the key itself, which is not stored and cannot be shown again."""
        try:
            Principal.of(tenant, SERVICE_SUBJECT_PREFIX + check_identifier(name, "key name"), groups)
        except AccessError as exc:
            raise InputError(f"invalid API key: {exc}") from exc
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=key_id,
            tenant=tenant,
            name=name,
            groups=sorted(set(groups)),
            secret_sha256=_digest(secret),
            created_by=created_by,
            created_at=utcnow(),
            revoked_at=None,
        )
        with self._db.session() as session:
            session.add(row)
            session.flush()
            return _record(row), f"{KEY_PREFIX}{key_id}_{secret}"

    def list(self, tenant: str) -> list[ApiKeyRecord]:
        statement = select(ApiKeyRow).where(ApiKeyRow.tenant == tenant).order_by(ApiKeyRow.created_at.desc())
        with self._db.read() as session:
            return [_record(row) for row in session.scalars(statement)]

    def revoke(self, tenant: str, key_id: str) -> ApiKeyRecord:
        if not _KEY_ID_SHAPE.fullmatch(key_id):  # never sent to the database (PostgreSQL refuses NUL: 500)
            raise NotFound(f"API key {key_id} not found")
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.tenant != tenant:
                raise NotFound(f"API key {key_id} not found")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _record(row)

    def authenticate(self, key: str) -> Principal:
        """The principal of a valid, unrevoked key; AuthError otherwise."""
        match = _KEY_SHAPE.match(key)
        if match is None:
            raise AuthError("malformed API key", reason="api_key")
        key_id, secret = match.groups()
        with self._db.read() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
                raise AuthError("unknown API key", reason="api_key")
            if row.revoked_at is not None:
                raise AuthError("API key revoked", reason="api_key")
            return Principal.of(row.tenant, SERVICE_SUBJECT_PREFIX + row.name, row.groups)
