"""Idempotent ingestion and restarts of the embedded service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from api.runtime import Runtime
from core.records import Chunk, ChunkPoint, DocumentStatus, point_id
from core.schema import migrate
from tests.helpers import auth, query, register_document, settings_for, upload, wait_final
from tests.integration.conftest import serve

pytestmark = pytest.mark.integration

ALICE = auth("alice", groups=["eng"])
BOB = auth("bob", groups=["eng"])
CAROL = auth("carol", groups=["sales"])
DAN = auth("dan")


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


def _changing_the_acl_while_parsing(runtime: Runtime, changes: dict[str, Sequence[str]]) -> Callable[..., Any]:
    """The runtime's parse, which first gives the document being parsed the ACL `changes` holds for it."""
    parse = runtime.pipeline.parser.parse

    def parse_and_change_the_acl(path: Path, *args: Any, **kwargs: Any) -> Any:
        document_id = path.name.split(".")[0]
        runtime.registry.set_acl(document_id, changes[document_id])
        return parse(path, *args, **kwargs)

    return parse_and_change_the_acl


def test_an_acl_change_while_the_document_is_ingested_reaches_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pipeline writes the chunks with the ACL it read when the attempt started and reads the registry again
    # after the upsert: a change in between, made here while the document is parsed, must reach every chunk.
    for served in serve(tmp_path):
        runtime = served.runtime
        text = "The heron survey counted {} nests along the estuary this spring."
        narrowed = register_document(runtime, text.format("forty").encode(), "narrowed.txt")
        widened = register_document(runtime, text.format("sixty").encode(), "widened.txt")
        runtime.registry.set_acl(narrowed, ["user:alice", "group:eng"])  # what the attempt reads
        changes = {narrowed: ["user:alice"], widened: ["user:alice", "group:sales", "user:dan"]}
        with monkeypatch.context() as patch:
            patch.setattr(runtime.pipeline.parser, "parse", _changing_the_acl_while_parsing(runtime, changes))
            for document_id in (narrowed, widened):
                assert runtime.pipeline.run(document_id).chunk_count > 0

        readers = {  # headers, ACL tokens, which of the two documents the reader must get
            "alice": (ALICE, {"user:alice", "group:eng"}, {narrowed, widened}),
            "bob": (BOB, {"user:bob", "group:eng"}, set()),  # eng was taken away while the document was parsed
            "carol": (CAROL, {"user:carol", "group:sales"}, {widened}),
            "dan": (DAN, {"user:dan"}, {widened}),
        }
        for name, (headers, tokens, expected) in readers.items():
            results = query(served.client, headers, "heron survey nests estuary", top_k=50)["results"]
            assert {hit["document_id"] for hit in results} == expected, name
            for hit in results:  # and every chunk returned is one the registry lets this reader see
                assert tokens & set(runtime.registry.get(hit["document_id"]).acl_tokens), (name, hit)
