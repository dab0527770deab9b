"""Qdrant Edge's dense search parameters follow the share of the shard a principal may read (retrieval/search_plan.py):
the default search under 15 %, ACORN from 15 % to 40 %, a wider beam above; int8 candidates rescored at every share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as edge

import retrieval.edge_index as edge_index
import retrieval.search_plan as search_plan
from core.access import Principal
from core.errors import Unavailable
from core.records import Chunk, ChunkPoint
from retrieval.edge_index import EdgeIndex

pytestmark = pytest.mark.integration

DIM = 16
RNG = np.random.default_rng(7)
# group -> chunks, in one tenant of 100 chunks: 5 %, 25 % and the remaining 70 %
GROUPS = {"few": 5, "quarter": 25, "rest": 70}
FEW = Principal.of("acme", "una", ["few"])
QUARTER = Principal.of("acme", "quinn", ["quarter"])
EVERYONE = Principal.of("acme", "ada", list(GROUPS))
QUARTER_ELSEWHERE = Principal.of("globex", "quinn", ["quarter"])


def _vector() -> tuple[float, ...]:
    v = RNG.normal(size=DIM)
    return tuple(float(x) for x in v / np.linalg.norm(v))


def _points(group: str, count: int, *, tenant: str = "acme", start: int = 0) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            tenant,
            f"{tenant}-{group}-{i}",
            1,
            f"{group}-{i}.txt",
            (f"group:{group}",),
            Chunk(0, "text", None, None, 1),
            _vector(),
        )
        for i in range(start, start + count)
    ]


def _add(index: EdgeIndex, points: list[ChunkPoint]) -> None:
    index.upsert(points)
    for point in points:
        index.publish(point.tenant, point.document_id, 1, 1)


@pytest.fixture()
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    index = EdgeIndex(tmp_path / "edge")
    index.ensure_ready(DIM)
    for group, count in GROUPS.items():
        _add(index, _points(group, count))
    _add(index, _points("quarter", 3, tenant="globex"))
    yield index
    index.close()


def _params(index: EdgeIndex, principal: Principal) -> tuple[int | None, bool]:
    params = index._dense_params(edge_index.to_edge_filter(edge_index.acl_filter(principal)))
    # every share rescores its int8 candidates on the float vectors (a scan of a small share lost recall without)
    assert params.quantization is not None and params.quantization.rescore
    assert params.quantization.oversampling == search_plan.RESCORE_OVERSAMPLING
    return (params.hnsw_ef, bool(params.acorn and params.acorn.enable))


def test_parameters_follow_the_share_each_principal_reads(index: EdgeIndex) -> None:
    assert _params(index, FEW) == (None, False)  # 5 %: the default search
    assert _params(index, QUARTER) == (search_plan.ACORN_EF, True)  # 25 %: ACORN
    assert _params(index, EVERYONE) == (search_plan.WIDE_EF, False)  # 100 %: a wider beam
    # The same group in another tenant is another share (3 of 103 chunks), not acme's quarter.
    assert _params(index, QUARTER_ELSEWHERE) == (None, False)


def test_a_shard_reopens_with_its_points_and_one_without_bm25_is_refused(tmp_path: Path) -> None:
    """Opening passes Edge a configuration (the search pool, and the BM25 vector it is checked against): a shard
    reopens and answers as before; one made without the BM25 vector is refused by name, not opened half-usable."""
    path = tmp_path / "edge"
    index = EdgeIndex(path)
    index.ensure_ready(DIM)
    _add(index, _points("few", 5))
    vector = _points("few", 1)[0].vector
    before = [hit.document_id for hit in index.search(FEW, vector, 5)]
    index.close()
    assert len(before) == 5
    reopened = EdgeIndex(path)
    try:
        assert [hit.document_id for hit in reopened.search(FEW, vector, 5)] == before
    finally:
        reopened.close()

    dense_only = tmp_path / "dense-only"
    shard = edge.EdgeShard.create(
        str(dense_only), edge.EdgeConfig(vectors=edge.EdgeVectorParams(size=DIM, distance=edge.Distance.Cosine))
    )
    shard.update(edge.UpdateOperation.upsert_points([edge.Point(1, list(vector), {"tenant": "acme"})]))
    shard.close()
    with pytest.raises(Unavailable, match=r"cannot open the vector index .*bm25"):
        EdgeIndex(dense_only)
