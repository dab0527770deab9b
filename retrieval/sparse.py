"""BM25 term vectors for the sparse half of hybrid retrieval, and how the two halves are fused.

One encoder for every engine: Qdrant Edge's BM25 model (tokenizer, English stop words, Snowball stemmer,
all in-process and offline). A document's vector holds its terms' saturated, length-normalised frequencies;
a query's holds weight 1 per term. The inverse document frequency is applied by the engine at query time
(the sparse vector is configured with the IDF modifier), so it follows the collection as it grows and no
corpus statistics live in Tessera. Qdrant servers accept the same vectors, so the engines agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import qdrant_edge as edge

SPARSE_VECTOR = "bm25"  # the name of the sparse vector in every engine's collection
# Chunks are ~150 cl100k tokens, ~110 words; BM25's length normalisation is relative to this.
AVERAGE_CHUNK_WORDS = 110.0
# Reciprocal-rank fusion: score = sum over the rankings of 1 / (RRF_K + rank). 60 is the value of the
# original paper (Cormack et al., 2009); it keeps a single ranking's top hit from dominating.
RRF_K = 60
# Each half of a hybrid search fetches this many candidates (or top_k, when larger) before fusion.
FUSION_CANDIDATES = 50


@dataclass(frozen=True)
class SparseTerms:
    indices: list[int]
    values: list[float]


class Bm25Encoder:
    def __init__(self) -> None:
        self._model = edge.Bm25(edge.Bm25Config(language="english", avg_len=AVERAGE_CHUNK_WORDS))

    def document(self, text: str) -> SparseTerms:
        vector = self._model.embed_document(text)
        return SparseTerms(list(vector.indices), list(vector.values))

    def query(self, text: str) -> SparseTerms:
        vector = self._model.embed_query(text)
        return SparseTerms(list(vector.indices), list(vector.values))


def fusion_candidates(limit: int) -> int:
    return max(limit, FUSION_CANDIDATES)
