"""Typed records passed between pipeline stages and returned by the index."""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

# Fixed namespace: point ids must be identical across processes, restarts and versions.
_POINT_NAMESPACE = uuid.UUID("8f0c6a52-3b0e-4f4e-9d55-1a7d1e4e7c31")


_DOCUMENT_ID = re.compile(r"^[0-9a-f]{32}$")


def is_document_id(value: str) -> bool:
    """Document ids are 32 lowercase hex characters (a UUID4 without dashes)."""
    return bool(_DOCUMENT_ID.fullmatch(value))


def point_id(document_id: str, version: int, chunk_index: int) -> str:
    """Deterministic Qdrant point id of a chunk, so a retried task overwrites instead of duplicating.
    Each content version has its own ids: a replacement is written beside the live chunks, not over them."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{document_id}:{version}:{chunk_index}"))


class DocumentStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    DELETED = "deleted"

    @property
    def is_final(self) -> bool:
        return self in (DocumentStatus.READY, DocumentStatus.FAILED, DocumentStatus.DELETED)


class IngestStage(enum.StrEnum):
    PARSING = "parsing"
    CHUNKING = "chunking"
    EMBEDDING = "embedding"
    INDEXING = "indexing"


@dataclass(frozen=True)
class Element:
    """One structural element of a parsed document (a title, a paragraph, a table, a list item)."""

    text: str
    kind: str
    page: int | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough to embed, with where it came from."""

    index: int
    text: str
    page: int | None
    section: str | None
    token_count: int


@dataclass(frozen=True)
class ChunkPoint:
    """A chunk ready for the index: its vector and the metadata the payload carries."""

    tenant: str
    document_id: str
    version: int
    file_name: str
    acl_tokens: tuple[str, ...]
    chunk: Chunk
    vector: tuple[float, ...]


@dataclass(frozen=True)
class SearchHit:
    """A chunk returned by an ACL-filtered search."""

    document_id: str
    version: int
    chunk_index: int
    text: str
    score: float
    file_name: str
    page: int | None
    section: str | None


@dataclass(frozen=True)
class DocumentRecord:
    """The registry's view of one document."""

    id: str
    tenant: str
    owner: str
    file_name: str
    file_type: str
    sha256: str
    size_bytes: int
    status: DocumentStatus
    stage: IngestStage | None
    progress_done: int
    progress_total: int
    chunk_count: int
    failure_reason: str | None
    acl_tokens: tuple[str, ...]
    version: int
    live_version: int | None
    attempts: int
    # `attempts` when it was last queued again (POST .../retry): the attempts since then are this one's to limit.
    attempts_at_queue: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredChunk:
    """What the index holds about one chunk, without its text or vector (for the consistency check)."""

    tenant: str
    document_id: str
    version: int
    chunk_index: int
    live: bool
    acl_tokens: tuple[str, ...]


@dataclass(frozen=True)
class StoredVector:
    """One stored chunk with its vector, for offline checks (exact search in the eval suites)."""

    document_id: str
    version: int
    chunk_index: int
    acl_tokens: tuple[str, ...]
    live: bool
    vector: tuple[float, ...]
