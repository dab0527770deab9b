"""How the Qdrant adapter makes a server's collection ready (storage options, payload indexes, the check of an
existing collection's vector size) and what it asks a server for a search (the share of the collection a principal
may read, then the search parameters for that share).

No Qdrant server can run on this machine (no Docker, no binary), so the server here is a stand-in: a small
HTTP server on 127.0.0.1 that answers the REST calls qdrant-client makes during `ensure_ready` (collection
exists, create collection, create payload index, get collection, count, query, and the client's version probe) in
the shapes Qdrant answers them, and records every request. The real qdrant-client talks to it, so what is asserted here
is what the client puts on the wire. It does not prove that a real server accepts the options; the ACL matrix
(test_acl_matrix.py) runs against a real server when TESSERA_TEST_QDRANT_URL names one.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from qdrant_client import models

import retrieval.qdrant_index as qdrant_index
import retrieval.search_plan as search_plan
from core.access import Principal
from core.errors import ConfigError, Unavailable
from core.index import SearchMode, VectorIndex
from retrieval.acl_filter import (
    ACL_FIELD,
    CHUNK_INDEX_FIELD,
    DOCUMENT_FIELD,
    LIVE_FIELD,
    TENANT_FIELD,
    VERSION_FIELD,
    acl_filter,
)
from retrieval.factory import create_index
from retrieval.qdrant_index import QdrantIndex
from retrieval.sparse import SPARSE_VECTOR
from tests.helpers import settings_for

pytestmark = pytest.mark.integration

COLLECTION = "tessera_stand_in"
DIM = 384
_COLLECTION_PATH = re.compile(r"^/collections/(?P<name>[^/]+)(?P<rest>/exists|/index|/points/count|/points/query)?$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class StandIn:
    """The stand-in's state: collections by name (their create bodies) and every request received."""

    url: str = ""
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # Simulates another process creating the collection between our exists check and our create.
    created_by_another: dict[str, Any] | None = None
    # What a count answers: `admitted` for a filtered count, `points` for the whole collection; None: an error.
    admitted: int | None = 0
    points: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, method: str, path: str) -> list[Any]:
        with self.lock:
            return [r.body for r in self.requests if r.method == method and r.path == path]

    def collection_calls(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.method, r.path) for r in self.requests if r.path.startswith("/collections")]

    def add_existing(self, name: str, size: int) -> None:
        self.collections[name] = {
            "vectors": {"size": size, "distance": "Cosine"},
            "sparse_vectors": {SPARSE_VECTOR: {"modifier": "idf"}},
        }


def _ok(result: Any) -> dict[str, Any]:
    return {"result": result, "status": "ok", "time": 0.0001}


def _error(message: str) -> dict[str, Any]:
    return {"status": {"error": message}, "time": 0.0001}


def _collection_info(body: dict[str, Any]) -> dict[str, Any]:
    """GET /collections/{name} as Qdrant answers it, built from the body the collection was created with."""
    params: dict[str, Any] = {
        "vectors": body["vectors"],
        "shard_number": body.get("shard_number", 1),
        "replication_factor": body.get("replication_factor", 1),
        "write_consistency_factor": 1,
        "on_disk_payload": True,
    }
    if "sparse_vectors" in body:
        params["sparse_vectors"] = body["sparse_vectors"]
    return {
        "status": "green",
        "optimizer_status": "ok",
        "indexed_vectors_count": 0,
        "points_count": 0,
        "segments_count": 2,
        "config": {
            "params": params,
            "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000, "max_indexing_threads": 0},
            "optimizer_config": {
                "deleted_threshold": 0.2,
                "vacuum_min_vector_number": 1000,
                "default_segment_number": 0,
                "flush_interval_sec": 5,
            },
            "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
            "quantization_config": body.get("quantization_config"),
        },
        "payload_schema": {},
    }


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
            pass

        def _answer(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with state.lock:
                state.requests.append(Request(self.command, url.path, parse_qs(url.query), body))
                status, payload = self._route(self.command, url.path, body)
            self._answer(status, payload)

        def _route(self, method: str, path: str, body: Any) -> tuple[HTTPStatus, dict[str, Any]]:
            if method == "GET" and path == "/":
                version = importlib.metadata.version("qdrant-client")
                return HTTPStatus.OK, {"title": "qdrant - vector search engine", "version": version}
            match = _COLLECTION_PATH.match(path)
            if match is None:
                return HTTPStatus.NOT_FOUND, _error(f"stand-in: no route for {method} {path}")
            name, rest = match["name"], match["rest"]
            exists = name in state.collections
            if method == "GET" and rest == "/exists":
                return HTTPStatus.OK, _ok({"exists": exists})
            if method == "PUT" and rest is None:
                if state.created_by_another is not None:
                    state.collections[name], state.created_by_another = state.created_by_another, None
                    exists = True
                if exists:
                    return HTTPStatus.CONFLICT, _error(f"Wrong input: Collection `{name}` already exists!")
                state.collections[name] = body
                return HTTPStatus.OK, _ok(True)
            if not exists:
                return HTTPStatus.NOT_FOUND, _error(f"Not found: Collection `{name}` doesn't exist!")
            if method == "GET" and rest is None:
                return HTTPStatus.OK, _ok(_collection_info(state.collections[name]))
            if method == "PUT" and rest == "/index":
                return HTTPStatus.OK, _ok({"operation_id": len(state.requests), "status": "completed"})
            if method == "POST" and rest == "/points/count":
                if state.admitted is None:
                    return HTTPStatus.INTERNAL_SERVER_ERROR, _error("Service internal error: stand-in count failed")
                return HTTPStatus.OK, _ok({"count": state.admitted if body.get("filter") else state.points})
            if method == "POST" and rest == "/points/query":
                return HTTPStatus.OK, _ok({"points": []})
            return HTTPStatus.NOT_FOUND, _error(f"stand-in: no route for {method} {path}")

        def do_GET(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

    return Handler


@pytest.fixture
def server() -> Iterator[StandIn]:
    state = StandIn()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        # qdrant-client probes the server's version from a thread of its own: let it finish first, so that
        # it does not warn about a server that went away.
        deadline = time.monotonic() + 5
        while state.requests and not state.sent("GET", "/") and time.monotonic() < deadline:
            time.sleep(0.01)
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _index(server: StandIn, tmp_path: Path, **overrides: Any) -> VectorIndex:
    settings = settings_for(tmp_path, qdrant_url=server.url, collection=COLLECTION, **overrides)
    index = create_index(settings)
    assert isinstance(index, QdrantIndex) and not index.embedded
    return index


def _ready(server: StandIn, tmp_path: Path, dimension: int = DIM, **overrides: Any) -> None:
    index = _index(server, tmp_path, **overrides)
    try:
        index.ensure_ready(dimension)
    finally:
        index.close()


def _create_body(server: StandIn) -> dict[str, Any]:
    bodies = server.sent("PUT", f"/collections/{COLLECTION}")
    assert len(bodies) == 1, bodies
    body: dict[str, Any] = bodies[0]
    models.CreateCollection.model_validate(body)  # what the client sent is what its own models admit
    return body


def _index_schemas(server: StandIn) -> dict[str, Any]:
    bodies = server.sent("PUT", f"/collections/{COLLECTION}/index")
    for body in bodies:
        models.CreateFieldIndex.model_validate(body)
    return {body["field_name"]: body["field_schema"] for body in bodies}


EXPECTED_INDEXES = {
    TENANT_FIELD: {"type": "keyword", "is_tenant": True},
    ACL_FIELD: "keyword",
    LIVE_FIELD: "integer",
    DOCUMENT_FIELD: "keyword",
    VERSION_FIELD: "integer",
    CHUNK_INDEX_FIELD: "integer",
}


def test_a_new_collection_gets_the_default_options_and_the_acl_payload_indexes(server: StandIn, tmp_path: Path) -> None:
    _ready(server, tmp_path)
    body = _create_body(server)
    assert body["vectors"] == {"size": DIM, "distance": "Cosine", "on_disk": False}
    assert body["sparse_vectors"] == {SPARSE_VECTOR: {"modifier": "idf"}}
    assert "quantization_config" not in body
    assert (body["shard_number"], body["replication_factor"]) == (1, 1)

    schemas = _index_schemas(server)
    assert schemas[TENANT_FIELD] == {"type": "keyword", "is_tenant": True}
    assert schemas[ACL_FIELD] == "keyword"
    assert schemas == EXPECTED_INDEXES
    # Created first, then indexed, each index written before the call returns.
    calls = server.collection_calls()
    assert calls[:2] == [("GET", f"/collections/{COLLECTION}/exists"), ("PUT", f"/collections/{COLLECTION}")]
    assert calls[2:] == [("PUT", f"/collections/{COLLECTION}/index")] * len(EXPECTED_INDEXES)
    with server.lock:
        assert all(r.query.get("wait") == ["true"] for r in server.requests if r.path.endswith("/index"))


def test_a_new_collection_follows_non_default_options(server: StandIn, tmp_path: Path) -> None:
    _ready(
        server,
        tmp_path,
        qdrant_on_disk=True,
        qdrant_quantization="int8",
        qdrant_shards=6,
        qdrant_replicas=2,
    )
    body = _create_body(server)
    assert body["vectors"] == {"size": DIM, "distance": "Cosine", "on_disk": True}
    assert body["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
    assert (body["shard_number"], body["replication_factor"]) == (6, 2)
    assert body["sparse_vectors"] == {SPARSE_VECTOR: {"modifier": "idf"}}
    assert _index_schemas(server) == EXPECTED_INDEXES


def test_an_existing_collection_of_the_right_size_is_kept_and_indexed(server: StandIn, tmp_path: Path) -> None:
    server.add_existing(COLLECTION, DIM)
    _ready(server, tmp_path, qdrant_quantization="int8", qdrant_shards=3)
    assert server.sent("PUT", f"/collections/{COLLECTION}") == []  # never re-created
    assert len(server.sent("GET", f"/collections/{COLLECTION}")) == 1  # its size was checked
    assert _index_schemas(server) == EXPECTED_INDEXES  # indexes made idempotently, as on every start


def test_an_existing_collection_of_another_size_is_a_config_error_naming_both(server: StandIn, tmp_path: Path) -> None:
    server.add_existing(COLLECTION, 768)
    with pytest.raises(ConfigError) as error:
        _ready(server, tmp_path, dimension=DIM)
    message = str(error.value)
    assert "768" in message and str(DIM) in message and COLLECTION in message
    assert server.sent("PUT", f"/collections/{COLLECTION}") == []
    assert server.sent("PUT", f"/collections/{COLLECTION}/index") == []  # nothing written to it


@pytest.mark.parametrize(("their_size", "ok"), [(DIM, True), (768, False)])
def test_a_collection_created_concurrently_by_another_process_is_checked_not_fatal(
    server: StandIn, tmp_path: Path, their_size: int, ok: bool
) -> None:
    server.created_by_another = {"vectors": {"size": their_size, "distance": "Cosine"}}
    if ok:
        _ready(server, tmp_path)
        assert _index_schemas(server) == EXPECTED_INDEXES
    else:
        with pytest.raises(ConfigError, match=f"size {their_size}.*size {DIM}"):
            _ready(server, tmp_path)
    assert len(server.sent("PUT", f"/collections/{COLLECTION}")) == 1  # the create that got 409
    assert server.collections[COLLECTION]["vectors"]["size"] == their_size  # theirs, not replaced


def test_the_stand_in_answers_in_the_shapes_qdrant_client_parses(server: StandIn) -> None:
    server.add_existing(COLLECTION, DIM)
    info = models.InlineResponse2007.model_validate(_ok(_collection_info(server.collections[COLLECTION])))
    assert info.result is not None
    vectors = info.result.config.params.vectors
    assert isinstance(vectors, models.VectorParams) and vectors.size == DIM
    assert models.InlineResponse2009.model_validate(_ok({"exists": True})).result == models.CollectionExistence(
        exists=True
    )
    update = models.InlineResponse2008.model_validate(_ok({"operation_id": 1, "status": "completed"}))
    assert update.result is not None and update.result.status == models.UpdateStatus.COMPLETED


READER = Principal.of("acme", "quinn", ["finance"])
VECTOR = [1.0 / DIM**0.5] * DIM


def _search(server: StandIn, tmp_path: Path, *modes: SearchMode) -> list[dict[str, Any]]:
    """A search as READER in each mode, on one client; the query bodies the server received, each checked against
    the client's models."""
    index = _index(server, tmp_path)
    try:
        for mode in modes or (SearchMode.DENSE,):
            assert index.search(READER, VECTOR, 5, mode=mode, text="quarterly revenue") == []
    finally:
        index.close()
    bodies = server.sent("POST", f"/collections/{COLLECTION}/points/query")
    for body in bodies:
        models.QueryRequest.model_validate(body)
    return bodies


@pytest.mark.parametrize(
    ("admitted", "hnsw_ef", "acorn"),
    [(50, None, False), (150, search_plan.ACORN_EF, True), (250, search_plan.ACORN_EF, True), (410, 256, False)],
)
def test_a_dense_search_asks_for_the_parameters_of_the_share_its_principal_reads(
    server: StandIn, tmp_path: Path, admitted: int, hnsw_ef: int | None, acorn: bool
) -> None:
    server.add_existing(COLLECTION, DIM)
    server.points, server.admitted = 1000, admitted
    [query] = _search(server, tmp_path)
    # The share is the engine's estimate for the principal's own filter, over the whole collection's.
    counts = server.sent("POST", f"/collections/{COLLECTION}/points/count")
    whole = {"exact": False}
    assert sorted(counts, key=lambda body: "filter" in body) == [whole, {**whole, "filter": query["filter"]}]
    assert query["filter"] == acl_filter(READER).model_dump(mode="json", exclude_none=True)
    expected: dict[str, Any] = {"quantization": {"rescore": True, "oversampling": search_plan.RESCORE_OVERSAMPLING}}
    if hnsw_ef is not None:
        expected["hnsw_ef"] = hnsw_ef
    if acorn:
        expected["acorn"] = {"enable": True}
    assert query["params"] == expected


def test_a_hybrid_search_plans_its_dense_half_and_a_sparse_search_asks_no_share(
    server: StandIn, tmp_path: Path
) -> None:
    server.add_existing(COLLECTION, DIM)
    server.points, server.admitted = 1000, 250
    hybrid, sparse_only = _search(server, tmp_path, SearchMode.HYBRID, SearchMode.SPARSE)
    dense, sparse = hybrid["prefetch"]
    assert dense["params"]["acorn"] == {"enable": True} and dense["params"]["hnsw_ef"] == search_plan.ACORN_EF
    assert "params" not in sparse and sparse["using"] == SPARSE_VECTOR
    # Each half and the fusion filtered by the principal's own ACL.
    assert (
        dense["filter"]
        == sparse["filter"]
        == hybrid["filter"]
        == acl_filter(READER).model_dump(mode="json", exclude_none=True)
    )
    # A sparse search walks no graph: no parameters, and no share asked (the hybrid search's two counts only).
    assert "params" not in sparse_only and sparse_only["using"] == SPARSE_VECTOR
    assert len(server.sent("POST", f"/collections/{COLLECTION}/points/count")) == 2


def test_the_collection_total_is_counted_again_only_after_a_while(server: StandIn, tmp_path: Path) -> None:
    server.add_existing(COLLECTION, DIM)
    server.points, server.admitted = 1000, 250
    index = _index(server, tmp_path)
    try:
        for _ in range(3):
            index.search(READER, VECTOR, 5)
        counts = server.sent("POST", f"/collections/{COLLECTION}/points/count")
        assert [("filter" in body) for body in counts] == [True, False, True, True]
        # A collection that grew: once the total is older than its time to live, a search counts it again.
        server.points = 100_000
        assert isinstance(index, QdrantIndex)
        index._total = (time.monotonic() - qdrant_index._TOTAL_TTL_S - 1, 1000)
        index.search(READER, VECTOR, 5)
        last_query = server.sent("POST", f"/collections/{COLLECTION}/points/query")[-1]
        assert "acorn" not in last_query["params"]  # 250 of 100,000: the default search
    finally:
        index.close()


def test_a_failed_share_estimate_fails_the_search_before_it_is_sent(server: StandIn, tmp_path: Path) -> None:
    server.add_existing(COLLECTION, DIM)
    server.admitted = None
    index = _index(server, tmp_path)
    try:
        with pytest.raises(Unavailable, match="vector index is unavailable"):
            index.search(READER, VECTOR, 5)
    finally:
        index.close()
    assert server.sent("POST", f"/collections/{COLLECTION}/points/query") == []
