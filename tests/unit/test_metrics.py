from __future__ import annotations

import math
import os
import threading

import pytest

from evals.metrics import (
    collapse_to_passages,
    dcg_at_k,
    fidelity_at_k,
    latency_summary,
    mean_of,
    mrr_at_k,
    ndcg_at_k,
    ragas_id_context_precision,
    ragas_id_context_recall,
    recall_at_k,
)

pytestmark = pytest.mark.unit

# log2(3) = 1.584962500721, log2(5) = 2.321928094887
GRADED = {"a": 2, "b": 1, "c": 0}


def test_dcg_of_a_graded_ranking_by_hand() -> None:
    # [c, b, x, a]: c (2^0-1)/log2(2) = 0; b (2^1-1)/log2(3) = 0.630929753571; x unknown -> 0;
    # a (2^2-1)/log2(5) = 3/2.321928094887 = 1.292029674217  =>  1.922959427788
    assert dcg_at_k(["c", "b", "x", "a"], GRADED, 10) == pytest.approx(1.922959427788, rel=1e-9)
    # k=3 drops a (rank 4): 0.630929753571
    assert dcg_at_k(["c", "b", "x", "a"], GRADED, 3) == pytest.approx(0.630929753571, rel=1e-9)


def test_ndcg_of_a_graded_ranking_by_hand() -> None:
    # DCG@10 = 1.922959427788 (above). Ideal from the qrels, grades [2, 1, 0]:
    # 3/log2(2) + 1/log2(3) + 0 = 3 + 0.630929753571 = 3.630929753571.  1.922959427788 / 3.630929753571
    assert ndcg_at_k(["c", "b", "x", "a"], GRADED, 10) == pytest.approx(0.529605241163, rel=1e-9)
    # @2: DCG = 0 + 0.630929753571; ideal@2 = 3.630929753571  ->  0.173765342871
    assert ndcg_at_k(["c", "b", "x", "a"], GRADED, 2) == pytest.approx(0.173765342871, rel=1e-9)


def test_ndcg_of_the_perfect_ranking_is_one() -> None:
    assert ndcg_at_k(["a", "b", "c"], GRADED) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b"], GRADED, 1) == pytest.approx(1.0)


def test_ndcg_ideal_comes_from_the_qrels_not_the_retrieved_list() -> None:
    # b is relevant but never retrieved: DCG = 1/log2(2) = 1; ideal = 1 + 1/log2(3) = 1.630929753571
    # -> 1 / 1.630929753571 = 0.613147192765 (an ideal built from [a] alone would give 1.0)
    assert ndcg_at_k(["a"], {"a": 1, "b": 1}) == pytest.approx(0.613147192765, rel=1e-9)


def test_negative_grades_gain_nothing() -> None:
    # z has grade -1 and counts as 0: DCG = 0 + 1/log2(3) = 0.630929753571; ideal = 1
    assert ndcg_at_k(["z", "a"], {"a": 1, "z": -1}) == pytest.approx(0.630929753571, rel=1e-9)


def test_collapse_keeps_each_passage_once_at_its_best_rank() -> None:
    # chunk ranks 1..5 -> p1 (ranks 1, 3), p2 (ranks 2, 5), p3 (rank 4)
    assert collapse_to_passages(["p1", "p2", "p1", "p3", "p2"]) == ["p1", "p2", "p3"]
    assert collapse_to_passages([]) == []


def test_collapse_moves_later_passages_up() -> None:
    chunks = ["p1", "p2", "p1", "p3"]
    qrels = {"p3": 1}
    # p3 is 4th among chunks, 3rd among passages once p1's second chunk is gone
    assert mrr_at_k(chunks, qrels) == pytest.approx(1 / 4)
    assert mrr_at_k(collapse_to_passages(chunks), qrels) == pytest.approx(1 / 3)
    assert recall_at_k(chunks, qrels, 3) == 0.0
    assert recall_at_k(collapse_to_passages(chunks), qrels, 3) == 1.0


def _ranking_with_relevant_at(positions: dict[str, int], length: int = 60) -> list[str]:
    ranking = [f"filler{i}" for i in range(length)]
    for pid, rank in positions.items():
        ranking[rank - 1] = pid
    return ranking


@pytest.mark.parametrize(("k", "expected"), [(1, 1 / 4), (5, 2 / 4), (10, 3 / 4), (50, 4 / 4)])
def test_recall_at_k(k: int, expected: float) -> None:
    # 4 relevant passages at ranks 1, 4, 10 and 37; top 1 holds 1 of them, top 5 two, top 10 three, top 50 all
    ranking = _ranking_with_relevant_at({"r1": 1, "r2": 4, "r3": 10, "r4": 37})
    qrels = {"r1": 1, "r2": 2, "r3": 1, "r4": 1, "not_relevant": 0}
    assert recall_at_k(ranking, qrels, k) == pytest.approx(expected)


def test_mrr() -> None:
    qrels = {"a": 1, "b": 2, "c": 0}
    # c has grade 0 and does not count: first relevant (b) at rank 3 -> 1/3
    assert mrr_at_k(["c", "x", "b", "a"], qrels) == pytest.approx(1 / 3)
    assert mrr_at_k(["a", "b"], qrels) == 1.0
    # the first relevant passage is at rank 3, outside the top 2
    assert mrr_at_k(["c", "x", "b"], qrels, 2) == 0.0
    assert mrr_at_k([], qrels) == 0.0


def test_query_without_relevant_passages_gives_none() -> None:
    for qrels in ({}, {"a": 0, "b": 0}):
        assert ndcg_at_k(["a", "b"], qrels) is None
        assert recall_at_k(["a", "b"], qrels, 10) is None
        assert mrr_at_k(["a", "b"], qrels) is None


def test_k_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], {"a": 1}, 0)
    with pytest.raises(ValueError):
        recall_at_k(["a"], {"a": 1}, 0)


def test_fidelity() -> None:
    exact = ["a", "b", "c", "d", "e"]
    # exact top 4 {a, b, c, d}; returned top 4 {a, x, c, y}: 2 of 4
    assert fidelity_at_k(["a", "x", "c", "y", "b"], exact, 4) == pytest.approx(0.5)
    # order inside the top k does not matter
    assert fidelity_at_k(["d", "c", "b", "a"], exact, 4) == 1.0
    # fewer than k exact neighbours: the denominator is what exists, {a, b}; returned has b -> 1/2
    assert fidelity_at_k(["b"], ["a", "b"], 10) == pytest.approx(0.5)
    # a hit past the k-th returned place does not count
    assert fidelity_at_k(["x", "y", "a"], ["a", "b"], 2) == 0.0
    assert fidelity_at_k(["a"], [], 10) is None


def test_mean_of_skips_none() -> None:
    # (0.5 + 1.0 + 0.0) / 3
    assert mean_of([0.5, None, 1.0, 0.0, None]) == pytest.approx(0.5)
    assert mean_of(iter([None, None])) is None
    assert mean_of([]) is None


def test_latency_summary_interpolates_linearly() -> None:
    # sorted [10, 20, 30, 100]; linear percentile at position p/100 * (n-1):
    # p50 -> 1.5  -> 20 + 0.5 * 10 = 25;  p95 -> 2.85 -> 30 + 0.85 * 70 = 89.5;  p99 -> 2.97 -> 30 + 0.97 * 70 = 97.9
    # mean (10 + 20 + 30 + 100) / 4 = 40
    summary = latency_summary([100.0, 10.0, 30.0, 20.0])
    assert summary == pytest.approx({"p50": 25.0, "p95": 89.5, "p99": 97.9, "mean": 40.0, "n": 4.0})


def test_latency_summary_of_nothing_is_zero() -> None:
    assert latency_summary([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "n": 0.0}


# Ragas' ID-based metrics (ragas/metrics/_context_precision.py, _context_recall.py, 0.4.3) compare ids as sets
# of strings: precision = |retrieved ∩ reference| / |retrieved|, recall = |retrieved ∩ reference| / |reference|.


def test_ragas_id_context_precision() -> None:
    # retrieved {a, b, c} (the second a collapses), reference {a, d}: 1 hit of 3 retrieved
    assert ragas_id_context_precision(["a", "b", "c", "a"], ["a", "d"]) == pytest.approx(1 / 3)
    # order does not matter: {d, a} both in the reference -> 2/2
    assert ragas_id_context_precision(["d", "a"], ["a", "d", "e"]) == 1.0
    assert ragas_id_context_precision(["x"], ["a"]) == 0.0
    assert ragas_id_context_precision(["x"], []) == 0.0
    # nothing retrieved: ragas returns NaN
    assert math.isnan(ragas_id_context_precision([], ["a"]))


def test_ragas_id_context_recall() -> None:
    # reference {a, d} (duplicates collapse), retrieved {a, b, c}: 1 of 2 references found
    assert ragas_id_context_recall(["a", "b", "c"], ["a", "d", "a"]) == pytest.approx(0.5)
    # reference {a, d, e}, retrieved {d, a}: 2 of 3
    assert ragas_id_context_recall(["d", "a"], ["a", "d", "e"]) == pytest.approx(2 / 3)
    assert ragas_id_context_recall([], ["a"]) == 0.0
    # no reference ids: ragas returns NaN
    assert math.isnan(ragas_id_context_recall(["a"], []))


def test_ragas_metrics_work_from_a_thread_without_a_loop() -> None:
    results: list[float] = []
    worker = threading.Thread(
        target=lambda: results.extend(
            [ragas_id_context_precision(["a", "b"], ["a"]), ragas_id_context_recall(["a", "b"], ["a", "c"])]
        )
    )
    worker.start()
    worker.join()
    # precision {a, b} vs {a}: 1/2; recall {a, c} vs {a, b}: 1/2
    assert results == [pytest.approx(0.5), pytest.approx(0.5)]


def test_ragas_usage_tracking_is_off() -> None:
    # ragas posts a usage event for every metric call unless this is set (core.offline sets it)
    assert os.environ.get("RAGAS_DO_NOT_TRACK") == "true"
