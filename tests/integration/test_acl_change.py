"""Changing a document's ACL: enforced on every chunk by a payload update, no re-parsing or re-embedding,
checked by querying as the affected users right after the call returns."""

from __future__ import annotations

import statistics
import time
import uuid

import numpy as np
import pytest

from core.records import Chunk, ChunkPoint
from tests.helpers import auth, query, upload, wait_final
from tests.integration.conftest import Served

pytestmark = pytest.mark.integration

ALICE = auth("alice", groups=["eng"])
BOB = auth("bob", groups=["eng"])
CAROL = auth("carol", groups=["sales"])
DAN = auth("dan")
ADMIN = auth("root", admin=True)
OTHER_ADMIN = auth("root", tenant="globex", admin=True)


def _ids(served: Served, headers: dict[str, str], text: str) -> set[str]:
    return {h["document_id"] for h in query(served.client, headers, text, top_k=50)["results"]}


def test_acl_change_is_enforced_when_the_call_returns(embedded: Served) -> None:
    text = b"The otter sanctuary budget doubles next year, says the finance memo."
    document_id = upload(embedded.client, ALICE, "otter.txt", text, groups=["eng"]).json()["id"]
    assert wait_final(embedded.client, ALICE, document_id)["status"] == "ready"
    chunks_before = embedded.runtime.index.count_document("acme", document_id)
    assert document_id in _ids(embedded, BOB, "otter sanctuary budget")
    assert document_id not in _ids(embedded, CAROL, "otter sanctuary budget")

    response = embedded.client.put(
        f"/v1/documents/{document_id}/acl", headers=ALICE, json={"groups": ["sales"], "users": ["dan"]}
    )
    assert response.status_code == 200 and response.json()["acl"] == {"users": ["alice", "dan"], "groups": ["sales"]}
    assert document_id not in _ids(embedded, BOB, "otter sanctuary budget")  # lost access at once
    assert document_id in _ids(embedded, CAROL, "otter sanctuary budget")  # gained it at once
    assert document_id in _ids(embedded, DAN, "otter sanctuary budget")
    assert document_id in _ids(embedded, ALICE, "otter sanctuary budget")  # the owner always
    assert embedded.client.get(f"/v1/documents/{document_id}", headers=BOB).status_code == 404
    assert embedded.runtime.index.count_document("acme", document_id) == chunks_before  # nothing re-ingested

    # Who may change it: the owner or the tenant's admin; a reader gets 403, others 404.
    assert (
        embedded.client.put(f"/v1/documents/{document_id}/acl", headers=CAROL, json={"groups": ["x"]}).status_code
        == 403
    )
    assert (
        embedded.client.put(f"/v1/documents/{document_id}/acl", headers=BOB, json={"groups": ["eng"]}).status_code
        == 404
    )
    assert embedded.client.put(f"/v1/documents/{document_id}/acl", headers=OTHER_ADMIN, json={}).status_code == 404
    assert (
        embedded.client.put(f"/v1/documents/{document_id}/acl", headers=ADMIN, json={"groups": ["eng"]}).status_code
        == 200
    )
    assert document_id in _ids(embedded, BOB, "otter sanctuary budget")
    assert document_id not in _ids(embedded, CAROL, "otter sanctuary budget")
    # The admin changed the ACL but reads by it like everyone else: it is not listed.
    assert document_id not in _ids(embedded, ADMIN, "otter sanctuary budget")
    assert embedded.client.put(
        f"/v1/documents/{document_id}/acl", headers=ALICE, json={"groups": [""]}
    ).status_code in (400, 422)


def test_acl_change_on_a_1000_chunk_document(embedded: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """Measures how long a change takes to be enforced on 1,000 chunks (printed; no timed assertion)."""
    document_id = upload(
        embedded.client, ALICE, "seed.txt", b"A thousand-chunk document, seeded.", groups=["eng"]
    ).json()["id"]
    assert wait_final(embedded.client, ALICE, document_id)["status"] == "ready"
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(1000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    record = embedded.runtime.registry.get(document_id)
    points = [
        ChunkPoint(
            "acme",
            document_id,
            record.version,
            "seed.txt",
            record.acl_tokens,
            Chunk(index=i, text=f"seeded chunk {i} {uuid.uuid4().hex}", page=None, section=None, token_count=8),
            tuple(float(x) for x in vectors[i]),
        )
        for i in range(1000)
    ]
    embedded.runtime.index.upsert(points)
    embedded.runtime.index.publish("acme", document_id, record.version, 1000)
    assert embedded.runtime.index.count_document("acme", document_id) == 1000

    timings = []
    for groups in (["sales"], ["eng"], ["sales"], ["eng"], ["sales"]):
        started = time.perf_counter()
        response = embedded.client.put(f"/v1/documents/{document_id}/acl", headers=ALICE, json={"groups": groups})
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200
        reader, outsider = (CAROL, BOB) if groups == ["sales"] else (BOB, CAROL)
        assert (
            sum(
                h["document_id"] == document_id
                for h in query(embedded.client, reader, "seeded chunk", top_k=50)["results"]
            )
            == 50
        )
        assert document_id not in _ids(embedded, outsider, "seeded chunk")
    with capsys.disabled():
        print(
            "\nACL change on 1,000 chunks (embedded, HTTP round trip): "
            f"median {statistics.median(timings) * 1000:.0f} ms, "
            f"max {max(timings) * 1000:.0f} ms over {len(timings)} changes"
        )
