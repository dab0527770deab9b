"""The Qdrant adapter of the VectorIndex port: a Qdrant server by URL, or Qdrant's embedded local mode
under the data directory (one process holds that directory).

On a server the collection is created with the storage options of `CollectionOptions` (dense vectors on disk,
int8 quantization, shards, replicas) and payload indexes on the fields every search filters by; local mode
takes none of these (it keeps everything in memory and scans).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio.to_thread
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from core.access import Principal
from core.errors import ConfigError, Unavailable
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

_UPSERT_BATCH = 256
_DENSE_VECTOR = ""  # the unnamed default vector
# A server's point count, the denominator of the share that picks a search's parameters, is asked again after this
# long. The share picks parameters, never who is admitted: a count some seconds old costs at most a less suited beam.
_TOTAL_TTL_S = 10.0
T = TypeVar("T")


def _sparse(terms: SparseTerms) -> models.SparseVector:
    return models.SparseVector(indices=terms.indices, values=terms.values)


@dataclass(frozen=True)
class CollectionOptions:
    """How a Qdrant server creates the collection (used once, when it does not exist yet)."""

    on_disk: bool = False  # dense vectors memory-mapped from disk instead of held in RAM
    quantization: Literal["none", "int8"] = "none"  # int8: a quantized copy in RAM, the originals rescore
    shards: int = 1
    replicas: int = 1

    def quantization_config(self) -> models.ScalarQuantization | None:
        if self.quantization == "none":
            return None
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        )


class QdrantIndex:
    """VectorIndex on qdrant-client. Errors reaching the engine surface as Unavailable."""

    def __init__(
        self,
        collection: str,
        *,
        url: str | None = None,
        path: Path | None = None,
        api_key: str | None = None,
        options: CollectionOptions | None = None,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url (Qdrant server) or path (embedded)")
        self.collection = collection
        self.embedded = path is not None
        self.options = options or CollectionOptions()
        self._bm25 = Bm25Encoder()
        # qdrant-client's local mode is plain Python state with no locking, shared here by the API's
        # threads and the ingestion thread: serialise calls to it. A server needs no such lock.
        self._lock: AbstractContextManager[Any] = threading.RLock() if self.embedded else nullcontext()
        self._total: tuple[float, int] | None = None  # (when it was counted, the collection's points)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(path=str(path))
        else:
            self._client = QdrantClient(url=url, api_key=api_key, timeout=10)

    def _call(self, operation: Callable[[], T]) -> T:
        try:
            with self._lock:
                return operation()
        except (ResponseHandlingException, UnexpectedResponse, OSError) as exc:
            raise Unavailable(f"the vector index is unavailable: {exc}") from exc

    def ensure_ready(self, dimension: int) -> None:
        def prepare() -> None:
            created = not self._client.collection_exists(self.collection) and self._create(dimension)
            if not created:
                self._check_dimension(dimension)
            if self.embedded:  # local mode has no payload indexes (it scans); a server needs them
                return
            tenant_index = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
            for field, schema in (
                (TENANT_FIELD, tenant_index),
                (ACL_FIELD, models.PayloadSchemaType.KEYWORD),
                (LIVE_FIELD, models.PayloadSchemaType.INTEGER),
                (DOCUMENT_FIELD, models.PayloadSchemaType.KEYWORD),
                (VERSION_FIELD, models.PayloadSchemaType.INTEGER),
                (CHUNK_INDEX_FIELD, models.PayloadSchemaType.INTEGER),
            ):
                self._client.create_payload_index(self.collection, field, field_schema=schema)

        self._call(prepare)

    def _create(self, dimension: int) -> bool:
        """Create the collection; False if another process created it first (a server answers 409)."""
        sparse = {SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)}
        if self.embedded:  # local mode takes no storage options
            dense = models.VectorParams(size=dimension, distance=models.Distance.COSINE)
            self._client.create_collection(self.collection, vectors_config=dense, sparse_vectors_config=sparse)
            return True
        options = self.options
        dense = models.VectorParams(size=dimension, distance=models.Distance.COSINE, on_disk=options.on_disk)
        try:
            self._client.create_collection(
                self.collection,
                vectors_config=dense,
                sparse_vectors_config=sparse,
                quantization_config=options.quantization_config(),
                shard_number=options.shards,
                replication_factor=options.replicas,
            )
        except UnexpectedResponse as exc:
            if exc.status_code == HTTPStatus.CONFLICT:  # an API and a worker starting together
                return False
            raise
        return True

    def _check_dimension(self, dimension: int) -> None:
        """An existing collection must hold vectors of the model's size: otherwise every upsert would fail
        later with the engine's own message, far from the cause."""
        vectors = self._client.get_collection(self.collection).config.params.vectors
        if isinstance(vectors, dict):  # named vectors only: not a collection this adapter made
            vectors = vectors.get(_DENSE_VECTOR)
        if vectors is None:
            raise ConfigError(
                f"the Qdrant collection {self.collection!r} has no unnamed dense vector: it was not made by "
                "Tessera; set TESSERA_COLLECTION to another name"
            )
        if vectors.size != dimension:
            raise ConfigError(
                f"the Qdrant collection {self.collection!r} holds dense vectors of size {vectors.size}, but the "
                f"embedding model makes vectors of size {dimension}: set TESSERA_COLLECTION to a new name (and "
                "re-ingest), or delete the collection, or go back to the model it was made with"
            )

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        structs = [
            models.PointStruct(
                id=point_id(p.document_id, p.version, p.chunk.index),
                vector={_DENSE_VECTOR: list(p.vector), SPARSE_VECTOR: _sparse(self._bm25.document(p.chunk.text))},
                payload=chunk_payload(p),
            )
            for p in points
        ]
        for start in range(0, len(structs), _UPSERT_BATCH):
            self._call(partial(self._client.upsert, self.collection, structs[start : start + _UPSERT_BATCH], wait=True))

    def publish(self, tenant: str, document_id: str, version: int, chunk_count: int) -> None:
        # By id, not by filter: the ids are known, and local mode would scan every point for a filter.
        ids: list[models.ExtendedPointId] = [point_id(document_id, version, i) for i in range(chunk_count)]
        with self._lock:  # embedded: no query runs between the two steps
            self._call(
                lambda: self._client.set_payload(self.collection, payload={LIVE_FIELD: LIVE}, points=ids, wait=True)
            )
            if version > 1:
                self._delete(document_filter(tenant, document_id, older_than=version))

    def set_acl(self, tenant: str, document_id: str, acl_tokens: Sequence[str]) -> None:
        selection = document_filter(tenant, document_id)
        tokens = list(acl_tokens)
        self._call(
            lambda: self._client.set_payload(self.collection, payload={ACL_FIELD: tokens}, points=selection, wait=True)
        )

    def delete_document(self, tenant: str, document_id: str) -> None:
        self._delete(document_filter(tenant, document_id))

    def delete_version(self, tenant: str, document_id: str, version: int, from_chunk: int = 0) -> None:
        self._delete(document_filter(tenant, document_id, version=version, from_chunk=from_chunk))

    def _delete(self, selection: models.Filter) -> None:
        selector = models.FilterSelector(filter=selection)
        self._call(lambda: self._client.delete(self.collection, points_selector=selector, wait=True))

    def count_document(self, tenant: str, document_id: str, version: int | None = None) -> int:
        selection = document_filter(tenant, document_id, version=version)
        result = self._call(lambda: self._client.count(self.collection, count_filter=selection, exact=True))
        return int(result.count)

    def check(self) -> None:
        if not self._call(lambda: self._client.collection_exists(self.collection)):
            raise Unavailable(f"the vector index has no collection {self.collection!r}")

    def _points_total(self) -> int:
        cached = self._total
        now = time.monotonic()
        if cached is None or now - cached[0] > _TOTAL_TTL_S:
            cached = (now, self._client.count(self.collection, exact=False).count)
            self._total = cached
        return cached[1]

    def _dense_params(self, query_filter: models.Filter) -> models.SearchParams | None:
        """A server's parameters for the share of the collection `query_filter` admits, by its payload indexes'
        estimate (retrieval/search_plan.py, as on Qdrant Edge). Local mode scans every point: it walks no graph."""
        if self.embedded:
            return None
        admitted = self._client.count(self.collection, count_filter=query_filter, exact=False).count
        plan = plan_for(admitted, self._points_total())
        return models.SearchParams(
            hnsw_ef=plan.hnsw_ef,
            acorn=models.AcornSearchParams(enable=True) if plan.acorn else None,
            quantization=models.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING),
        )

    def search(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        query_filter = acl_filter(principal)  # raises before the engine is asked anything
        params = self._call(partial(self._dense_params, query_filter)) if mode is not SearchMode.SPARSE else None
        search = partial(self._client.query_points, self.collection, query_filter=query_filter, limit=limit)
        if mode is SearchMode.HYBRID:
            # The principal's filter on each half and on the fusion: no half ever ranks what it may not read.
            candidates = fusion_candidates(limit)
            terms = _sparse(self._bm25.query(text))
            search = partial(
                search,
                prefetch=[
                    models.Prefetch(query=list(vector), filter=query_filter, limit=candidates, params=params),
                    models.Prefetch(query=terms, using=SPARSE_VECTOR, filter=query_filter, limit=candidates),
                ],
                query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
            )
        elif mode is SearchMode.SPARSE:
            search = partial(search, query=_sparse(self._bm25.query(text)), using=SPARSE_VECTOR)
        else:
            search = partial(search, query=list(vector), search_params=params)
        response = self._call(partial(search, with_payload=True))
        return newest_versions_only([search_hit(point.payload or {}, point.score) for point in response.points])

    async def search_async(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        """On a pool thread: a server is asked over the network, and local mode (small tests) is a pure-Python
        scan slow enough at any size to stall the loop."""
        search = partial(self.search, principal, vector, limit, mode=mode, text=text)
        return await anyio.to_thread.run_sync(search)

    def optimize(self) -> bool:
        """Nothing to do: a Qdrant server's optimizer builds HNSW segments in the background, and local mode
        has no index (it scans)."""
        return False

    def _scroll(self, **options: Any) -> Iterator[models.Record]:
        """Every point the scroll options select, a page at a time."""
        offset: models.ExtendedPointId | None = None
        while True:
            page, offset = self._call(partial(self._client.scroll, self.collection, offset=offset, **options))
            yield from page
            if offset is None:
                return

    def chunks(self) -> list[StoredChunk]:
        return [stored_chunk(point.payload or {}) for point in self._scroll(limit=4096, with_payload=True)]

    def vectors(self, tenant: str) -> list[StoredVector]:
        selection = models.Filter(must=[models.FieldCondition(key=TENANT_FIELD, match=models.MatchValue(value=tenant))])
        stored: list[StoredVector] = []
        points = self._scroll(scroll_filter=selection, limit=1024, with_payload=True, with_vectors=[_DENSE_VECTOR])
        for point in points:
            vector = point.vector.get(_DENSE_VECTOR) if isinstance(point.vector, dict) else point.vector
            if not isinstance(vector, list):
                raise TypeError("expected one unnamed dense vector per point")
            stored.append(stored_vector(point.payload or {}, vector))  # type: ignore[arg-type]
        return stored

    def close(self) -> None:
        with self._lock:
            self._client.close()
