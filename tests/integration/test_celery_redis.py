"""The service-mode queue: tasks go through the real Redis at 127.0.0.1:6379 to a real Celery worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.runtime import EmbeddedWorker
from ingest.tasks import INGEST_QUEUE
from tests.helpers import auth, query, upload, wait_final
from tests.integration.conftest import Served, serve

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"  # a database of its own, flushed by the test
ALICE = auth("alice", groups=["eng"])


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    connection.ping()
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture
def service(tmp_path: Path, broker: redis.Redis) -> Iterator[Served]:
    yield from serve(tmp_path, queue="redis", redis_url=REDIS_URL)


def test_upload_is_queued_in_redis_and_a_celery_worker_ingests_it(
    service: Served, broker: redis.Redis, shared_docs: Path
) -> None:
    response = upload(service.client, ALICE, "memo.pdf", (shared_docs / "fake-memo.pdf").read_bytes(), groups=["eng"])
    assert response.status_code == 202
    document_id = response.json()["id"]
    # No worker yet: the task waits in Redis and the document stays queued.
    time.sleep(0.5)
    assert broker.llen(INGEST_QUEUE) == 1
    assert service.client.get(f"/v1/documents/{document_id}", headers=ALICE).json()["status"] == "queued"

    worker = EmbeddedWorker(service.runtime.celery, concurrency=2)  # a real Celery worker consuming Redis
    worker.start()
    try:
        record = wait_final(service.client, ALICE, document_id)
    finally:
        worker.stop()
    assert record["status"] == "ready" and record["chunk_count"] > 0
    assert broker.llen(INGEST_QUEUE) == 0
    hits = query(service.client, ALICE, "bottles of water and blankets delivered", top_k=3)["results"]
    assert hits and hits[0]["document_id"] == document_id


def test_upload_answers_503_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    for served in serve(tmp_path, queue="redis", redis_url="redis://127.0.0.1:1/0"):
        response = upload(served.client, ALICE, "note.txt", b"A note that cannot be queued.")
        assert response.status_code == 503, response.text
        assert "queue" in response.json()["detail"]
        # Nothing is lost silently: the registry says why it was not queued.
        record = served.runtime.registry.unfinished()
        assert record == []
