"""The chunk payload every index adapter stores, and how a stored payload becomes a SearchHit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.records import ChunkPoint, SearchHit, StoredChunk, StoredVector
from retrieval.acl_filter import (
    ACL_FIELD,
    CHUNK_INDEX_FIELD,
    DOCUMENT_FIELD,
    LIVE,
    LIVE_FIELD,
    PENDING,
    TENANT_FIELD,
    VERSION_FIELD,
)


def chunk_payload(point: ChunkPoint) -> dict[str, Any]:
    chunk = point.chunk
    return {
        TENANT_FIELD: point.tenant,
        DOCUMENT_FIELD: point.document_id,
        VERSION_FIELD: point.version,
        LIVE_FIELD: PENDING,  # made live by publish() once the whole version is written
        CHUNK_INDEX_FIELD: chunk.index,
        "text": chunk.text,
        "source": {"file_name": point.file_name, "page": chunk.page, "section": chunk.section},
        ACL_FIELD: list(point.acl_tokens),
    }


def search_hit(payload: Mapping[str, Any], score: float) -> SearchHit:
    source = payload.get("source") or {}
    return SearchHit(
        document_id=str(payload[DOCUMENT_FIELD]),
        version=int(payload[VERSION_FIELD]),
        chunk_index=int(payload[CHUNK_INDEX_FIELD]),
        text=str(payload["text"]),
        score=float(score),
        file_name=str(source.get("file_name", "")),
        page=source.get("page"),
        section=source.get("section"),
    )


def stored_chunk(payload: Mapping[str, Any]) -> StoredChunk:
    return StoredChunk(
        tenant=str(payload[TENANT_FIELD]),
        document_id=str(payload[DOCUMENT_FIELD]),
        version=int(payload[VERSION_FIELD]),
        chunk_index=int(payload[CHUNK_INDEX_FIELD]),
        live=payload[LIVE_FIELD] == LIVE,
        acl_tokens=tuple(payload[ACL_FIELD]),
    )


def stored_vector(payload: Mapping[str, Any], vector: Sequence[float]) -> StoredVector:
    return StoredVector(
        document_id=str(payload[DOCUMENT_FIELD]),
        version=int(payload[VERSION_FIELD]),
        chunk_index=int(payload[CHUNK_INDEX_FIELD]),
        acl_tokens=tuple(payload[ACL_FIELD]),
        live=payload[LIVE_FIELD] == LIVE,
        vector=tuple(float(x) for x in vector),
    )
