"""How much can fusing BM25 with the dense model gain, at best? nDCG@10 on both shared BEIR datasets for dense,
sparse and the engine's hybrid (RRF, k = 60), then for fusions of the same two rankings computed here:
reciprocal-rank fusion with other k and a heavier dense weight (what weighted RRF in Qdrant and Edge would give),
and convex combinations of min-max normalised scores.

Every variant is scored on the same queries it would be chosen on (there are 40 and 11 judged queries), so the
best row is an upper bound for fusion with these two retrievers, not an estimate of what a tuned setting would
give on new queries.

The index is a real Qdrant Edge shard holding each passage as one chunk (title, newline, text), with the model of
the default backend and the engine's BM25. Prints a table and writes JSON to --json.

    .venv/bin/python scripts/measure_fusion.py --json data/measure-fusion.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import core.offline
from core.access import Principal
from core.embedding import Embedder
from core.index import SearchMode
from core.records import Chunk, ChunkPoint
from evals.datasets import BeirDataset, load_beir
from evals.metrics import mean_of, ndcg_at_k
from retrieval.edge_index import EdgeIndex
from retrieval.sparse import FUSION_CANDIDATES

DEPTH = FUSION_CANDIDATES  # each ranking's candidates, as the engines' hybrid fetches
READER = Principal(tenant="fusion", subject="reader", groups=frozenset({"all"}))
Ranking = list[tuple[str, float]]  # passage id, score; best first


def _rankings(dataset: BeirDataset, embedder: Embedder) -> dict[str, dict[str, Ranking]]:
    """Per judged query: the dense, sparse and engine-hybrid rankings of the passages."""
    passages = list(dataset.passages.values())
    vectors = embedder.encode([p.document_text for p in passages])
    with tempfile.TemporaryDirectory(prefix="tessera-fusion-") as folder:
        index = EdgeIndex(Path(folder) / "edge")
        try:
            index.ensure_ready(embedder.dimension)
            points = [
                ChunkPoint(
                    tenant=READER.tenant,
                    document_id=f"p{i:06d}",
                    version=1,
                    file_name="passage.txt",
                    acl_tokens=("group:all",),
                    chunk=Chunk(
                        index=0, text=p.document_text.replace("\n\n", "\n"), page=None, section=None, token_count=0
                    ),
                    vector=tuple(float(x) for x in vector),
                )
                for i, (p, vector) in enumerate(zip(passages, vectors, strict=True))
            ]
            for start in range(0, len(points), 512):
                index.upsert(points[start : start + 512])
            for point in points:
                index.publish(point.tenant, point.document_id, 1, 1)
            index.optimize()
            passage_of = {point.document_id: p.id for point, p in zip(points, passages, strict=True)}
            rankings: dict[str, dict[str, Ranking]] = {}
            for query_id, question in dataset.queries.items():
                if query_id not in dataset.qrels:
                    continue
                vector = embedder.encode([question])[0]
                rankings[query_id] = {
                    mode.value: [
                        (passage_of[hit.document_id], hit.score)
                        for hit in index.search(READER, vector, DEPTH, mode=mode, text=question)
                    ]
                    for mode in SearchMode
                }
        finally:
            index.close()
    return rankings


def _rrf(dense: Ranking, sparse: Ranking, k: int, dense_weight: float) -> list[str]:
    scores: dict[str, float] = {}
    for ranking, weight in ((dense, dense_weight), (sparse, 1.0)):
        for rank, (passage, _) in enumerate(ranking[:DEPTH], start=1):
            scores[passage] = scores.get(passage, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda passage: -scores[passage])


def _min_max(ranking: Ranking) -> dict[str, float]:
    if not ranking:
        return {}
    low, high = min(s for _, s in ranking), max(s for _, s in ranking)
    return {passage: (score - low) / ((high - low) or 1.0) for passage, score in ranking}


def _convex(dense: Ranking, sparse: Ranking, dense_weight: float) -> list[str]:
    a, b = _min_max(dense[:DEPTH]), _min_max(sparse[:DEPTH])
    score = {p: dense_weight * a.get(p, 0.0) + (1 - dense_weight) * b.get(p, 0.0) for p in set(a) | set(b)}
    return sorted(score, key=lambda passage: -score[passage])


def _variants() -> dict[str, Callable[[Ranking, Ranking], list[str]]]:
    variants: dict[str, Callable[[Ranking, Ranking], list[str]]] = {}
    for k in (2, 10, 60):
        for weight in (1.0, 2.0, 3.0, 4.0):
            variants[f"rrf k={k} dense×{weight:g}"] = partial(_rrf, k=k, dense_weight=weight)
    for weight in (0.5, 0.6, 0.7, 0.8, 0.9):
        variants[f"convex min-max dense {weight:g}"] = partial(_convex, dense_weight=weight)
    return variants


def _ndcg(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> float:
    value = mean_of(ndcg_at_k(ranked, qrels[query], 10) for query, ranked in rankings.items())
    return round(value or 0.0, 4)


def measure(datasets: Sequence[Path]) -> dict[str, dict[str, float]]:
    embedder = Embedder(batch_size=32)
    results: dict[str, dict[str, float]] = {}
    for folder in datasets:
        dataset = load_beir(folder)
        rankings = _rankings(dataset, embedder)
        row = {
            mode.value: _ndcg({q: [p for p, _ in r[mode.value]] for q, r in rankings.items()}, dataset.qrels)
            for mode in SearchMode
        }
        for name, fuse in _variants().items():
            row[name] = _ndcg({q: fuse(r["dense"], r["sparse"]) for q, r in rankings.items()}, dataset.qrels)
        results[folder.name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"), help="folder of BEIR datasets")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    core.offline.enforce()
    results = measure([args.datasets / "dbpedia", args.datasets / "business-reports"])
    names = list(next(iter(results.values())))
    print(f"{'nDCG@10':34}" + "".join(f"{name:>18}" for name in results))
    for name in names:
        print(f"{name:34}" + "".join(f"{row[name]:>18.4f}" for row in results.values()))
    for dataset, row in results.items():
        best = max((n for n in row if n not in ("dense", "sparse")), key=lambda n: row[n])
        print(f"{dataset}: best fusion {best} {row[best]:.4f} against dense {row['dense']:.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
