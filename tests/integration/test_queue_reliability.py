"""The ingestion queue survives a worker killed mid-document, and transient errors retry then stop.

The worker under test is a separate `tessera worker` process on the real Redis: it is killed with SIGKILL
while it embeds a document, a second worker picks the task up once Redis's visibility timeout hands it
back, and the document ends `ready` exactly once with no duplicate chunks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from api.runtime import EmbeddedWorker, Runtime
from core.audit import AuditAction
from core.records import DocumentStatus, IngestStage
from core.schema import migrate
from evals.bench.server import free_port
from ingest.tasks import enqueue
from retrieval.factory import create_index
from tests.helpers import register_document, settings_for, start_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/14"
VISIBILITY_S = 4


@pytest.fixture
def broker() -> Iterator[None]:
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    yield
    connection.flushdb()


def test_a_worker_killed_mid_document_is_replaced_and_the_document_ends_ready_once(
    tmp_path: Path, broker: None, shared_docs: Path
) -> None:
    settings = settings_for(tmp_path, queue="redis", redis_url=REDIS_URL, queue_visibility_timeout_s=VISIBILITY_S)
    runtime = Runtime(settings)  # registry, blobs and the queue only: the index belongs to the workers
    migrate(runtime.database)
    document_id = "feedfacefeedfacefeedfacefeedface"
    register_document(
        runtime, (shared_docs / "norwich-city.txt").read_bytes(), "norwich-city.txt", document_id=document_id
    )
    enqueue(runtime.ingest_task, document_id)
    log = tmp_path / "workers.log"

    first = start_worker(tmp_path, REDIS_URL, log, queue_visibility_timeout_s=VISIBILITY_S)
    try:
        wait_until(
            lambda: runtime.registry.get(document_id).stage is IngestStage.EMBEDDING, 120, "the first worker to embed"
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    killed = runtime.registry.get(document_id)
    assert killed.status is DocumentStatus.PROCESSING and killed.attempts == 1

    metrics_port = free_port()
    second = start_worker(
        tmp_path, REDIS_URL, log, queue_visibility_timeout_s=VISIBILITY_S, worker_metrics_port=metrics_port
    )
    try:
        wait_until(lambda: runtime.registry.get(document_id).status.is_final, 180, "the second worker to finish")
        # The replacement's own metrics: its one ingestion, by stage, and the registry's count.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'tessera_ingest_documents_total{outcome="ready"} 1.0' in metrics
        assert 'tessera_ingest_stage_duration_seconds_count{stage="embed"} 1.0' in metrics
        assert 'tessera_documents{status="ready"} 1.0' in metrics
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(60)
    record = runtime.registry.get(document_id)
    print(f"\nkilled worker -> replacement: {record.status}, {record.attempts} attempts, {record.chunk_count} chunks")
    assert record.status is DocumentStatus.READY, log.read_text()[-3000:]
    assert record.attempts == 2 and record.chunk_count > 50
    # JSON log lines; the task's carry its document id and one request id (the task's: no request sent it).
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    task_lines = [line for line in lines if line.get("document_id") == document_id]
    assert any("ready with" in line["message"] for line in task_lines)
    assert len({line["request_id"] for line in task_lines}) == 1 and task_lines[0]["request_id"].startswith("task-")

    index = create_index(settings)  # the workers are gone: open it here
    try:
        assert index.count_document("acme", document_id) == record.chunk_count  # no duplicate chunks
    finally:
        index.close()
    ready = [r for r in runtime.audit.search("acme", actions=[AuditAction.INGESTED]) if r.outcome == "ready"]
    assert [r.target for r in ready] == [document_id]  # ready exactly once
    runtime.stop()


def test_transient_errors_retry_with_backoff_then_fail_after_three_attempts(tmp_path: Path, shared_docs: Path) -> None:
    # A real Qdrant client pointed at a port where no server listens: every write is refused.
    settings = settings_for(tmp_path, qdrant_url="http://127.0.0.1:9")
    runtime = Runtime(settings)
    migrate(runtime.database)
    document_id = "0badc0de0badc0de0badc0de0badc0de"
    register_document(
        runtime, (shared_docs / "book-war-and-peace-1p.txt").read_bytes(), "war-and-peace.txt", document_id=document_id
    )
    worker = EmbeddedWorker(runtime.celery, concurrency=2)
    worker.start()
    try:
        started = time.monotonic()
        enqueue(runtime.ingest_task, document_id)
        wait_until(lambda: runtime.registry.get(document_id).status.is_final, 120, "the document to give up")
        elapsed = time.monotonic() - started
    finally:
        worker.stop()
    record = runtime.registry.get(document_id)
    print(f"\ntransient failures: {record.attempts} attempts in {elapsed:.1f}s, then: {record.failure_reason}")
    assert record.status is DocumentStatus.FAILED and record.attempts == 3
    assert "failed 3 times" in (record.failure_reason or "") and "unavailable" in (record.failure_reason or "")
    assert elapsed >= 1 + 2  # backoff: 1 s then 2 s between the three attempts
    runtime.stop()
