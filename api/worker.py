"""`tessera worker`: Celery ingestion workers on Redis, as separate processes (service mode).

Each worker process builds its own pipeline (model, index client, registry) on first use. The index must
be a Qdrant server: the embedded engine's directory can be held by one process only.
"""

from __future__ import annotations

from prometheus_client import start_http_server

from api.evaluation import register_nightly
from api.runtime import Runtime
from core.errors import ConfigError
from core.settings import Settings
from ingest.tasks import INGEST_QUEUE


def run_worker(
    settings: Settings, *, concurrency: int | None, loglevel: str, pool: str = "threads", embedded_index: bool = False
) -> int:
    """Consume the Redis queue until stopped. `embedded_index` lets this one process hold the embedded
    index under the data directory (a single worker, and no API on the same directory)."""
    if settings.queue != "redis":
        raise ConfigError("tessera worker consumes Redis: set TESSERA_QUEUE=redis (and TESSERA_REDIS_URL)")
    if not settings.qdrant_url and not embedded_index:
        raise ConfigError(
            "tessera worker needs a Qdrant server (TESSERA_QDRANT_URL): the embedded index under "
            "TESSERA_DATA_DIR is held by the API process (or pass --embedded-index to a single worker)"
        )
    if embedded_index and pool == "prefork":
        raise ConfigError("--embedded-index needs --pool threads or solo: one process holds the embedded index")
    runtime = Runtime(settings)
    register_nightly(runtime)
    runtime.migrate_schema()
    runtime.prepare_ingestion()
    if settings.worker_metrics_port is not None:
        # Task durations by stage and outcomes of this process; documents by status and the queue's depth.
        start_http_server(settings.worker_metrics_port, registry=runtime.metrics.registry)
    runtime.celery.worker_main(
        [
            "worker",
            "--queues",
            f"{INGEST_QUEUE},tessera.evals",
            "--concurrency",
            str(concurrency or settings.worker_concurrency),
            "--loglevel",
            loglevel,
            "--pool",
            pool,
            "--hostname",
            "tessera@%h",
        ]
    )
    return 0


def run_beat(settings: Settings, *, loglevel: str) -> int:
    """Celery beat: sends the nightly eval task at TESSERA_EVAL_NIGHTLY_AT (UTC) to the workers."""
    if settings.queue != "redis":
        raise ConfigError("tessera beat schedules work for Redis workers: set TESSERA_QUEUE=redis")
    runtime = Runtime(settings)
    register_nightly(runtime)
    schedule_file = settings.data_dir / "celerybeat-schedule"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    runtime.celery.start(["beat", "--loglevel", loglevel, "--schedule", str(schedule_file)])
    return 0
