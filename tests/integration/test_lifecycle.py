"""Idempotent ingestion and restarts of the embedded service."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.runtime import Runtime
from core.records import Chunk, ChunkPoint, DocumentStatus, point_id
from core.schema import migrate
from tests.helpers import auth, query, register_document, settings_for, upload, wait_final
from tests.integration.conftest import serve

pytestmark = pytest.mark.integration

ALICE = auth("alice", groups=["eng"])


def _point_ids(runtime: Runtime, document_id: str) -> list[str]:
    return sorted(
        point_id(v.document_id, v.version, v.chunk_index)
        for v in runtime.index.vectors("acme")
        if v.document_id == document_id
    )


def test_a_retried_task_leaves_no_duplicate_or_stale_points(tmp_path: Path, shared_docs: Path) -> None:
    for served in serve(tmp_path):
        content = (shared_docs / "handbook-1p.docx").read_bytes()
        document_id = upload(served.client, ALICE, "handbook.docx", content, groups=["eng"]).json()["id"]
        record = wait_final(served.client, ALICE, document_id)
        assert record["status"] == "ready"
        runtime = served.runtime
        before = _point_ids(runtime, document_id)
        assert len(before) == record["chunk_count"] > 1

        # A worker died after writing some chunks: the document is still `processing`, and an earlier
        # attempt left a chunk the next one will not produce.
        runtime.registry.mark_queued(document_id)
        stale = Chunk(index=999, text="stale", page=None, section=None, token_count=1)
        runtime.index.upsert(
            [ChunkPoint("acme", document_id, 1, "handbook.docx", ("user:alice",), stale, tuple([0.1] * 384))]
        )
        outcome = runtime.pipeline.run(document_id)
        assert outcome.status is DocumentStatus.READY and outcome.chunk_count == record["chunk_count"]
        assert _point_ids(runtime, document_id) == before
        assert runtime.index.count_document("acme", document_id) == record["chunk_count"]

        # The task delivered again for a finished document changes nothing.
        runtime.ingest_task.apply(kwargs={"document_id": document_id})
        assert _point_ids(runtime, document_id) == before


def test_documents_survive_a_restart_and_unfinished_ones_are_resumed(tmp_path: Path, shared_docs: Path) -> None:
    for served in serve(tmp_path):
        kept = upload(served.client, ALICE, "memo.pdf", (shared_docs / "fake-memo.pdf").read_bytes()).json()["id"]
        assert wait_final(served.client, ALICE, kept)["status"] == "ready"

    # A process died between accepting an upload and finishing it: the registry says `processing`.
    interrupted = Runtime(settings_for(tmp_path))
    migrate(interrupted.database)
    content = (shared_docs / "family-day.eml").read_bytes()
    blob_id = register_document(interrupted, content, "family-day.eml", file_type="EML")
    interrupted.registry.start_attempt(blob_id)
    interrupted.stop()

    for served in serve(tmp_path):
        record = served.client.get(f"/v1/documents/{kept}", headers=ALICE).json()
        assert record["status"] == "ready"
        hits = query(served.client, ALICE, "bottles of water, blankets and laptops", top_k=1)["results"]
        assert hits[0]["document_id"] == kept
        resumed = wait_final(served.client, ALICE, blob_id)
        assert resumed["status"] == "ready"
        assert query(served.client, ALICE, "family day petting zoo", top_k=1)["results"][0]["document_id"] == blob_id
