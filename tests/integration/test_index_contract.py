"""One contract for every embedded index engine, so the adapters cannot drift apart: ACL-filtered search
equals a brute-force reference (no leak, no loss), versions publish atomically, ACL changes and deletes
apply to every chunk, and the data survives a reopen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from core.access import Principal
from core.index import SearchMode, VectorIndex
from core.records import Chunk, ChunkPoint
from retrieval.edge_index import to_edge_filter
from retrieval.factory import create_index
from tests.helpers import settings_for

pytestmark = pytest.mark.integration

DIM = 16
ENGINES = ["edge", "qdrant-local"]
RNG = np.random.default_rng(42)
# document -> (tenant, acl tokens, number of chunks)
DOCUMENTS = {
    "d-eng": ("acme", ("user:alice", "group:eng"), 6),
    "d-sales": ("acme", ("user:bob", "group:sales"), 5),
    "d-private": ("acme", ("user:alice",), 4),
    "d-carol": ("acme", ("user:bob", "user:carol"), 3),
    "d-globex": ("globex", ("user:dave", "group:eng"), 5),
}
PRINCIPALS = [
    Principal.of("acme", "alice", ["eng"]),
    Principal.of("acme", "bob", ["sales"]),
    Principal.of("acme", "carol"),
    Principal.of("acme", "erin", ["eng", "sales"]),
    Principal.of("acme", "mallory", ["Eng", "sales "]),
    Principal.of("globex", "dave", ["eng"]),
    Principal.of("initech", "frank", ["eng"]),
    Principal.of("acme", "root", [], is_admin=True),
]


def _vector() -> tuple[float, ...]:
    v = RNG.normal(size=DIM)
    return tuple(float(x) for x in v / np.linalg.norm(v))


VECTORS = {(doc, i): _vector() for doc, (_, _, n) in DOCUMENTS.items() for i in range(n)}


def _points(doc: str, version: int = 1, n: int | None = None) -> list[ChunkPoint]:
    tenant, acl, count = DOCUMENTS[doc]
    return [
        ChunkPoint(
            tenant,
            doc,
            version,
            f"{doc}.txt",
            acl,
            Chunk(i, f"{doc} chunk {i} v{version}", None, None, 5),
            VECTORS[(doc, i)],
        )
        for i in range(n if n is not None else count)
    ]


def _open(path: Path, engine: str) -> VectorIndex:
    index = create_index(settings_for(path, embedded_engine=engine))
    index.ensure_ready(DIM)
    return index


@pytest.fixture(params=ENGINES)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    index = _open(tmp_path, request.param)
    for doc in DOCUMENTS:
        index.upsert(_points(doc))
        index.publish(DOCUMENTS[doc][0], doc, 1, DOCUMENTS[doc][2])
    yield index
    index.close()


def _reference(principal: Principal, query: np.ndarray, k: int) -> list[tuple[str, int]]:
    tokens = set(principal.acl_tokens())
    allowed = [
        key for key in VECTORS if DOCUMENTS[key[0]][0] == principal.tenant and tokens & set(DOCUMENTS[key[0]][1])
    ]
    return sorted(allowed, key=lambda key: -float(np.dot(VECTORS[key], query)))[:k]


@pytest.mark.parametrize("principal", PRINCIPALS, ids=lambda p: f"{p.subject}@{p.tenant}")
def test_search_equals_the_brute_force_reference(index: VectorIndex, principal: Principal) -> None:
    for _ in range(5):
        query = np.asarray(_vector())
        for k in (1, 5, 50):
            hits = index.search(principal, list(query), k)
            assert [(h.document_id, h.chunk_index) for h in hits] == _reference(principal, query, k)


def test_pending_versions_are_invisible_until_published_and_then_replace_the_old(index: VectorIndex) -> None:
    alice = PRINCIPALS[0]
    index.upsert(_points("d-eng", version=2, n=4))
    assert {h.version for h in index.search(alice, list(VECTORS[("d-eng", 0)]), 50) if h.document_id == "d-eng"} == {1}
    assert index.count_document("acme", "d-eng") == 10
    index.publish("acme", "d-eng", 2, 4)
    hits = [h for h in index.search(alice, list(VECTORS[("d-eng", 0)]), 50) if h.document_id == "d-eng"]
    assert {h.version for h in hits} == {2} and len(hits) == 4
    assert index.count_document("acme", "d-eng", version=1) == 0


def test_acl_change_and_deletes_apply_to_every_chunk(index: VectorIndex) -> None:
    bob, carol = PRINCIPALS[1], PRINCIPALS[2]
    index.set_acl("acme", "d-sales", ["user:carol"])
    probe = list(VECTORS[("d-sales", 0)])
    assert not any(h.document_id == "d-sales" for h in index.search(bob, probe, 50))
    assert sum(h.document_id == "d-sales" for h in index.search(carol, probe, 50)) == 5
    index.delete_version("acme", "d-sales", 1, from_chunk=3)
    assert index.count_document("acme", "d-sales") == 3
    index.delete_document("acme", "d-sales")
    assert index.count_document("acme", "d-sales") == 0
    assert not any(h.document_id == "d-sales" for h in index.search(carol, probe, 50))
    assert index.count_document("globex", "d-globex") == 5  # nothing else touched


def test_vectors_export_and_reopen(tmp_path: Path) -> None:
    for engine in ENGINES:
        path = tmp_path / engine
        index = _open(path, engine)
        index.upsert(_points("d-carol"))
        index.publish("acme", "d-carol", 1, 3)
        index.close()
        reopened = _open(path, engine)
        stored = sorted(reopened.vectors("acme"), key=lambda v: v.chunk_index)
        assert [(v.document_id, v.chunk_index, v.acl_tokens, v.live) for v in stored] == [
            ("d-carol", i, ("user:bob", "user:carol"), True) for i in range(3)
        ]
        assert np.allclose(stored[0].vector, VECTORS[("d-carol", 0)], atol=1e-6)
        reopened.close()


def test_the_edge_translation_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError):
        to_edge_filter(models.Filter(should=[models.FieldCondition(key="a", match=models.MatchValue(value="b"))]))
    with pytest.raises(ValueError):
        to_edge_filter(models.Filter(must=[models.HasIdCondition(has_id=[1])]))
    with pytest.raises(ValueError):
        to_edge_filter(models.Filter(must=[models.FieldCondition(key="t", match=models.MatchText(text="x"))]))


def _readable(principal: Principal) -> set[tuple[str, int]]:
    return {key for key in VECTORS if key in _reference(principal, np.asarray(VECTORS[key]), len(VECTORS))}


@pytest.mark.parametrize("mode", [SearchMode.SPARSE, SearchMode.HYBRID])
@pytest.mark.parametrize("principal", PRINCIPALS, ids=lambda p: f"{p.subject}@{p.tenant}")
def test_sparse_and_hybrid_search_return_exactly_what_the_principal_may_read(
    index: VectorIndex, principal: Principal, mode: SearchMode
) -> None:
    # Every chunk's text holds the word "chunk": asking for it with room for all returns all readable ones.
    query = list(_vector())
    hits = index.search(principal, query, 50, mode=mode, text="chunk")
    assert {(h.document_id, h.chunk_index) for h in hits} == _readable(principal)
    assert len(hits) == len({(h.document_id, h.chunk_index) for h in hits})


@pytest.mark.parametrize("mode", [SearchMode.SPARSE, SearchMode.HYBRID])
def test_sparse_ranks_by_terms_inside_the_acl(index: VectorIndex, mode: SearchMode) -> None:
    erin, alice = PRINCIPALS[3], PRINCIPALS[0]
    top = index.search(erin, list(_vector()), 3, mode=mode, text="sales")
    if mode is SearchMode.SPARSE:
        assert {h.document_id for h in top} == {"d-sales"}
    assert "d-sales" in {h.document_id for h in top}
    # alice may not read d-sales: the same query gives her other documents, never that one.
    assert all(h.document_id != "d-sales" for h in index.search(alice, list(_vector()), 50, mode=mode, text="sales"))
