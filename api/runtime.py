"""The composition root: builds every engine once per process from Settings and wires them together.

Used by the API (in its lifespan) and by `tessera worker` processes (through api/worker.py). In the
embedded default it also runs the Celery worker as a thread of the API process on an in-memory broker,
and re-queues documents a previous process left unfinished (the registry is the system of record).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

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
from core.errors import Unavailable
from core.index import VectorIndex
from core.metrics import Metrics
from core.records import DocumentStatus
from core.registry import Registry
from core.schema import migrate
from core.settings import Settings
from ingest.chunk import Chunker, warm_up_sentence_splitting
from ingest.consistency import CheckReport, check
from ingest.parse import IsolatedParser, parse_limits
from ingest.pipeline import IngestPipeline
from ingest.sandbox import start_server
from ingest.tasks import INGEST_QUEUE, create_celery, enqueue, register_ingest_task
from retrieval.factory import create_index
from retrieval.service import Retriever

log = logging.getLogger(__name__)
_WORKER_STOP_TIMEOUT_S = 30.0
_BROKER_CHECK_TIMEOUT_S = 2.0


class Runtime:
    """Everything one Tessera process holds. Heavy parts are created on first use and kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.celery: Celery = create_celery(settings)
        self.ingest_task: Task = register_ingest_task(  # type: ignore[type-arg]
            self.celery, self.worker_pipeline, settings.task_max_attempts
        )
        self._worker: EmbeddedWorker | None = None
        self._schema_migrated = False
        self._schema_lock = threading.Lock()
        self.metrics = Metrics()
        self.metrics.watch_state(self._documents_by_status, self.queue_depth)

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
            parser=IsolatedParser(parse_limits(self.settings)),
            audit=self.audit,
            metrics=self.metrics,
            max_attempts=self.settings.task_max_attempts,
        )

    def prepare_ingestion(self) -> None:
        """In the background while the model loads: the parse sandbox's fork server loads the parser, and a
        thread loads the chunker's sentence tokenizer (1.2 s, or the first long document's wait)."""
        start_server()
        threading.Thread(target=warm_up_sentence_splitting, name="tessera-warm-chunker", daemon=True).start()

    def migrate_schema(self) -> None:
        """Bring the SQL schema to the newest revision, once per process."""
        if not self._schema_migrated:
            with self._schema_lock:
                if not self._schema_migrated:
                    migrate(self.database)
                    self._schema_migrated = True

    def worker_pipeline(self) -> IngestPipeline:
        """The pipeline, with the SQL schema migrated on first use in this process (a `tessera worker` process
        does not go through `start`; the pipeline makes the index collection ready itself)."""
        self.migrate_schema()
        return self.pipeline

    @cached_property
    def retriever(self) -> Retriever:
        return Retriever(index=self.index, embedder=self.embedder, encoding=self.encoding)

    def _documents_by_status(self) -> dict[str, int]:
        # Before the schema is migrated (a `tessera worker` scraped before its first task), there is no table.
        counts = self.registry.count_by_status() if self._schema_migrated else {}
        return {status.value: counts.get(status.value, 0) for status in DocumentStatus}

    def queue_depth(self) -> int:
        """Ingestion tasks waiting in the broker (not those a worker holds)."""
        with self.celery.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=_BROKER_CHECK_TIMEOUT_S)
            declared = connection.default_channel.queue_declare(queue=INGEST_QUEUE, passive=True)
            return int(declared.message_count)

    def readiness(self) -> dict[str, str]:
        """Each dependency a request needs, checked now: "ok", or why not. The model must already be loaded
        (a probe must not load it)."""
        checks: dict[str, Callable[[], object]] = {
            "registry": self.registry.check,
            "index": self.index.check,
            "queue": self._check_queue,
            "model": self._check_model,
        }
        results = {}
        for name, probe in checks.items():
            try:
                probe()
                results[name] = "ok"
            except Exception as exc:  # reported, not raised: the probe says which one failed
                log.warning("readiness: %s is not ready: %s", name, exc)
                results[name] = f"unavailable: {type(exc).__name__}"
        return results

    def _check_queue(self) -> None:
        if self.settings.queue == "embedded":
            if self._worker is None or not self._worker.alive:
                raise Unavailable("the in-process ingestion worker is not running")
            return
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=_BROKER_CHECK_TIMEOUT_S)

    def _check_model(self) -> None:
        if "embedder" not in self.__dict__ or not self.embedder.loaded:
            raise Unavailable("the embedding model is not loaded")

    def prepare_storage(self) -> None:
        """Create the data directory, the registry schema and the collection; load the model."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.migrate_schema()
        self.prepare_ingestion()
        self.index.ensure_ready(self.embedder.dimension)
        # Qdrant Edge builds its HNSW graph only when asked, and the build blocks the process: do it here,
        # before serving. Chunks written later are searched by a scan of their segment until the next start.
        started = time.perf_counter()
        if self.index.optimize():
            log.info("built the vector index in %.1fs", time.perf_counter() - started)

    def start(self) -> None:
        """Start serving: storage ready and, in the embedded default, the in-process worker running."""
        self.prepare_storage()
        # Built now: /v1/query runs on the event loop, where the first query would otherwise load and verify the
        # tokenizer's encoding (~0.1 s) with every other request waiting.
        _ = self.retriever
        if self.settings.queue == "embedded":
            self._worker = EmbeddedWorker(self.celery, self.settings.worker_concurrency)
            self._worker.start()
            if self._running_marker.exists():  # the last process on this directory did not stop cleanly
                report = self.check_consistency(repair=True)
                log.warning("unclean stop: check found %d problems and repaired them", len(report.findings))
            self._running_marker.touch()
            self.requeue_unfinished()

    def check_consistency(self, *, repair: bool, tenant: str | None = None) -> CheckReport:
        """Do the registry and the index agree (of one tenant, or all)? With `repair`, make the index agree."""
        return check(self.registry, self.index, repair=repair, requeue=self._ingest_again, tenant=tenant)

    def _ingest_again(self, document_id: str) -> None:
        self.registry.mark_queued(document_id)
        self.submit(document_id)

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

    @property
    def _running_marker(self) -> Path:
        """Present while an embedded process holds the data directory; left behind by a crash or a kill."""
        return self.settings.data_dir / "running"

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
            self._running_marker.unlink(missing_ok=True)
        if "pipeline" in self.__dict__:
            self.pipeline.parser.close()
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

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._thread is None:
            return
        worker_state.should_terminate = 0  # the consumer loop checks this and shuts down
        self._thread.join(_WORKER_STOP_TIMEOUT_S)
        worker_state.should_terminate = None
        if self._thread.is_alive():
            log.warning("the ingestion thread did not stop within %.0fs", _WORKER_STOP_TIMEOUT_S)
        self._thread = None
