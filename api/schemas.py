"""Request and response bodies of the HTTP API (inputs and outputs are separate models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.access import DocumentAcl
from core.apikeys import ApiKeyRecord
from core.audit import AuditRecord
from core.index import SearchMode
from core.records import DocumentRecord, DocumentStatus, IngestStage


class AclIn(BaseModel):
    """Who may read the document besides the uploader (who always may)."""

    model_config = ConfigDict(extra="forbid")

    users: list[str] = Field(default_factory=list, max_length=512)
    groups: list[str] = Field(default_factory=list, max_length=512)


class AclOut(BaseModel):
    users: list[str]
    groups: list[str]


class ProgressOut(BaseModel):
    stage: IngestStage | None = Field(description="parsing, chunking, embedding or indexing while processing")
    done: int
    total: int


class DocumentOut(BaseModel):
    id: str
    file_name: str
    file_type: str
    status: DocumentStatus
    progress: ProgressOut
    chunk_count: int
    failure_reason: str | None
    owner: str
    acl: AclOut
    sha256: str
    size_bytes: int
    version: int = Field(description="the latest content version")
    live_version: int | None = Field(description="the version queries see (null until one is ready)")
    attempts: int
    created_at: datetime
    updated_at: datetime
    duplicate: bool = Field(default=False, description="true when an upload matched this existing document")

    @classmethod
    def of(cls, record: DocumentRecord, *, duplicate: bool = False) -> DocumentOut:
        users, groups = DocumentAcl.split(record.acl_tokens)
        return cls(
            id=record.id,
            file_name=record.file_name,
            file_type=record.file_type.lower(),
            status=record.status,
            progress=ProgressOut(stage=record.stage, done=record.progress_done, total=record.progress_total),
            chunk_count=record.chunk_count,
            failure_reason=record.failure_reason,
            owner=record.owner,
            acl=AclOut(users=users, groups=groups),
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            version=record.version,
            live_version=record.live_version,
            attempts=record.attempts,
            created_at=record.created_at,
            updated_at=record.updated_at,
            duplicate=duplicate,
        )


class DocumentPage(BaseModel):
    documents: list[DocumentOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    groups: list[str] = Field(default_factory=list, max_length=512)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    subject: str
    groups: list[str]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> ApiKeyOut:
        return cls(
            id=record.id,
            name=record.name,
            subject=record.subject,
            groups=list(record.groups),
            created_by=record.created_by,
            created_at=record.created_at,
            revoked_at=record.revoked_at,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the key itself: shown once, store it now")


class AuditOut(BaseModel):
    id: int
    at: datetime
    subject: str
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, record: AuditRecord) -> AuditOut:
        return cls(
            id=record.id,
            at=record.at,
            subject=record.subject,
            action=record.action,
            target=record.target,
            outcome=record.outcome,
            detail=record.detail,
        )


class AuditPage(BaseModel):
    records: list[AuditOut]
    next_before_id: int | None


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(default=None, ge=1, le=50, description="default 5, at most 50")
    max_context_tokens: int | None = Field(
        default=None, ge=64, le=200_000, description="budget of the whole prompt, in cl100k_base tokens"
    )
    mode: SearchMode | None = Field(
        default=None,
        description=(
            "dense (embeddings), sparse (BM25) or hybrid (both, fused by reciprocal rank); "
            "default TESSERA_DEFAULT_SEARCH_MODE (dense)"
        ),
    )


class ChunkOut(BaseModel):
    document_id: str
    version: int
    chunk_index: int
    text: str
    score: float
    file_name: str
    page: int | None
    section: str | None
    citation: int | None = Field(description="the block number in `prompt`, or null when left out of it")


class QueryOut(BaseModel):
    query: str
    mode: SearchMode
    results: list[ChunkOut]
    prompt: str
    prompt_tokens: int


class ErrorOut(BaseModel):
    detail: str


class ReadinessOut(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description='each dependency (registry, index, queue, model): "ok", or why not')
