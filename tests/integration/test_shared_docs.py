"""Every file in ../shared/docs goes through the HTTP API; each ends in its expected status and the text of
every `ready` one is found by an allowed user's query."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import auth, query, upload, wait_final
from tests.integration.conftest import Served

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# file -> (final status, a phrase from its text when ready / the reason when failed)
EXPECTED = {
    "book-war-and-peace-1p.txt": ("ready", "so Genoa and Lucca are now just family estates"),
    "docx-tables.docx": ("ready", "Table with merged cells"),
    "empty.txt": ("failed", "no extractable text"),
    "eng_spa_mult.epub": ("ready", "born free and equal in dignity and rights"),
    "eng_spa_mult.rtf": ("ready", "born free and equal in dignity and rights"),
    "example-10k-1p.html": ("ready", "Galaxy Gaming"),
    "fake-memo.pdf": ("ready", "20,000 bottles of water, 10,000 blankets, and 200 laptops"),
    # unstructured reads this file's slide text ("Problem Date Placeholder", "Test Slide"), as its own
    # test suite asserts: its zip and package structure are sound, so Tessera indexes what it holds.
    "fake-power-point-malformed.pptx": ("ready", "Test Slide"),
    "fake-power-point.pptx": ("ready", "Adding a Bullet Slide"),
    "fake-text-all-whitespace.txt": ("failed", "no extractable text"),
    "fake.docx": ("ready", "Lorem ipsum dolor sit amet"),
    "fake.odt": ("ready", "Leader Sarah Mark Ryan"),
    "family-day.eml": ("ready", "first annual family day"),
    "handbook-1p.docx": ("ready", "The United States Trustee appoints and supervises standing trustees"),
    "ideas-page.html": ("ready", "where good ideas come from"),
    "layout-parser-paper-fast.pdf": ("ready", "Deep Learning Based Document Image Analysis"),
    "multi-column-2p.pdf": ("ready", "Dense Passage Retrieval for Open-Domain Question Answering"),
    "norwich-city.txt": ("ready", "speaks fluent Welsh, has worked as a commentator"),
    "password.pdf": ("failed", "encrypted PDF"),
    "simple-table.md": ("ready", "Juicy Apples"),
    "stanley-cups.csv": ("ready", "Maple Leafs"),
    "stanley-cups.xlsx": ("ready", "Maple Leafs"),
}
UPLOADER = auth("alice", groups=["eng"])
READER = auth("bob", groups=["eng"])  # allowed through the group
OUTSIDER = auth("carol", groups=["sales"])


def _normal(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def ingested(embedded: Served, shared_docs: Path) -> dict[str, dict[str, object]]:
    documents = {}
    for path in sorted(shared_docs.iterdir()):
        if path.name == "README.md":
            continue
        response = upload(embedded.client, UPLOADER, path.name, path.read_bytes(), groups=["eng"])
        assert response.status_code == 202, (path.name, response.text)
        assert response.json()["status"] == "queued"
        documents[path.name] = response.json()["id"]
    return {name: wait_final(embedded.client, UPLOADER, doc_id) for name, doc_id in documents.items()}


def test_every_shared_document_is_covered(shared_docs: Path) -> None:
    assert {p.name for p in shared_docs.iterdir() if p.name != "README.md"} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_final_status_and_retrievable_text(embedded: Served, ingested: dict[str, dict[str, object]], name: str) -> None:
    status, phrase = EXPECTED[name]
    record = ingested[name]
    assert record["status"] == status, record
    if status == "failed":
        assert record["chunk_count"] == 0
        assert phrase in str(record["failure_reason"])
        assert embedded.runtime.index.count_document("acme", str(record["id"])) == 0
        return
    assert int(str(record["chunk_count"])) > 0 and record["failure_reason"] is None
    assert embedded.runtime.index.count_document("acme", str(record["id"])) == record["chunk_count"]
    hits = query(embedded.client, READER, phrase, top_k=10)["results"]
    found = [h for h in hits if h["document_id"] == record["id"] and phrase in _normal(h["text"])]
    assert found, f"{phrase!r} from {name} not among the top 10: {[h['file_name'] for h in hits]}"
    assert found[0]["file_name"] == name


def test_an_outsider_sees_none_of_it(embedded: Served, ingested: dict[str, dict[str, object]]) -> None:
    for _, phrase in EXPECTED.values():
        assert query(embedded.client, OUTSIDER, phrase)["results"] == []
    for record in ingested.values():
        assert embedded.client.get(f"/v1/documents/{record['id']}", headers=OUTSIDER).status_code == 404


def test_pdf_chunks_cite_their_pages(embedded: Served, ingested: dict[str, dict[str, object]]) -> None:
    hits = query(embedded.client, READER, "Dense Passage Retrieval", top_k=50)["results"]
    pages = {h["page"] for h in hits if h["file_name"] == "multi-column-2p.pdf"}
    assert pages == {1, 2}
