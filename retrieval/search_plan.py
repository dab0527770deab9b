"""How a dense search walks the HNSW graph, by the share of the collection a principal may read: one rule for
Qdrant Edge and a Qdrant server, which run the same segment code (graph, payload index, ACORN).

Measured on Qdrant Edge with evals/bench/scale.py (dbpedia replicated to 100k and 200k chunks, recall@10 against
exact filtered search):
- under 15%: few enough points for a plain scan, or a group small enough for the payload index to give it its own
  graph links (groups up to about 4 / average links per point of a segment, ~17% at m=16): the default ef finds
  the exact top 10;
- 15% to 40%: too large for links of its own, too sparse for the main graph restricted to it: the greedy search
  strands (recall@10 0.93 at 25%, 0.98 even at ef 512). ACORN, which also follows neighbours' neighbours,
  restores it (0.995 at ef 64; 1.000 at ef 100, at 1.5x the time). 40% is ACORN's own default ceiling;
- over 40%: the restricted main graph holds, with a wider beam: ef 256 (50%: 0.977 -> 0.995; 100%: 0.985 -> 1.0).
One parameter set for every share, leaving ACORN to the engine's own estimate, measured worse: at ef 256 recall@10
held (>= 0.9955) but p95 was 14.8 ms at the 10% share against 1.3-1.6 ms share-based; at ef 128, recall >= 0.9915
and p95 8.9 ms.

Where the collection keeps an int8 copy of the vectors, candidates are ranked on it and twice the limit rescored on
the float vectors (without rescoring, Edge's scan of a 0.5% share lost recall: 0.9895). An engine ignores these
parameters where the collection has no quantized copy.
"""

from __future__ import annotations

from dataclasses import dataclass

ACORN_SHARE = (0.15, 0.40)
ACORN_EF = 64
WIDE_EF = 256
RESCORE_OVERSAMPLING = 2.0


@dataclass(frozen=True)
class DenseSearchPlan:
    hnsw_ef: int | None  # None: the engine's default beam
    acorn: bool


def plan_for(admitted: int, total: int) -> DenseSearchPlan:
    """The plan for a filter the engine estimates to admit `admitted` of the collection's `total` points."""
    share = admitted / total if total > 0 else 0.0
    if share > ACORN_SHARE[1]:
        return DenseSearchPlan(hnsw_ef=WIDE_EF, acorn=False)
    if share >= ACORN_SHARE[0]:
        return DenseSearchPlan(hnsw_ef=ACORN_EF, acorn=True)
    return DenseSearchPlan(hnsw_ef=None, acorn=False)
