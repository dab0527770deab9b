"""The Celery app and the ingestion task: a thin wrapper around IngestPipeline.run.

The same task runs in both modes: in the embedded default a worker thread consumes an in-memory broker
inside the API process; in service mode `tessera worker` processes consume Redis. The pipeline (model,
index, registry) is built once per worker process by the provider the composition root registers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError

from core.errors import Unavailable
from core.logs import current_request_id, log_context
from core.settings import Settings
from ingest.pipeline import IngestPipeline

log = logging.getLogger(__name__)

INGEST_TASK_NAME = "tessera.ingest.document"
INGEST_QUEUE = "tessera.ingest"
RETRY_BACKOFF_BASE_S = 2.0
RETRY_BACKOFF_MAX_S = 60.0
# A Redis that accepts connections but does not answer (frozen, partitioned) must not hang a publish, which
# would hang the upload: each command gives up after this long (a healthy Redis answers in well under a ms).
BROKER_SOCKET_TIMEOUT_S = 1.0
# How often, per visibility timeout, a running task renews its delivery in Redis (see _KeepVisible).
VISIBILITY_RENEWALS_PER_TIMEOUT = 3

PipelineProvider = Callable[[], IngestPipeline]


def create_celery(settings: Settings) -> Celery:
    """The Celery app for the configured broker (in-memory for embedded, Redis for service mode)."""
    app = Celery("tessera", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=INGEST_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # status lives in the registry, not in a result backend
        # A task is acknowledged only after it finished, and re-delivered if the worker died mid-way;
        # the pipeline is idempotent, so a run after an earlier one stopped is harmless. Two runs of one
        # document at once are not: a running task keeps its delivery visible (_KeepVisible).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_soft_time_limit_s + 60,
        broker_transport_options={
            "visibility_timeout": settings.queue_visibility_timeout_s,
            # The in-memory broker is polled (once a second by default, which idled the embedded worker
            # for most of a second after each small document); Redis blocks on the queue instead.
            "polling_interval": 0.01,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        # Publishing gives up within a few seconds when the broker is down or does not answer, so uploads
        # answer 503 (refused: ~0.2 s; no answer: 3 socket timeouts, ~3.2 s).
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5},
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
    )
    return app


def register_ingest_task(app: Celery, pipeline: PipelineProvider, max_attempts: int) -> Task:  # type: ignore[type-arg]
    """Define the ingestion task on `app`; `pipeline` returns this process's pipeline. A transient error is
    retried with exponential backoff; after `max_attempts` the document ends `failed` with the last error."""
    max_retries = max_attempts - 1

    # shared=False: the task closes over this app's pipeline and must not be copied into other apps.
    @app.task(name=INGEST_TASK_NAME, bind=True, max_retries=max_retries, queue=INGEST_QUEUE, shared=False)  # type: ignore[untyped-decorator]
    def ingest_document(self: Task, *, document_id: str, request_id: str | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
        with (
            log_context(request_id=request_id or f"task-{self.request.id}", document_id=document_id),
            _KeepVisible.for_task(self),
        ):
            return attempt(self, document_id)

    def attempt(self: Task, document_id: str) -> dict[str, Any]:  # type: ignore[type-arg]
        runner = pipeline()
        try:
            outcome = runner.run(document_id)
        except SoftTimeLimitExceeded:
            runner.fail(document_id, "ingestion took longer than the configured time limit")
            return {"document_id": document_id, "status": "failed"}
        except Exception as exc:  # transient (index or registry unavailable, ...): retry with backoff
            retries = self.request.retries
            if retries >= max_retries:
                log.exception("ingest: giving up on %s after %d attempts", document_id, retries + 1)
                runner.fail(document_id, f"ingestion failed {retries + 1} times; last error: {exc!r}")
                return {"document_id": document_id, "status": "failed"}
            countdown = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_BASE_S**retries)
            log.warning(
                "ingest: %s attempt %d failed (%r); retrying in %.0fs", document_id, retries + 1, exc, countdown
            )
            raise self.retry(exc=exc, countdown=countdown) from exc
        return {"document_id": document_id, "status": outcome.status.value, "chunks": outcome.chunk_count}

    return ingest_document


class _KeepVisible:
    """While a task runs on a Redis broker, renew its delivery's timestamp in the transport's index of
    unacknowledged messages, a few times per visibility timeout.

    Redis re-delivers an unacknowledged task once its timestamp is older than the visibility timeout, whether
    or not a worker still runs it: a task that outlived the timeout was run a second time, at once, by another
    worker thread or process, and the two runs of one document version undid each other (the second rewrote
    the published chunks as unpublished, then, finding the document ready, removed them: `ready` in the
    registry, no chunks in the index). Renewed, a task is re-delivered only when its worker stopped renewing
    it (killed, or lost): the visibility timeout becomes how long a dead worker's task waits, not a limit on
    how long a live one may run. Nothing is renewed on the in-memory broker, which re-delivers nothing.
    """

    def __init__(self, app: Celery, delivery_tag: str, interval_s: float) -> None:
        self._app = app
        self._tag = delivery_tag
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="tessera-keep-visible", daemon=True)

    @classmethod
    def for_task(cls, task: Task) -> AbstractContextManager[object]:  # type: ignore[type-arg]
        app = task.app
        delivery_tag = (task.request.properties or {}).get("delivery_tag")
        if not delivery_tag or task.request.is_eager or not _is_redis(app):
            return nullcontext()
        visibility_timeout_s = float(app.conf.broker_transport_options.get("visibility_timeout", 3600))
        return cls(app, str(delivery_tag), visibility_timeout_s / VISIBILITY_RENEWALS_PER_TIMEOUT)

    def __enter__(self) -> _KeepVisible:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(BROKER_SOCKET_TIMEOUT_S * 5)

    def _renew(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                with self._app.pool.acquire(block=True, timeout=self._interval_s) as connection:
                    channel: Any = connection.default_channel
                    # XX: only a delivery still awaiting its acknowledgement; never re-add one acked or restored.
                    channel.client.zadd(channel.unacked_index_key, {self._tag: time.time()}, xx=True)
            except Exception as exc:  # the next renewal tries again; a lost one only risks a re-delivery
                log.warning("ingest: could not renew the task's visibility in the broker: %r", exc)


def _is_redis(app: Celery) -> bool:
    # A Connection object only (nothing is opened); an id-keyed cache could outlive its app and be reused.
    with app.connection_for_write() as connection:
        return bool(connection.transport.driver_type == "redis")


def enqueue(task: Task, document_id: str) -> None:  # type: ignore[type-arg]
    """Send one document to the ingestion queue, with the current request's id for its logs; Unavailable
    when the broker cannot be reached."""
    kwargs = {"document_id": document_id, "request_id": current_request_id()}
    try:
        task.apply_async(kwargs=kwargs, queue=INGEST_QUEUE, retry=True)
    except (KombuOperationalError, OSError) as exc:
        raise Unavailable(f"the ingestion queue is unavailable: {exc}") from exc
