"""The composition root: builds every engine once per process from Settings and wires them together.

Used by the API (in its lifespan) and by `tessera worker` processes (through api/worker.py). In the
embedded default it also runs the Celery worker as a thread of the API process on an in-memory broker,
and re-queues documents a previous process left unfinished (the registry is the system of record).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import cached_property

import tiktoken
from celery import Celery, Task
from celery.worker import WorkController
from celery.worker import state as worker_state

from core.apikeys import ApiKeys
from core.assets import load_encoding
from core.audit import AuditLog
from core.blobs import BlobStore
from core.db import Database
from core.embedding import Embedder
from core.index import VectorIndex
from core.registry import Registry
from core.schema import create_schema
from core.settings import Settings
from ingest.chunk import Chunker
from ingest.pipeline import IngestPipeline
from ingest.tasks import INGEST_QUEUE, create_celery, enqueue, register_ingest_task
from retrieval.factory import create_index
from retrieval.service import Retriever

log = logging.getLogger(__name__)
_WORKER_STOP_TIMEOUT_S = 30.0


class Runtime:
    """Everything one Tessera process holds. Heavy parts are created on first use and kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.celery: Celery = create_celery(settings)
        self.ingest_task: Task = register_ingest_task(  # type: ignore[type-arg]
            self.celery, self.worker_pipeline, settings.task_max_attempts
        )
        self._worker: EmbeddedWorker | None = None
        self._worker_storage_ready = False
        self._worker_storage_lock = threading.Lock()

    @cached_property
    def database(self) -> Database:
        return Database(self.settings.registry_database_url)

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.database)

    @cached_property
    def api_keys(self) -> ApiKeys:
        return ApiKeys(self.database)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.database)

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.settings.blob_dir)

    @cached_property
    def index(self) -> VectorIndex:
        return create_index(self.settings)

    @cached_property
    def embedder(self) -> Embedder:
        settings = self.settings
        return Embedder(
            batch_size=settings.embed_batch_size, backend=settings.embed_backend, model_cache_dir=settings.model_dir
        )

    @cached_property
    def encoding(self) -> tiktoken.Encoding:
        return load_encoding()

    @cached_property
    def pipeline(self) -> IngestPipeline:
        chunker = Chunker(self.encoding, self.settings.chunk_tokens, self.settings.chunk_overlap_tokens)
        return IngestPipeline(
            registry=self.registry,
            blobs=self.blobs,
            index=self.index,
            embedder=self.embedder,
            chunker=chunker,
            audit=self.audit,
        )

    def worker_pipeline(self) -> IngestPipeline:
        """The pipeline, with the SQL schema made on first use in this process (a `tessera worker` process
        does not go through `start`; the pipeline makes the index collection ready itself)."""
        if not self._worker_storage_ready:
            with self._worker_storage_lock:
                if not self._worker_storage_ready:
                    create_schema(self.database)
                    self._worker_storage_ready = True
        return self.pipeline

    @cached_property
    def retriever(self) -> Retriever:
        return Retriever(index=self.index, embedder=self.embedder, encoding=self.encoding)

    def prepare_storage(self) -> None:
        """Create the data directory, the registry schema and the collection; load the model."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        create_schema(self.database)
        self.index.ensure_ready(self.embedder.dimension)
        # Qdrant Edge builds its HNSW graph only when asked, and the build blocks the process: do it here,
        # before serving. Chunks written later are searched by a scan of their segment until the next start.
        started = time.perf_counter()
        if self.index.optimize():
            log.info("built the vector index in %.1fs", time.perf_counter() - started)

    def start(self) -> None:
        """Start serving: storage ready and, in the embedded default, the in-process worker running."""
        self.prepare_storage()
        if self.settings.queue == "embedded":
            self._worker = EmbeddedWorker(self.celery, self.settings.worker_concurrency)
            self._worker.start()
            self.requeue_unfinished()

    def requeue_unfinished(self) -> int:
        """Send documents left queued or processing (by a crash or a restart) back to the queue."""
        pending = self.registry.unfinished()
        for document_id in pending:
            enqueue(self.ingest_task, document_id)
        if pending:
            log.info("re-queued %d unfinished documents", len(pending))
        return len(pending)

    def submit(self, document_id: str) -> None:
        enqueue(self.ingest_task, document_id)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if "index" in self.__dict__:
            self.index.close()
        if "database" in self.__dict__:
            self.database.close()


class EmbeddedWorker:
    """A Celery worker running in a thread of this process, as celery.contrib.testing does, with a pool of
    `concurrency` threads that share the process's model."""

    def __init__(self, app: Celery, concurrency: int) -> None:
        self._app = app
        self._concurrency = concurrency
        self._controller: WorkController | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._app.finalize()
        # The worker resolves tasks through the current app; this process runs one worker, for this app.
        self._app.set_current()
        self._app.set_default()
        self._controller = WorkController(
            app=self._app,
            pool="threads",
            concurrency=self._concurrency,
            queues=[INGEST_QUEUE],
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        self._thread = threading.Thread(target=self._controller.start, name="tessera-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        worker_state.should_terminate = 0  # the consumer loop checks this and shuts down
        self._thread.join(_WORKER_STOP_TIMEOUT_S)
        worker_state.should_terminate = None
        if self._thread.is_alive():
            log.warning("the ingestion thread did not stop within %.0fs", _WORKER_STOP_TIMEOUT_S)
        self._thread = None
