"""Request and response bodies of the HTTP API (inputs and outputs are separate models)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from core.access import DocumentAcl
from core.records import DocumentRecord, DocumentStatus


class AclIn(BaseModel):
    """Who may read the document besides the uploader (who always may)."""

    model_config = ConfigDict(extra="forbid")

    users: list[str] = Field(default_factory=list, max_length=512)
    groups: list[str] = Field(default_factory=list, max_length=512)


class AclOut(BaseModel):
    users: list[str]
    groups: list[str]


class DocumentOut(BaseModel):
    id: str
    file_name: str
    file_type: str
    status: DocumentStatus
    chunk_count: int
    failure_reason: str | None
    owner: str
    acl: AclOut
    sha256: str
    size_bytes: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: DocumentRecord) -> DocumentOut:
        users, groups = DocumentAcl.split(record.acl_tokens)
        return cls(
            id=record.id,
            file_name=record.file_name,
            file_type=record.file_type.lower(),
            status=record.status,
            chunk_count=record.chunk_count,
            failure_reason=record.failure_reason,
            owner=record.owner,
            acl=AclOut(users=users, groups=groups),
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(default=None, ge=1, le=50, description="default 5, at most 50")
    max_context_tokens: int | None = Field(
        default=None, ge=64, le=200_000, description="budget of the whole prompt, in cl100k_base tokens"
    )


class ChunkOut(BaseModel):
    document_id: str
    chunk_index: int
    text: str
    score: float
    file_name: str
    page: int | None
    section: str | None
    citation: int | None = Field(description="the block number in `prompt`, or null when left out of it")


class QueryOut(BaseModel):
    query: str
    results: list[ChunkOut]
    prompt: str
    prompt_tokens: int


class ErrorOut(BaseModel):
    detail: str
