"""The index scale benchmark at a small scale, on the real model and the real Qdrant Edge adapter.

7,000 chunks (200 dbpedia passages replicated): just above the engine's indexing threshold (about 10 MB of
vectors), so the optimizer builds an HNSW index and large filters are searched through the graph, while small
ones are scanned, as at full scale. Checked: recall@10 against exact filtered search at every selectivity, every
result readable by its principal (checked here independently of the benchmark's own leak count), and each
selectivity's group admitting its nominal share of the chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.embedding import Embedder
from evals.bench.scale import (
    NOISE_SIGMA,
    SEED,
    SELECTIVITIES,
    TENANT,
    open_or_build,
    principal_for,
    query_vectors,
    run_scale,
    seed_query_data_dir,
)
from evals.datasets import load_beir
from retrieval.edge_index import EdgeIndex

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
N_CHUNKS = 7_000
QUERIES = 20

Corpus = tuple[list[str], np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    """200 dbpedia passages and 20 of its queries, embedded with the project's model (seconds, not the minutes
    of the full corpus)."""
    dataset = load_beir(DATASETS / "dbpedia")
    texts = [p.document_text for p in list(dataset.passages.values())[:200]]
    queries = list(dataset.queries.values())[:QUERIES]
    embedder = Embedder()
    return texts, embedder.encode(texts), embedder.encode(queries)


@pytest.fixture(scope="module")
def scale_run(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    data_dir = tmp_path_factory.mktemp("scale")
    result = run_scale(N_CHUNKS, queries=QUERIES, top_k=10, corpus=corpus, data_dir=data_dir)
    return result, data_dir / f"scale-{N_CHUNKS}"


def test_the_optimizer_builds_the_hnsw_index(scale_run: tuple[dict[str, Any], Path]) -> None:
    build = scale_run[0]["build"]
    assert build["points"] == N_CHUNKS and build["optimized"]
    assert build["indexed_vectors"] >= N_CHUNKS  # every dense vector, and the sparse ones where the index has them
    assert any('"hnsw"' in config for config in build["segment_indexes"])
    assert build["size_bytes"] > 0


def test_recall_against_exact_filtered_search_at_every_selectivity(scale_run: tuple[dict[str, Any], Path]) -> None:
    rows = scale_run[0]["rows"]
    assert [row["selectivity"] for row in rows] == list(SELECTIVITIES)
    for row in rows:
        assert row["recall@10"] >= 0.99, row
        assert row["short_results"] == 0 and row["leaks"] == 0, row
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row


def test_each_selectivity_admits_its_nominal_share(scale_run: tuple[dict[str, Any], Path]) -> None:
    result, path = scale_run
    index = EdgeIndex(path)
    try:
        stored = index.vectors(TENANT)
    finally:
        index.close()
    assert len(stored) == N_CHUNKS and all(v.live for v in stored)
    for row in result["rows"]:
        principal = principal_for(row["selectivity"])
        admitted = sum(1 for v in stored if principal.may_read(TENANT, v.acl_tokens))
        assert admitted == row["admitted"]
        assert abs(admitted / N_CHUNKS - row["selectivity"]) <= 0.001 + 0.05 * row["selectivity"], row


def test_every_result_is_readable_by_its_principal(corpus: Corpus, scale_run: tuple[dict[str, Any], Path]) -> None:
    index = EdgeIndex(scale_run[1])
    try:
        acl = {v.document_id: v.acl_tokens for v in index.vectors(TENANT)}
        for selectivity in SELECTIVITIES:
            principal = principal_for(selectivity)
            for vector in query_vectors(corpus[2], QUERIES):
                hits = index.search(principal, vector.tolist(), 10)
                assert len(hits) == 10
                assert all(principal.may_read(TENANT, acl[hit.document_id]) for hit in hits), selectivity
        assert index.search(principal_for(1.0, tenant="other"), corpus[2][0].tolist(), 10) == []
    finally:
        index.close()


def test_a_second_run_reuses_the_index_only_when_built_the_same_way(
    corpus: Corpus, scale_run: tuple[dict[str, Any], Path]
) -> None:
    path = scale_run[1]
    built = open_or_build(path, N_CHUNKS, corpus[0], corpus[1], tenant=TENANT, sigma=NOISE_SIGMA, seed=SEED)
    try:
        assert built.stats.reused and built.stats.points == N_CHUNKS
    finally:
        built.index.close()
    with pytest.raises(FileExistsError):
        open_or_build(path, N_CHUNKS, corpus[0], corpus[1], tenant=TENANT, sigma=NOISE_SIGMA, seed=SEED + 1)


def test_a_seeded_data_dir_serves_every_reader(corpus: Corpus, tmp_path: Path) -> None:
    readers = seed_query_data_dir(tmp_path, 2_000, corpus=corpus)
    assert set(readers) == {"0.5%", "1%", "5%", "10%", "25%", "50%", "100%"}
    assert readers["0.5%"].admitted == 10 and readers["100%"].admitted == 2_000
    index = EdgeIndex(tmp_path / "edge")
    try:
        for reader in readers.values():
            hits = index.search(reader.principal(), corpus[2][0].tolist(), 5)
            assert len(hits) == 5 and all(hit.text for hit in hits)
    finally:
        index.close()
