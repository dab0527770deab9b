"""`tessera worker`: Celery ingestion workers on Redis, as separate processes (service mode).

Each worker process builds its own pipeline (model, index client, registry) on first use. The index must
be a Qdrant server: the embedded engine's directory can be held by one process only.
"""

from __future__ import annotations

from api.runtime import Runtime
from core.errors import ConfigError
from core.schema import create_schema
from core.settings import Settings
from ingest.tasks import INGEST_QUEUE


def run_worker(settings: Settings, *, concurrency: int | None, loglevel: str) -> int:
    if settings.queue != "redis":
        raise ConfigError("tessera worker consumes Redis: set TESSERA_QUEUE=redis (and TESSERA_REDIS_URL)")
    if not settings.qdrant_url:
        raise ConfigError(
            "tessera worker needs a Qdrant server (TESSERA_QDRANT_URL): the embedded index under "
            "TESSERA_DATA_DIR is held by the API process"
        )
    runtime = Runtime(settings)
    create_schema(runtime.database)
    runtime.celery.worker_main(
        [
            "worker",
            "--queues",
            INGEST_QUEUE,
            "--concurrency",
            str(concurrency or settings.worker_concurrency),
            "--loglevel",
            loglevel,
            "--hostname",
            "tessera@%h",
        ]
    )
    return 0
