"""Retrieval metrics over passage ids: nDCG, recall, MRR, index fidelity, latency percentiles, and Ragas'
ID-based context precision / recall.

Rankings are lists of passage ids, best first, without duplicates (see `collapse_to_passages`); qrels map a
passage id to its graded relevance. Metrics that are undefined for a query (no relevant passage) return None,
so that `mean_of` leaves the query out instead of counting it as a zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ragas import SingleTurnSample

# The ID-based metrics live only in these modules: ragas.metrics re-exports them behind a deprecation warning
# that points at ragas.metrics.collections, which has no ID-based version.
from ragas.metrics._context_precision import IDBasedContextPrecision
from ragas.metrics._context_recall import IDBasedContextRecall

_ID_PRECISION = IDBasedContextPrecision()
_ID_RECALL = IDBasedContextRecall()


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def _relevant(qrels: Mapping[str, int]) -> set[str]:
    return {pid for pid, grade in qrels.items() if grade > 0}


def collapse_to_passages(ranked_passage_ids: Sequence[str]) -> list[str]:
    """Chunk-level ranking (each chunk already mapped to its passage id, best first) -> passage ranking: a passage
    split into several chunks counts once, at its best rank; the passages after it move up."""
    return list(dict.fromkeys(ranked_passage_ids))


def dcg_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    """DCG@k = sum over i<k of (2**grade - 1) / log2(i + 2), i the 0-based rank; unknown ids have grade 0.

    Grades below 0 count as 0: a negative gain would let a bad passage cancel a good one."""
    _check_k(k)
    total = 0.0
    for i, pid in enumerate(ranked[:k]):
        grade = max(grades.get(pid, 0), 0)
        total += (2**grade - 1) / math.log2(i + 2)
    return total


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float | None:
    """nDCG@k = DCG@k / ideal DCG@k, the ideal computed from the qrels (grades sorted descending), not from the
    retrieved list, so relevant passages that were never retrieved still lower the score. None when the query has
    no passage with grade > 0."""
    _check_k(k)
    if not _relevant(qrels):
        return None
    ideal_order = sorted(qrels, key=lambda pid: qrels[pid], reverse=True)
    return dcg_at_k(ranked, qrels, k) / dcg_at_k(ideal_order, qrels, k)


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float | None:
    """Recall@k = |relevant ∩ top k| / |relevant|, relevant = passages with grade > 0. None when there are none."""
    _check_k(k)
    relevant = _relevant(qrels)
    if not relevant:
        return None
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float | None:
    """Reciprocal rank: 1/rank (1-based) of the first passage with grade > 0 within the top k, else 0.0. None when
    the query has no passage with grade > 0."""
    _check_k(k)
    relevant = _relevant(qrels)
    if not relevant:
        return None
    for i, pid in enumerate(ranked[:k]):
        if pid in relevant:
            return 1.0 / (i + 1)
    return 0.0


def fidelity_at_k(returned: Sequence[str], exact: Sequence[str], k: int = 10) -> float | None:
    """Index fidelity: the share of the exact top k (brute force) that the index returned in its own top k,
    |top_k(returned) ∩ top_k(exact)| / |top_k(exact)|, as sets. None when exact is empty."""
    _check_k(k)
    truth = set(exact[:k])
    if not truth:
        return None
    return len(truth.intersection(returned[:k])) / len(truth)


def mean_of(values: Iterable[float | None]) -> float | None:
    """Arithmetic mean over the non-None values; None if there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return sum(present) / len(present)


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """{"p50", "p95", "p99", "mean", "n"}: percentiles by numpy.percentile with the 'linear' method (interpolating
    between the two nearest order statistics), the arithmetic mean, and the count. Empty input -> all 0.0, n 0."""
    if not values_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "n": 0.0}
    p50, p95, p99 = np.percentile(np.asarray(values_ms, dtype=float), [50, 95, 99], method="linear")
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(np.mean(values_ms)),
        "n": float(len(values_ms)),
    }


def ragas_id_context_precision(retrieved_ids: Sequence[str], reference_ids: Sequence[str]) -> float:
    """Ragas' ID-based context precision (no LLM), computed by ragas itself: |set(retrieved) ∩ set(reference)| /
    |set(retrieved)|, order and duplicates ignored. NaN (ragas' value) when nothing was retrieved."""
    sample = SingleTurnSample(retrieved_context_ids=list(retrieved_ids), reference_context_ids=list(reference_ids))
    # single_turn_score is ragas' synchronous entry point: asyncio.run on a fresh loop, so it also works from a
    # worker thread that has no loop.
    return float(_ID_PRECISION.single_turn_score(sample))


def ragas_id_context_recall(retrieved_ids: Sequence[str], reference_ids: Sequence[str]) -> float:
    """Ragas' ID-based context recall (no LLM), computed by ragas itself: |set(reference) ∩ set(retrieved)| /
    |set(reference)|, order and duplicates ignored. NaN (ragas' value) when there are no reference ids."""
    sample = SingleTurnSample(retrieved_context_ids=list(retrieved_ids), reference_context_ids=list(reference_ids))
    return float(_ID_RECALL.single_turn_score(sample))
