"""Faults of the broker in service mode (issue 7), each on a throwaway Redis of the test's own.

1. Redis restarted (AOF persistence on) while documents wait in the queue and one is being ingested: every
   document still ends `ready` exactly once, with no duplicate chunks.
2. Redis down: an upload answers 503 within 5 s instead of hanging, and leaves nothing that looks ready
   or waits forever; once Redis is back, uploads succeed and are ingested.
3. A task that outlives the broker's visibility timeout: what Redis does with it, and what a second run
   of the same document does to it.

The shared Redis at 127.0.0.1:6379 is never touched: each test starts `redis-server` on a free port with
its data in the test's temporary directory, stops and restarts it itself, and kills it at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.signals import task_postrun, task_prerun

import ingest.tasks
from api.runtime import EmbeddedWorker, Runtime
from core.access import Principal
from core.audit import AuditAction
from core.index import SearchMode
from core.records import DocumentStatus, IngestStage
from core.schema import migrate
from evals.bench.server import free_port
from ingest.tasks import INGEST_QUEUE, INGEST_TASK_NAME, enqueue
from retrieval.factory import create_index
from tests.helpers import auth, register_document, settings_for, start_worker, upload, wait_final, wait_until
from tests.integration.conftest import serve

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary"),
]

TENANT = "acme"
ALICE = auth("alice")
UPLOAD_BOUND_S = 5.0  # the requirement for an upload while the broker is down


class RedisServer:
    """A redis-server of the test's own: append-only file on, so queued tasks survive a restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_until(answers, 30, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits; the port then refuses connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # in case a test froze it
            self.process.kill()
            self.process.wait(30)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _attempt_lines(text: str) -> dict[str, list[int]]:
    """The pipeline's `ingest: <id> v1 (<name>) attempt N` lines: which runs started, per document."""
    started: dict[str, list[int]] = {}
    for match in re.finditer(r"ingest: ([0-9a-f]{32}) v\d+ \(.*?\) attempt (\d+)", text):
        started.setdefault(match.group(1), []).append(int(match.group(2)))
    return started


def _ready_records(runtime: Runtime) -> list[str]:
    records = runtime.audit.search(TENANT, actions=[AuditAction.INGESTED], limit=1000)
    return sorted(r.target or "" for r in records if r.outcome == "ready")


def _index_counts(runtime: Runtime, document_ids: list[str]) -> dict[str, int]:
    index = create_index(runtime.settings)  # the worker that held the embedded index is gone: open it here
    try:
        return {document_id: index.count_document(TENANT, document_id) for document_id in document_ids}
    finally:
        index.close()


# 1 ----------------------------------------------------------------------------------------------------------


def test_redis_restarted_with_tasks_queued_and_in_flight_every_document_ends_ready_once(
    tmp_path: Path, own_redis: RedisServer, shared_docs: Path
) -> None:
    # `tessera worker`'s default pool (threads), two of them: two documents in flight, three waiting. (The solo
    # pool, one in flight and four waiting, gave the same result; one worker start costs a model load.)
    pool, concurrency = "threads", 2
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    runtime = Runtime(settings_for(data_dir, queue="redis", redis_url=own_redis.url))
    migrate(runtime.database)
    lines = (shared_docs / "norwich-city.txt").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    texts = {  # the long ones are caught in flight (one per worker thread); the short ones wait behind them
        "norwich-1.txt": b"".join(lines[:half]),
        "norwich-2.txt": b"".join(lines[half:]),
        "war-and-peace.txt": (shared_docs / "book-war-and-peace-1p.txt").read_bytes(),
        "norwich-3.txt": b"".join(lines[:60]),
        "norwich-4.txt": b"".join(lines[-60:]),
    }
    documents = {register_document(runtime, content, name): name for name, content in texts.items()}
    ids = list(documents)
    for document_id in ids:
        enqueue(runtime.ingest_task, document_id)
    assert own_redis.client().llen(INGEST_QUEUE) == len(ids)

    log = tmp_path / "worker.log"
    worker = start_worker(data_dir, own_redis.url, log, pool=pool, concurrency=concurrency)
    try:
        wait_until(
            lambda: runtime.registry.get(ids[0]).stage is IngestStage.EMBEDDING, 150, "the first document to embed"
        )
        in_flight = ids[:concurrency]
        wait_until(
            lambda: all(runtime.registry.get(i).stage for i in in_flight), 60, f"{concurrency} documents in flight"
        )
        queued_before = own_redis.client().llen(INGEST_QUEUE)
        own_redis.stop()  # mid-ingestion, with tasks waiting
        statuses_before = [runtime.registry.get(i).status.value for i in ids]
        time.sleep(1.0)
        own_redis.start()
        queued_after = own_redis.client().llen(INGEST_QUEUE)
        unacked_after = own_redis.client().hlen("unacked")
        restarted_at = time.monotonic()
        wait_until(lambda: all(runtime.registry.get(i).status.is_final for i in ids), 180, "every document to finish")
        finished_s = time.monotonic() - restarted_at
        time.sleep(2.0)  # anything redelivered after the restart runs now, and must find the document final
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)

    records = {i: runtime.registry.get(i) for i in ids}
    ready = _ready_records(runtime)
    counts = _index_counts(runtime, ids)
    text = log.read_text()
    started = _attempt_lines(text)
    print(
        f"\n[{pool} x{concurrency}] at the restart: statuses {statuses_before}, {queued_before} tasks queued; "
        f"after it: {queued_after} queued, {unacked_after} unacked; all final {finished_s:.1f}s after it"
    )
    for i in ids:
        r = records[i]
        print(
            f"  {documents[i]:>16}: {r.status.value}, attempts {r.attempts}, runs started {started.get(i)}, "
            f"chunks registry {r.chunk_count} / index {counts[i]}, ready records {ready.count(i)}"
        )
    assert all(r.status is DocumentStatus.READY for r in records.values()), text[-4000:]
    assert ready == sorted(ids)  # `document.ingested` `ready`: exactly one per document
    assert counts == {i: records[i].chunk_count for i in ids}  # no chunk twice, none missing
    assert all(r.chunk_count > 0 for r in records.values())
    assert statuses_before[:concurrency] == ["processing"] * concurrency  # in flight when Redis went down
    assert queued_before == len(ids) - concurrency  # the restart came with tasks waiting, and ...
    assert queued_after == queued_before  # ... they survived it (append-only file)
    runtime.stop()


# 2 ----------------------------------------------------------------------------------------------------------


def _timed_upload(client: Any, name: str, content: bytes, limit_s: float = 30.0) -> tuple[Any, float]:
    """One upload, timed; run on a thread so that a hanging request shows as a hang, not a hung test."""
    result: dict[str, Any] = {}

    def send() -> None:
        started = time.monotonic()
        try:
            result["response"] = upload(client, ALICE, name, content)
        except Exception as exc:  # reported below
            result["error"] = exc
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        return None, float("inf")
    if "error" in result:
        raise result["error"]
    return result["response"], result["seconds"]


def _fields(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: body.get(name) for name in names}


def test_an_upload_while_redis_is_down_answers_503_quickly_and_uploads_resume_when_it_is_back(
    tmp_path: Path, own_redis: RedisServer, shared_docs: Path
) -> None:
    lines = (shared_docs / "norwich-city.txt").read_bytes().splitlines(keepends=True)
    before, refused, after = (b"".join(lines[k : k + 40]) for k in (0, 100, 200))
    for served in serve(tmp_path / "data", queue="redis", redis_url=own_redis.url):
        client, runtime = served.client, served.runtime
        worker = EmbeddedWorker(runtime.celery, concurrency=1)  # a real Celery worker on the same Redis
        worker.start()
        try:
            response = upload(client, ALICE, "before.txt", before)
            assert response.status_code == 202, response.text
            first = response.json()["id"]
            assert wait_final(client, ALICE, first)["status"] == "ready"

            own_redis.stop()
            response, seconds = _timed_upload(client, "refused.txt", refused)
            assert response is not None, "the upload hung while Redis was down"
            readyz = client.get("/readyz")
            listed = client.get("/v1/documents", headers=ALICE).json()["documents"]
            refused_docs = [d for d in listed if d["file_name"] == "refused.txt"]
            print(
                f"\nupload with Redis down: {response.status_code} in {seconds:.2f}s: {response.json()}"
                f"\n  /readyz {readyz.status_code} {readyz.json().get('checks')}"
                f"\n  registry holds for the refused upload: "
                f"{[(d['status'], d['failure_reason']) for d in refused_docs]}; unfinished: "
                f"{runtime.registry.unfinished()}"
            )
            assert response.status_code == 503 and "queue" in response.json()["detail"]
            assert seconds < UPLOAD_BOUND_S
            assert readyz.status_code == 503 and readyz.json()["checks"]["queue"] != "ok"
            # What the refused upload left: a `failed` entry that says why, not `queued` with no task behind it
            # (nothing would ever send it again: requeue_unfinished looks only at queued and processing).
            assert [d["status"] for d in refused_docs] == ["failed"]
            assert "not queued" in (refused_docs[0]["failure_reason"] or "")
            assert runtime.registry.unfinished() == []
            refused_id = refused_docs[0]["id"]
            assert runtime.index.count_document(TENANT, refused_id) == 0

            own_redis.start()
            response = upload(client, ALICE, "after.txt", after)
            assert response.status_code == 202, response.text
            later = response.json()["id"]
            assert wait_final(client, ALICE, later)["status"] == "ready"

            # The same bytes as the refused upload, sent again now that Redis is back.
            again = upload(client, ALICE, "refused.txt", refused)
            print(
                f"  after Redis is back: a new upload is ingested (ready); the refused bytes sent again answer "
                f"{again.status_code} {_fields(again.json(), 'id', 'status', 'duplicate')}"
            )
            # A failed document is not a duplicate to answer with: the same bytes make a new document.
            assert again.status_code == 202 and again.json()["id"] != refused_id, again.text
            final = wait_final(client, ALICE, again.json()["id"])
            print(f"  ... and then ends {final['status']} with {final['chunk_count']} chunks")
            assert final["status"] == "ready" and final["chunk_count"] > 0
        finally:
            worker.stop()


def test_an_upload_while_redis_is_frozen_does_not_hang(
    tmp_path: Path, own_redis: RedisServer, shared_docs: Path
) -> None:
    """SIGSTOP: the port still accepts connections but nothing answers (a hung or partitioned broker)."""
    for served in serve(tmp_path / "data", queue="redis", redis_url=own_redis.url):
        client = served.client
        assert own_redis.process is not None
        warm = upload(client, ALICE, "warm.txt", b"A first note, queued while Redis answers.")
        assert warm.status_code == 202, warm.text
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            response, seconds = _timed_upload(client, "frozen.txt", b"A note sent while Redis is frozen.", 20)
            probe_started = time.monotonic()
            readyz = client.get("/readyz")
            probe_s = time.monotonic() - probe_started
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        status = None if response is None else response.status_code
        print(
            f"\nupload with Redis frozen (SIGSTOP): {status} in {seconds:.2f}s; "
            f"/readyz {readyz.status_code} {readyz.json().get('checks')} in {probe_s:.2f}s"
        )
        assert response is not None, "the upload hung while Redis was frozen"
        assert response.status_code == 503 and seconds < UPLOAD_BOUND_S
        assert readyz.status_code == 503 and readyz.json()["checks"]["queue"] != "ok"


# 3 ----------------------------------------------------------------------------------------------------------

VISIBILITY_S = 1


class TaskRuns:
    """Counts the ingestion task's runs in this process (Celery's prerun/postrun signals) and their results."""

    def __init__(self) -> None:
        self.started = 0
        self.results: list[Any] = []
        self._lock = threading.Lock()

    def _prerun(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == INGEST_TASK_NAME:
            with self._lock:
                self.started += 1

    def _postrun(self, sender: Any = None, retval: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == INGEST_TASK_NAME:
            with self._lock:
                self.results.append(retval)

    @property
    def running(self) -> int:
        with self._lock:
            return self.started - len(self.results)

    def __enter__(self) -> TaskRuns:
        task_prerun.connect(self._prerun, weak=False)
        task_postrun.connect(self._postrun, weak=False)
        return self

    def __exit__(self, *_: object) -> None:
        task_prerun.disconnect(self._prerun)
        task_postrun.disconnect(self._postrun)


def _slow_document_outliving_the_visibility_timeout(
    tmp_path: Path, own_redis: RedisServer, shared_docs: Path, caplog: pytest.LogCaptureFixture
) -> dict[str, Any]:
    """Ingest one document that takes several visibility timeouts, on a worker with two threads (room for a
    second delivery), and report what ran and what is left."""
    settings = settings_for(
        tmp_path / "data", queue="redis", redis_url=own_redis.url, queue_visibility_timeout_s=VISIBILITY_S
    )
    runtime = Runtime(settings)
    runtime.prepare_storage()
    # Kombu sweeps the unacknowledged tasks for ones older than the visibility timeout when a worker starts
    # and then every 10 x 10 s; sweep every second here, to see within seconds what a production worker
    # does within 100 s.
    runtime.celery.conf.broker_transport_options = {
        **runtime.celery.conf.broker_transport_options,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
    # Three copies of the longest text: one copy took 2.1 s once the sentence tokenizer was loaded at start,
    # too little to outlive the timeout several times over.
    content = (shared_docs / "norwich-city.txt").read_bytes() * 3
    document_id = register_document(runtime, content, "norwich-city.txt")
    caplog.set_level(logging.INFO, logger="ingest.pipeline")
    broker = own_redis.client()
    worker = EmbeddedWorker(runtime.celery, concurrency=2)
    with TaskRuns() as runs:
        worker.start()
        try:
            started = time.monotonic()
            enqueue(runtime.ingest_task, document_id)
            wait_until(lambda: runtime.registry.get(document_id).status.is_final, 180, "the document to finish")
            ingestion_s = time.monotonic() - started
            time.sleep(VISIBILITY_S * 2)  # a delivery restored now would start now

            def settled() -> bool:
                return runs.running == 0 and broker.llen(INGEST_QUEUE) == 0 and broker.hlen("unacked") == 0

            wait_until(settled, 120, "every run of the task to end")
        finally:
            worker.stop()
    record = runtime.registry.get(document_id)
    alice = Principal(tenant=TENANT, subject="alice", groups=frozenset())
    hits = runtime.retriever.timed_search(alice, "Norwich City goals", 50, SearchMode.DENSE).hits
    visible = {(h.document_id, h.version, h.chunk_index) for h in hits}
    report = {
        "ingestion_s": round(ingestion_s, 1),
        "task_runs": runs.started,
        "run_results": [r.get("status") if isinstance(r, dict) else repr(r) for r in runs.results],
        "pipeline_attempts_logged": _attempt_lines(caplog.text).get(document_id, []),
        "registry": (record.status.value, record.attempts, record.chunk_count),
        "index_chunks": runtime.index.count_document(TENANT, document_id, record.version),
        "chunks_a_query_sees": len(visible),
        "of_at_most": min(50, record.chunk_count),
        "ready_records": _ready_records(runtime).count(document_id),
    }
    runtime.stop()
    return report


def test_a_task_that_outlives_the_visibility_timeout_is_not_run_twice_at_once(
    tmp_path: Path, own_redis: RedisServer, shared_docs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = _slow_document_outliving_the_visibility_timeout(tmp_path, own_redis, shared_docs, caplog)
    print(f"\nvisibility timeout {VISIBILITY_S}s: {report}")
    assert report["ingestion_s"] > 3 * VISIBILITY_S  # it did outlive the timeout, several times over
    # One delivery, one run of the pipeline: while its worker runs it, the task is not handed to another.
    assert report["task_runs"] == 1 and report["pipeline_attempts_logged"] == [1]
    status, attempts, chunk_count = report["registry"]
    assert (status, attempts) == ("ready", 1) and chunk_count > 0
    assert report["index_chunks"] == chunk_count and report["ready_records"] == 1
    assert report["chunks_a_query_sees"] == report["of_at_most"]


def test_without_renewal_the_task_runs_twice_at_once_and_the_second_run_is_harmless(
    tmp_path: Path,
    own_redis: RedisServer,
    shared_docs: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What happened before ingest/tasks.py renewed a running task's visibility (and what can still happen to
    a task Redis restores while it runs): two runs at once. The second run's upsert rewrites the first's live
    chunks as unpublished; it then finds the document ready and publishes them again (ingest/pipeline.py).
    Before that fix, it deleted them: `ready` with 0 chunks in the index."""
    monkeypatch.setattr(ingest.tasks._KeepVisible, "for_task", classmethod(lambda cls, task: contextlib.nullcontext()))
    report = _slow_document_outliving_the_visibility_timeout(tmp_path, own_redis, shared_docs, caplog)
    print(f"\nvisibility timeout {VISIBILITY_S}s, no renewal: {report}")
    # Not assertions: if these do not hold, the test fails outright instead of counting as the known defect.
    if report["task_runs"] < 2 or len(report["pipeline_attempts_logged"]) < 2:
        pytest.fail(f"the task was not delivered again while it ran: {report}")
    status, _, chunk_count = report["registry"]
    assert report["ready_records"] == 1
    assert status == "ready" and report["index_chunks"] == chunk_count > 0
    assert report["chunks_a_query_sees"] == report["of_at_most"]
