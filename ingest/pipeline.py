"""The ingestion pipeline: a plain loop over the stages parse -> chunk -> embed -> index for one document
version. The Celery task (ingest/tasks.py) is a thin wrapper around `IngestPipeline.run`.

Order of writes, and why:
1. chunks are upserted not live (nobody sees a half-written version);
2. the registry is read again: a delete or a newer version that arrived meanwhile wins, and this version's
   chunks are removed; an ACL changed meanwhile is applied to them;
3. `publish` makes the version live and then removes the older versions' chunks;
4. the registry marks the version ready, unless the document was deleted meanwhile, in which case its
   chunks are removed again (a DELETE also removes them after marking the document deleted, so whichever
   runs last leaves nothing behind).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from unstructured.file_utils.model import FileType

from core.audit import AuditAction, AuditLog
from core.blobs import BlobStore
from core.embedding import Embedder
from core.errors import DocumentRejected, NotFound, Unavailable
from core.index import VectorIndex
from core.metrics import Metrics
from core.records import Chunk, ChunkPoint, DocumentRecord, DocumentStatus, IngestStage
from core.registry import Registry
from core.timing import timed
from ingest.chunk import Chunker
from ingest.parse import IsolatedParser

log = logging.getLogger(__name__)

WORKER_SUBJECT = "tessera:ingest"
EMBED_PROGRESS_BATCH = 64


@dataclass(frozen=True)
class IngestOutcome:
    document_id: str
    status: DocumentStatus
    chunk_count: int
    seconds: float
    reason: str | None = None


class Superseded(Exception):
    """The document was deleted or given a newer version while this one was being ingested."""


class IngestPipeline:
    def __init__(
        self,
        *,
        registry: Registry,
        blobs: BlobStore,
        index: VectorIndex,
        embedder: Embedder,
        chunker: Chunker,
        parser: IsolatedParser,
        audit: AuditLog,
        metrics: Metrics,
        max_attempts: int,
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.index = index
        self.embedder = embedder
        self.chunker = chunker
        self.parser = parser
        self.max_attempts = max_attempts
        self.audit = audit
        self.metrics = metrics
        self._index_ready = False

    def run(self, document_id: str) -> IngestOutcome:
        """Ingest the document's current version. Idempotent: a final document is left alone, and chunk ids
        are deterministic, so a retry after a crash overwrites what the earlier attempt wrote.

        DocumentRejected ends the document `failed`; any other error propagates for the task to retry.
        """
        started = time.perf_counter()
        try:
            attempt = self.registry.start_attempt(document_id)
        except NotFound:
            log.warning("ingest: document %s is not in the registry; dropping the task", document_id)
            return IngestOutcome(document_id, DocumentStatus.FAILED, 0, 0.0, "not in the registry")
        record = attempt.record
        if record.status.is_final:
            return IngestOutcome(document_id, record.status, record.chunk_count, 0.0, record.failure_reason)
        if attempt.number - record.attempts_at_queue > self.max_attempts:
            # Only a task delivered again after its worker died gets here (errors count through the task's
            # retries): a document that kills its worker every time must not stop the queue forever.
            reason = (
                f"gave up after {self.max_attempts} attempts: the worker stopped each time while ingesting it "
                f"(last stage: {attempt.stopped_at.value if attempt.stopped_at else 'none'})"
            )
            self.fail(document_id, reason)
            return IngestOutcome(document_id, DocumentStatus.FAILED, 0, 0.0, reason)
        log.info("ingest: %s v%d (%s) attempt %d", document_id, record.version, record.file_name, attempt.number)
        stages: dict[str, float] = {}
        try:
            count = self._ingest(record, stages)
        except DocumentRejected as exc:
            reason = str(exc)
            self.index.delete_version(record.tenant, record.id, record.version)
            self.registry.mark_failed(record.id, reason)
            self._audit(record, "failed", {"reason": reason})
            return IngestOutcome(document_id, DocumentStatus.FAILED, 0, time.perf_counter() - started, reason)
        except Superseded:
            current = self.registry.get(record.id)
            if current.status is DocumentStatus.READY and current.live_version == record.version:
                # Another run of this same version went live first (a task delivered twice, e.g. restored
                # from Redis while it ran). Its chunks are the live ones, which this run's upsert has just
                # rewritten with the same ids as unpublished: publish them again instead of deleting them.
                self.index.publish(record.tenant, record.id, record.version, current.chunk_count)
                self.index.delete_version(record.tenant, record.id, record.version, from_chunk=current.chunk_count)
            else:
                self.index.delete_version(record.tenant, record.id, record.version)
            return IngestOutcome(document_id, current.status, 0, time.perf_counter() - started, "superseded")
        except Exception:
            if self.registry.get(record.id).status is DocumentStatus.DELETED:  # e.g. its file went with it
                self.index.delete_document(record.tenant, record.id)
                return IngestOutcome(document_id, DocumentStatus.DELETED, 0, time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        detail = {
            "chunks": count,
            "version": record.version,
            "bytes": record.size_bytes,
            "seconds": round(seconds, 4),
            "stages": {stage: round(spent, 4) for stage, spent in stages.items()},
        }
        self._audit(record, "ready", detail)
        self.metrics.observe_stages(stages)
        log.info("ingest: %s v%d ready with %d chunks in %.2fs", document_id, record.version, count, seconds)
        return IngestOutcome(document_id, DocumentStatus.READY, count, seconds)

    def fail(self, document_id: str, reason: str) -> None:
        """Give up on a document after its attempts are spent."""
        self.registry.mark_failed(document_id, reason)
        record = self.registry.get(document_id)
        self._audit(record, "failed", {"reason": reason})
        try:  # chunks of a version that never went live are invisible; removing them is housekeeping
            self.index.delete_version(record.tenant, record.id, record.version)
        except Unavailable as exc:
            log.warning("ingest: could not remove unpublished chunks of %s: %s", document_id, exc)

    def _audit(self, record: DocumentRecord, outcome: str, detail: dict[str, object]) -> None:
        self.metrics.ingest_outcomes.labels(outcome=outcome).inc()
        self.audit.write(
            tenant=record.tenant,
            subject=WORKER_SUBJECT,
            action=AuditAction.INGESTED,
            outcome=outcome,
            target=record.id,
            detail=detail,
        )

    def _ingest(self, record: DocumentRecord, stages: dict[str, float]) -> int:
        if not self._index_ready:  # once per process; Unavailable here is retried like any index error
            self.index.ensure_ready(self.embedder.dimension)
            self._index_ready = True
        document_id, version = record.id, record.version
        # start_attempt marked the document at the parsing stage
        with timed(stages, "parse"):
            path = self.blobs.path_for(document_id, version)
            # Parse children are shared by one owner's documents only: \0 cannot occur in an identifier.
            owner = f"{record.tenant}\0{record.owner}"
            elements = self.parser.parse(path, FileType[record.file_type], record.file_name, owner=owner)
        self.registry.set_stage(document_id, IngestStage.CHUNKING, 0, len(elements))
        with timed(stages, "chunk"):
            chunks = self.chunker.chunk(elements)
        if not chunks:
            raise DocumentRejected("no extractable text")
        vectors: list[Sequence[float]] = []
        for start in range(0, len(chunks), EMBED_PROGRESS_BATCH):
            self.registry.set_stage(document_id, IngestStage.EMBEDDING, start, len(chunks))
            batch = chunks[start : start + EMBED_PROGRESS_BATCH]
            with timed(stages, "embed"):
                vectors.extend(self.embedder.encode([chunk.text for chunk in batch]))
        self.registry.set_stage(document_id, IngestStage.INDEXING, 0, len(chunks))
        with timed(stages, "index"):
            return self._write(record, chunks, vectors)

    def _write(self, record: DocumentRecord, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
        """Write the version's chunks not live, re-read the registry, publish, mark ready."""
        document_id, version = record.id, record.version
        # The ACL as start_attempt read it: a change since then is found by the read after the upsert.
        written_acl = record.acl_tokens
        points = [
            ChunkPoint(
                tenant=record.tenant,
                document_id=document_id,
                version=version,
                file_name=record.file_name,
                acl_tokens=written_acl,
                chunk=chunk,
                vector=tuple(float(x) for x in vector),
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        self.index.upsert(points)
        if record.attempts > 1:
            # A retry that produced fewer chunks than an earlier attempt must not leave the extra ones behind.
            self.index.delete_version(record.tenant, document_id, version, from_chunk=len(points))

        current = self.registry.get(document_id)
        if current.status is not DocumentStatus.PROCESSING or current.version != version:
            raise Superseded()
        if current.acl_tokens != written_acl:
            self.index.set_acl(record.tenant, document_id, current.acl_tokens)
        self.index.publish(record.tenant, document_id, version, len(points))
        if not self.registry.mark_ready(document_id, version, len(points)):
            if self.registry.get(document_id).status is DocumentStatus.DELETED:
                self.index.delete_document(record.tenant, document_id)
            raise Superseded()
        self.blobs.delete(document_id, older_than=version)
        return len(points)
