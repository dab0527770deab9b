"""The ingestion pipeline: a plain loop over the stages parse -> chunk -> embed -> index for one document.

The Celery task (ingest/tasks.py) is a thin wrapper around `IngestPipeline.run`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from unstructured.file_utils.model import FileType

from core.blobs import BlobStore
from core.embedding import Embedder
from core.errors import DocumentRejected, NotFound
from core.index import VectorIndex
from core.records import ChunkPoint, DocumentRecord, DocumentStatus
from core.registry import Registry
from ingest.chunk import Chunker
from ingest.parse import parse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOutcome:
    document_id: str
    status: DocumentStatus
    chunk_count: int
    seconds: float
    reason: str | None = None


class IngestPipeline:
    def __init__(
        self,
        *,
        registry: Registry,
        blobs: BlobStore,
        index: VectorIndex,
        embedder: Embedder,
        chunker: Chunker,
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.index = index
        self.embedder = embedder
        self.chunker = chunker

    def run(self, document_id: str) -> IngestOutcome:
        """Ingest one document. Idempotent: a document already final is left alone, and chunk ids are
        deterministic, so a retry after a crash overwrites what the first attempt wrote.

        DocumentRejected ends the document `failed`; any other error propagates for the task to retry.
        """
        started = time.perf_counter()
        try:
            record, attempt = self.registry.start_attempt(document_id)
        except NotFound:
            log.warning("ingest: document %s is not in the registry; dropping the task", document_id)
            return IngestOutcome(document_id, DocumentStatus.FAILED, 0, 0.0, "not in the registry")
        if record.status.is_final:
            return IngestOutcome(document_id, record.status, record.chunk_count, 0.0, record.failure_reason)
        log.info("ingest: %s (%s) attempt %d", document_id, record.file_name, attempt)
        try:
            count = self._index_document(record)
        except DocumentRejected as exc:
            reason = str(exc)
            self.index.delete_document(record.tenant, record.id)
            self.registry.mark_failed(record.id, reason)
            log.info("ingest: %s failed: %s", document_id, reason)
            return IngestOutcome(document_id, DocumentStatus.FAILED, 0, time.perf_counter() - started, reason)
        self.registry.mark_ready(record.id, count)
        seconds = time.perf_counter() - started
        log.info("ingest: %s ready with %d chunks in %.2fs", document_id, count, seconds)
        return IngestOutcome(document_id, DocumentStatus.READY, count, seconds)

    def fail(self, document_id: str, reason: str) -> None:
        """Give up on a document after its retries are spent."""
        self.registry.mark_failed(document_id, reason)

    def _index_document(self, record: DocumentRecord) -> int:
        elements = parse(self.blobs.path_for(record.id), FileType[record.file_type], record.file_name)
        chunks = self.chunker.chunk(elements)
        if not chunks:
            raise DocumentRejected("no extractable text")
        vectors = self.embedder.encode([chunk.text for chunk in chunks])
        points = [
            ChunkPoint(
                tenant=record.tenant,
                document_id=record.id,
                file_name=record.file_name,
                acl_tokens=record.acl_tokens,
                chunk=chunk,
                vector=tuple(float(x) for x in vector),
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        self.index.upsert(points)
        # A retry that produced fewer chunks than an earlier attempt must not leave the extra ones behind.
        self.index.delete_document(record.tenant, record.id, from_chunk=len(points))
        return len(points)
