"""The Qdrant Edge adapter of the VectorIndex port: Qdrant's own engine in-process (HNSW, payload indexes,
a write-ahead log) under the data directory. The embedded default; one process holds the directory.

Filters are built once, by retrieval/acl_filter.py, as qdrant-client models, and translated here
condition by condition; anything the translation does not know is an error, never dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import qdrant_edge as edge
from qdrant_client import models

from core.access import Principal
from core.errors import Unavailable
from core.index import SearchMode, newest_versions_only
from core.records import ChunkPoint, SearchHit, StoredChunk, StoredVector, point_id
from retrieval.acl_filter import (
    ACL_FIELD,
    CHUNK_INDEX_FIELD,
    DOCUMENT_FIELD,
    LIVE,
    LIVE_FIELD,
    TENANT_FIELD,
    VERSION_FIELD,
    acl_filter,
    document_filter,
)
from retrieval.payload import chunk_payload, search_hit, stored_chunk, stored_vector
from retrieval.search_plan import RESCORE_OVERSAMPLING, plan_for
from retrieval.sparse import RRF_K, SPARSE_VECTOR, Bm25Encoder, SparseTerms, fusion_candidates

_UPSERT_BATCH = 1024
_DENSE_VECTOR = ""  # Edge's name for the default (unnamed) vector
# The shard's search pool. The calling thread holds the GIL while the pool searches (qdrant-edge-py 0.9.0), so
# more pool threads only split one query over its segments, and each hand-off waits for a core the embedding
# also wants: at 100k chunks under 16 clients a query took 2.2 ms with the default pool (2 threads here), of
# which the caller ran 0.08 ms, and 1.9 ms on one thread; the estimate that picks the parameters, 0.25 -> 0.02 ms.
_SEARCH_THREADS = 1
# Dense vectors are kept a second time as int8 (scalar quantization, in RAM: 384 bytes a chunk beside the 1,536
# of float32), which searches rank candidates on before rescoring (retrieval/search_plan.py). At 100k chunks
# (evals/bench/scale.py, 200 queries twice): p50 over the seven ACL shares 1.21 against 1.44-1.56 ms, recall@10
# against exact search unchanged at every share (0.992 at 50 %, 0.9935 without). The quantized copy is built by
# optimize() (15 s at 100k chunks, once per shard).
_QUANTIZATION = edge.ScalarQuantizationConfig(type=edge.ScalarType.Int8, quantile=0.99, memory=edge.Memory.Pinned)
_RESCORED = edge.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)


def _condition(condition: Any) -> edge.FieldCondition:
    if not isinstance(condition, models.FieldCondition):
        raise ValueError(f"cannot translate filter condition {condition!r} for Qdrant Edge")
    if isinstance(condition.match, models.MatchValue) and condition.range is None:
        return edge.FieldCondition(condition.key, match=edge.MatchValue(condition.match.value))
    if isinstance(condition.match, models.MatchAny) and condition.range is None:
        return edge.FieldCondition(condition.key, match=edge.MatchAny(list(condition.match.any)))  # type: ignore[arg-type]
    if isinstance(condition.range, models.Range) and condition.match is None:
        r = condition.range
        return edge.FieldCondition(condition.key, range=edge.RangeFloat(gt=r.gt, gte=r.gte, lt=r.lt, lte=r.lte))
    raise ValueError(f"cannot translate filter condition {condition!r} for Qdrant Edge")


def to_edge_filter(selection: models.Filter) -> edge.Filter:
    """Translate a must-only filter of field conditions; refuse anything else."""
    if selection.should or selection.must_not or selection.min_should:
        raise ValueError("only must-conditions are translated for Qdrant Edge")
    must = selection.must if isinstance(selection.must, list) else [selection.must] if selection.must else []
    return edge.Filter(must=[_condition(c) for c in must])


def _config(dense: edge.EdgeVectorParams | None = None) -> edge.EdgeConfig:
    """The shard's configuration. Loading passes no dense vector: the shard's own is inherited. Edge requires a
    vector configuration beside any other: the sparse one, fixed here, is checked against the shard's."""
    return edge.EdgeConfig(
        vectors=dense,
        sparse_vectors={SPARSE_VECTOR: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
        max_search_threads=_SEARCH_THREADS,
        quantization_config=_QUANTIZATION,
    )


def _sparse(terms: SparseTerms) -> edge.SparseVector:
    return edge.SparseVector(terms.indices, terms.values)


class EdgeIndex:
    """VectorIndex on Qdrant Edge. Engine errors surface as Unavailable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()  # publish's two steps run with no query between them
        self._shard: edge.EdgeShard | None = None
        self._bm25 = Bm25Encoder()
        if path.exists() and any(path.iterdir()):
            try:
                self._shard = edge.EdgeShard.load(str(path), _config())
            except Exception as exc:  # the binding raises a bare Exception for a shard it cannot take
                raise Unavailable(f"cannot open the vector index at {path}: {exc}") from exc

    @staticmethod
    def _guard(operation: Any) -> Any:
        try:
            return operation()
        except (OSError, RuntimeError) as exc:
            raise Unavailable(f"the vector index is unavailable: {exc}") from exc

    @property
    def shard(self) -> edge.EdgeShard:
        if self._shard is None:
            raise Unavailable("the vector index has no collection yet (ensure_ready was not called)")
        return self._shard

    def _update(self, operation: edge.UpdateOperation) -> None:
        with self._lock:
            self._guard(lambda: self.shard.update(operation))

    def ensure_ready(self, dimension: int) -> None:
        with self._lock:
            if self._shard is None:
                self.path.mkdir(parents=True, exist_ok=True)
                config = _config(edge.EdgeVectorParams(size=dimension, distance=edge.Distance.Cosine))
                self._shard = self._guard(lambda: edge.EdgeShard.create(str(self.path), config))
                for field, schema in (
                    (TENANT_FIELD, edge.KeywordIndexParams(is_tenant=True)),
                    (ACL_FIELD, edge.PayloadSchemaType.Keyword),
                    (LIVE_FIELD, edge.PayloadSchemaType.Integer),
                    (DOCUMENT_FIELD, edge.PayloadSchemaType.Keyword),
                    (VERSION_FIELD, edge.PayloadSchemaType.Integer),
                    (CHUNK_INDEX_FIELD, edge.PayloadSchemaType.Integer),
                ):
                    self._update(edge.UpdateOperation.create_field_index(field, schema))

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        structs = [
            edge.Point(
                point_id(p.document_id, p.version, p.chunk.index),
                {_DENSE_VECTOR: list(p.vector), SPARSE_VECTOR: _sparse(self._bm25.document(p.chunk.text))},
                chunk_payload(p),
            )
            for p in points
        ]
        for start in range(0, len(structs), _UPSERT_BATCH):
            self._update(edge.UpdateOperation.upsert_points(structs[start : start + _UPSERT_BATCH]))

    def publish(self, tenant: str, document_id: str, version: int, chunk_count: int) -> None:
        ids: list[str] = [point_id(document_id, version, i) for i in range(chunk_count)]
        with self._lock:
            self._update(edge.UpdateOperation.set_payload(ids, {LIVE_FIELD: LIVE}))  # type: ignore[arg-type]
            if version > 1:
                self._delete(document_filter(tenant, document_id, older_than=version))

    def set_acl(self, tenant: str, document_id: str, acl_tokens: Sequence[str]) -> None:
        selection = to_edge_filter(document_filter(tenant, document_id))
        self._update(edge.UpdateOperation.set_payload_by_filter(selection, {ACL_FIELD: list(acl_tokens)}))

    def delete_document(self, tenant: str, document_id: str) -> None:
        self._delete(document_filter(tenant, document_id))

    def delete_version(self, tenant: str, document_id: str, version: int, from_chunk: int = 0) -> None:
        self._delete(document_filter(tenant, document_id, version=version, from_chunk=from_chunk))

    def _delete(self, selection: models.Filter) -> None:
        self._update(edge.UpdateOperation.delete_points_by_filter(to_edge_filter(selection)))

    def count_document(self, tenant: str, document_id: str, version: int | None = None) -> int:
        request = edge.CountRequest(
            exact=True, filter=to_edge_filter(document_filter(tenant, document_id, version=version))
        )
        with self._lock:
            return int(self._guard(lambda: self.shard.count(request)))

    def check(self) -> None:
        request = edge.CountRequest(exact=False)
        with self._lock:
            self._guard(lambda: self.shard.count(request))

    def optimize(self) -> bool:
        """Build the HNSW graph (with the payload index's extra links) of every segment that needs one; True if
        anything was built. Qdrant Edge has no background optimizer: until this runs, points sit in plain segments
        that every search scans in full (200k chunks: p50 99 ms instead of 1.5 ms for a principal reading all).
        qdrant-edge-py 0.9.0 holds the GIL for the whole run (75 s at 100k chunks, 140-420 s at 200k on 2 shared
        CPUs), so every thread of the process waits: run it off the query path (after a bulk load, at start)."""
        with self._lock:
            return bool(self._guard(self.shard.optimize))

    def _dense_params(self, selection: edge.Filter) -> edge.SearchParams:
        """Search parameters for the share of the shard `selection` admits (the payload index's estimate, ~20 us)."""
        admitted = self.shard.count(edge.CountRequest(exact=False, filter=selection))
        plan = plan_for(admitted, self.shard.info().points_count)
        acorn = edge.AcornSearchParams(enable=True) if plan.acorn else None
        return edge.SearchParams(hnsw_ef=plan.hnsw_ef, acorn=acorn, quantization=_RESCORED)

    def search(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        selection = to_edge_filter(acl_filter(principal))  # raises before the engine is asked anything
        with self._lock:
            params = self._guard(partial(self._dense_params, selection)) if mode is not SearchMode.SPARSE else None

        def dense() -> edge.Query:
            return edge.Query.Nearest(list(vector))

        def sparse() -> edge.Query:
            return edge.Query.Nearest(_sparse(self._bm25.query(text)), using=SPARSE_VECTOR)

        if mode is SearchMode.HYBRID:
            # The principal's filter on each half and on the fusion: no half ever ranks what it may not read.
            candidates = fusion_candidates(limit)
            request = edge.QueryRequest(
                limit=limit,
                prefetches=[
                    edge.Prefetch(limit=candidates, query=dense(), filter=selection, params=params),
                    edge.Prefetch(limit=candidates, query=sparse(), filter=selection),
                ],
                query=edge.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]
                filter=selection,
                with_payload=True,
            )
        else:
            chosen = sparse() if mode is SearchMode.SPARSE else dense()
            request = edge.QueryRequest(limit=limit, query=chosen, filter=selection, with_payload=True, params=params)
        with self._lock:
            points = self._guard(lambda: self.shard.query(request))
        return newest_versions_only([search_hit(p.payload or {}, p.score) for p in points])

    async def search_async(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        """Searched on the caller's loop: qdrant-edge-py 0.9.0 holds the GIL through the call, so a pool thread
        would only add a hand-off. The server hosts the shard in a process of its own (retrieval/edge_host.py)."""
        return self.search(principal, vector, limit, mode=mode, text=text)

    def _scroll(self, **options: Any) -> Iterator[Any]:
        """Every point the scroll options select, a page at a time (the lock held for a page, not the walk)."""
        offset = None
        while True:
            request = edge.ScrollRequest(offset=offset, **options)
            with self._lock:
                page, offset = self._guard(partial(self.shard.scroll, request))
            yield from page
            if offset is None:
                return

    def chunks(self) -> list[StoredChunk]:
        records = self._scroll(limit=4096, with_payload=True, with_vector=False)
        return [stored_chunk(record.payload or {}) for record in records]

    def vectors(self, tenant: str) -> list[StoredVector]:
        selection = edge.Filter(must=[edge.FieldCondition(TENANT_FIELD, match=edge.MatchValue(tenant))])
        stored: list[StoredVector] = []
        for record in self._scroll(limit=1024, filter=selection, with_payload=True, with_vector=[_DENSE_VECTOR]):
            vector = record.vector[_DENSE_VECTOR] if isinstance(record.vector, dict) else record.vector
            stored.append(stored_vector(record.payload or {}, vector))
        return stored

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None
