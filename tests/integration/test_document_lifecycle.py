"""Listing, deleting, replacing, deduplicating and retrying documents, checked as several users."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from celery.worker import state as worker_state

from core.records import DocumentStatus
from tests.helpers import auth, query, upload, wait_final
from tests.integration.conftest import Served

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALICE = auth("alice", groups=["eng"])  # owner of what follows
BOB = auth("bob", groups=["eng"])  # reads through the group
CAROL = auth("carol", groups=["sales"])  # may read nothing of eng's
ADMIN = auth("root", groups=[], admin=True)  # admin of acme, in no group
OTHER_ADMIN = auth("root", tenant="globex", admin=True)


def _ready(served: Served, headers: dict[str, str], name: str, content: bytes, **acl: Any) -> str:
    response = upload(served.client, headers, name, content, **acl)
    assert response.status_code == 202, response.text
    document_id: str = response.json()["id"]
    assert wait_final(served.client, headers, document_id)["status"] == "ready"
    return document_id


def _drain(served: Served) -> None:
    """Wait until the in-process ingestion worker has no task left, running or reserved."""
    deadline = time.monotonic() + 60
    while worker_state.active_requests or worker_state.reserved_requests:
        assert time.monotonic() < deadline, "the ingestion worker did not drain"
        time.sleep(0.02)


def test_list_shows_only_readable_documents_newest_first_with_a_cursor(embedded: Served) -> None:
    names = [f"list-{i}.txt" for i in range(5)]
    ids = [
        _ready(embedded, ALICE, name, f"Listing test document number {i}.".encode(), groups=["eng"])
        for i, name in enumerate(names)
    ]
    private = _ready(embedded, ALICE, "list-private.txt", b"Alice's private listing test document.")

    def collect(headers: dict[str, str], **params: Any) -> list[str]:
        seen, cursor = [], None
        while True:
            response = embedded.client.get(
                "/v1/documents",
                headers=headers,
                params={"limit": 2, **params, **({"cursor": cursor} if cursor else {})},
            )
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["documents"]) <= 2
            seen += [d["id"] for d in page["documents"]]
            if not (cursor := page["next_cursor"]):
                return seen

    for_bob = collect(BOB)
    assert [i for i in for_bob if i in ids] == list(reversed(ids))  # newest first
    assert private not in for_bob
    assert private in collect(ALICE)
    assert not set(collect(CAROL)) & (set(ids) | {private})
    assert set(ids) <= set(collect(BOB, status="ready"))
    assert not set(collect(BOB, status="failed")) & set(ids)
    # The admin of the tenant reads by the ACL like everyone else: none of these name it.
    assert not set(collect(ADMIN)) & (set(ids) | {private})
    assert embedded.client.get("/v1/documents", headers=BOB, params={"cursor": "garbage!"}).status_code == 400


def test_delete_removes_every_chunk_at_once_and_only_the_owner_or_admin_may(embedded: Served) -> None:
    text = b"The zebra migration schedule for the savanna reserve is confidential."
    document_id = _ready(embedded, ALICE, "zebra.txt", text, groups=["eng"])
    assert query(embedded.client, BOB, "zebra migration schedule", top_k=1)["results"][0]["document_id"] == document_id

    assert embedded.client.delete(f"/v1/documents/{document_id}", headers=BOB).status_code == 403  # reader
    assert embedded.client.delete(f"/v1/documents/{document_id}", headers=CAROL).status_code == 404  # outsider
    assert embedded.client.delete(f"/v1/documents/{document_id}", headers=OTHER_ADMIN).status_code == 404
    response = embedded.client.delete(f"/v1/documents/{document_id}", headers=ALICE)
    assert response.status_code == 200 and response.json()["status"] == "deleted"

    for headers in (ALICE, BOB, CAROL, ADMIN):
        hits = query(embedded.client, headers, "zebra migration schedule", top_k=50)["results"]
        assert document_id not in {h["document_id"] for h in hits}
        assert embedded.client.get(f"/v1/documents/{document_id}", headers=headers).status_code == 404
    assert embedded.runtime.registry.get(document_id).status is DocumentStatus.DELETED
    assert embedded.runtime.index.count_document("acme", document_id) == 0

    # A tenant admin may delete a document it cannot even read.
    other = _ready(embedded, ALICE, "admin-deletes.txt", b"Alice's note that the admin removes.")
    assert embedded.client.delete(f"/v1/documents/{other}", headers=ADMIN).status_code == 200
    assert embedded.runtime.index.count_document("acme", other) == 0


def test_a_delete_during_ingestion_wins(embedded: Served, shared_docs: Path) -> None:
    content = (shared_docs / "norwich-city.txt").read_bytes()
    document_id = upload(embedded.client, ALICE, "norwich-delete.txt", content, groups=["eng"]).json()["id"]
    deadline = time.monotonic() + 60
    while embedded.runtime.registry.get(document_id).status is not DocumentStatus.PROCESSING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert embedded.client.delete(f"/v1/documents/{document_id}", headers=ALICE).status_code == 200
    _drain(embedded)  # the ingestion that was in flight has finished by now
    assert embedded.runtime.registry.get(document_id).status is DocumentStatus.DELETED
    assert embedded.runtime.index.count_document("acme", document_id) == 0
    hits = query(embedded.client, BOB, "Iwan Roberts Norwich City footballer", top_k=50)["results"]
    assert document_id not in {h["document_id"] for h in hits}


def test_replacing_content_serves_old_or_new_chunks_never_both_never_none(embedded: Served, shared_docs: Path) -> None:
    old = b"Version one of the falcon report: the falcons nest on the north tower of the cathedral."
    document_id = _ready(embedded, ALICE, "falcon.txt", old, groups=["eng"])
    new = (shared_docs / "norwich-city.txt").read_bytes() + b"\n\nThe falcons moved to the stadium roof."
    response = embedded.client.put(
        f"/v1/documents/{document_id}/content", headers=ALICE, files={"file": ("falcon.txt", new)}
    )
    assert response.status_code == 202 and response.json()["version"] == 2 and response.json()["live_version"] == 1
    assert (
        embedded.client.put(
            f"/v1/documents/{document_id}/content", headers=BOB, files={"file": ("falcon.txt", new)}
        ).status_code
        == 403
    )

    seen_versions: list[set[int]] = []
    while True:
        record = embedded.runtime.registry.get(document_id)
        hits = [
            h for h in query(embedded.client, BOB, "falcons", top_k=50)["results"] if h["document_id"] == document_id
        ]
        assert hits, "the document vanished from queries during its replacement"
        seen_versions.append({h["version"] for h in hits})
        assert len(seen_versions[-1]) == 1, f"both versions served at once: {seen_versions[-1]}"
        if record.status.is_final:
            break
    assert record.status is DocumentStatus.READY and record.live_version == 2
    assert {1} in seen_versions  # the old version was served while the new one was processed
    final = [h for h in query(embedded.client, BOB, "falcons", top_k=50)["results"] if h["document_id"] == document_id]
    assert {h["version"] for h in final} == {2}
    assert embedded.runtime.index.count_document("acme", document_id, version=1) == 0
    assert embedded.runtime.index.count_document("acme", document_id) == record.chunk_count
    assert query(embedded.client, CAROL, "falcons", top_k=50)["results"] == []


def test_same_bytes_return_the_existing_document_when_the_uploader_may_read_it(embedded: Served) -> None:
    content = b"Deduplication test: the heron census counted forty-two herons."
    first = upload(embedded.client, ALICE, "heron.txt", content, groups=["eng"])
    assert first.status_code == 202
    again = upload(embedded.client, ALICE, "heron-copy.txt", content, groups=["eng"])
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["id"] == first.json()["id"]
    by_reader = upload(embedded.client, BOB, "heron.txt", content)
    assert by_reader.status_code == 200 and by_reader.json()["id"] == first.json()["id"]
    # Carol may not read Alice's copy: she gets her own document, and learns nothing about Alice's.
    by_outsider = upload(embedded.client, CAROL, "heron.txt", content)
    assert by_outsider.status_code == 202 and by_outsider.json()["id"] != first.json()["id"]
    assert by_outsider.json()["owner"] == "carol"


def test_progress_is_reported_while_processing(embedded: Served, shared_docs: Path) -> None:
    content = (shared_docs / "norwich-city.txt").read_bytes() + b"\nProgress test."
    document_id = upload(embedded.client, ALICE, "norwich-progress.txt", content, groups=["eng"]).json()["id"]
    stages = set()
    while True:
        record = embedded.client.get(f"/v1/documents/{document_id}", headers=ALICE).json()
        if record["progress"]["stage"]:
            stages.add(record["progress"]["stage"])
            assert 0 <= record["progress"]["done"] <= record["progress"]["total"] or record["progress"]["total"] == 0
        if record["status"] in ("ready", "failed"):
            break
        time.sleep(0.02)
    assert record["status"] == "ready" and record["progress"]["stage"] is None
    assert "embedding" in stages


def test_retry_reruns_a_failed_document_and_keeps_its_reason(embedded: Served, shared_docs: Path) -> None:
    content = (shared_docs / "password.pdf").read_bytes()
    document_id = upload(embedded.client, ALICE, "locked.pdf", content, groups=["eng"]).json()["id"]
    assert wait_final(embedded.client, ALICE, document_id)["status"] == "failed"
    assert embedded.client.post(f"/v1/documents/{document_id}/retry", headers=BOB).status_code == 403
    response = embedded.client.post(f"/v1/documents/{document_id}/retry", headers=ALICE)
    assert response.status_code == 202 and response.json()["status"] in ("queued", "processing", "failed")
    record = wait_final(embedded.client, ALICE, document_id)
    assert record["status"] == "failed" and "encrypted PDF" in record["failure_reason"]
    ready = _ready(embedded, ALICE, "fine.txt", b"A document that is fine and cannot be retried.")
    assert embedded.client.post(f"/v1/documents/{ready}/retry", headers=ALICE).status_code == 409
