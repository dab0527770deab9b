"""Index scale benchmark: ACL-filtered search on Qdrant Edge at 100k and 200k chunks.

What is measured, and why:
- the latency of `EdgeIndex.search`, the adapter call the query API makes (ACL filter built from the principal,
  payload returned, newest-version pass), timed per call with perf_counter. It is measured for principals whose
  ACL admits 0.5% to 100% of the chunks, because a filtered search changes strategy with selectivity: the engine
  scans the admitted points when they are few and walks the HNSW graph, skipping the others, when they are many;
- recall@10 of each search against the exact filtered top 10, computed with numpy over the vectors the engine
  stored, among the points the principal may read: what the approximate index loses, ACL filter included;
- leaks: every returned point is checked against the principal's tokens (must be zero).

The corpus is dbpedia (about 5,000 passages) embedded once with the project's model and cached, replicated to
the requested size with distinct document ids and perturbed vectors (see `replicate`). Every figure
is returned with the machine, the engine version and the settings it was measured with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as edge

import retrieval.edge_index as edge_index_module
from core.access import DocumentAcl, Principal
from core.assets import MINILM
from core.embedding import Embedder
from core.records import Chunk, ChunkPoint
from core.timing import timed
from evals.bench.machine import machine_record
from evals.datasets import load_beir
from evals.metrics import fidelity_at_k, latency_summary
from retrieval.acl_filter import ACL_FIELD, DOCUMENT_FIELD, LIVE, LIVE_FIELD, TENANT_FIELD
from retrieval.edge_index import EdgeIndex

DATASET = "dbpedia"
DEFAULT_DATASETS_DIR = Path("../shared/datasets")
DEFAULT_CACHE_DIR = Path("data/bench-cache")
CACHE_FORMAT = 1  # bump when what is cached changes

TENANT = "bench"
READER = "bench-reader"  # the subject of every benchmark principal; it owns no point
OWNERS = 64  # owners spread over the points, so ACL lists look like uploads (owner first, then groups)
SELECTIVITIES: tuple[float, ...] = (0.005, 0.01, 0.05, 0.10, 0.25, 0.50, 1.0)
BUCKETS = 1000  # ACL buckets: 0.5% is 5 buckets
SEED = 13
# Per-dimension standard deviation of the Gaussian noise added to each replica (see `replicate`).
NOISE_SIGMA = 0.045
# The same for the extra query vectors beyond the dataset's own queries: paraphrases (cosine about 0.93 with
# the query they come from), not new subjects (see `query_vectors`).
QUERY_NOISE_SIGMA = 0.02
WARMUP_QUERIES = 5
_BUILD_BATCH = 4096
_DENSE_VECTOR = ""  # Edge's name for the unnamed vector, the embedding model's


# --- the embedded corpus -------------------------------------------------------------------------------------


def _cache_key(dataset_dir: Path) -> str:
    """The corpus and query files (size, mtime) and the model's pinned digest: any change embeds again."""
    parts = [f"format={CACHE_FORMAT}", f"model={MINILM.sha256}"]
    for name in ("corpus.jsonl", "queries.jsonl"):
        stat = (dataset_dir / name).stat()
        parts.append(f"{name}={stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _save_array(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as handle:
        np.save(handle, array)
    partial.replace(path)


def embedded_corpus(cache_dir: Path, datasets_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """dbpedia's passage texts (title and text, as uploaded), their vectors and the query vectors.

    Embedded once with core.embedding.Embedder on the CPU and cached as .npy under `cache_dir`, keyed by the
    dataset files' size and mtime and the model's digest; later calls load the cache. Rows follow the corpus file;
    the queries are the dataset's judged ones (evals.datasets.load_beir)."""
    dataset = load_beir(datasets_dir / DATASET)
    texts = [passage.document_text for passage in dataset.passages.values()]
    queries = list(dataset.queries.values())
    key = _cache_key(dataset.path)
    passages_file = cache_dir / f"{DATASET}-{key}-passages.npy"
    queries_file = cache_dir / f"{DATASET}-{key}-queries.npy"
    if passages_file.is_file() and queries_file.is_file():
        passage_vectors, query_vectors = np.load(passages_file), np.load(queries_file)
        if len(passage_vectors) == len(texts) and len(query_vectors) == len(queries):
            return texts, passage_vectors, query_vectors
    model = Embedder(device="cpu")  # the same vectors on every machine (a GPU would encode in half precision)
    passage_vectors, query_vectors = model.encode(texts), model.encode(queries)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save_array(passages_file, passage_vectors)
    _save_array(queries_file, query_vectors)
    return texts, passage_vectors, query_vectors


# --- replication and the ACL layout --------------------------------------------------------------------------


def group_name(selectivity: float) -> str:
    """The group that admits `selectivity` of the chunks: "all", or e.g. "sel-0.5pct"."""
    return "all" if selectivity >= 1 else f"sel-{selectivity * 100:g}pct"


def principal_for(selectivity: float, tenant: str = TENANT) -> Principal:
    """A reader whose only tokens are its own user (which owns nothing) and the group of `selectivity`."""
    return Principal.of(tenant, READER, [group_name(selectivity)])


def _bucket_limit(selectivity: float) -> int:
    return round(selectivity * BUCKETS)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def perturbed(vectors: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Each row plus Gaussian noise of standard deviation `sigma` per dimension, re-normalized to unit length."""
    noise = rng.standard_normal(vectors.shape, dtype=np.float32) * np.float32(sigma)
    return _unit_rows(vectors + noise)


@dataclass(frozen=True)
class ReplicatedCorpus:
    """`n` chunks made from the base passages: point j is replica j // P of passage j % P (P passages).

    Every point's vector is its passage's, perturbed (see `replicate`). Each point is its own
    document (id: j as 32 hex digits, one chunk, version 1). ACL: the point's owner (one of OWNERS users) and
    every selectivity group whose bucket range holds the point's bucket; the groups are nested, so the group
    of selectivity s admits the points of buckets [0, s * BUCKETS), i.e. s of the chunks."""

    texts: list[str]
    vectors: np.ndarray  # (n, dimension) float32, unit rows
    buckets: np.ndarray  # (n,) ACL bucket of each point, a seeded permutation: exact fractions

    @property
    def n(self) -> int:
        return len(self.vectors)

    def text(self, j: int) -> str:
        return self.texts[j % len(self.texts)]

    @staticmethod
    def document_id(j: int) -> str:
        return f"{j:032x}"

    def acl_tokens(self, j: int) -> tuple[str, ...]:
        bucket = int(self.buckets[j])
        groups = tuple(group_name(s) for s in SELECTIVITIES if bucket < _bucket_limit(s))
        return tuple(DocumentAcl(groups=groups).tokens(f"owner-{j % OWNERS}"))

    def chunk_point(self, j: int, tenant: str) -> ChunkPoint:
        text = self.text(j)
        return ChunkPoint(
            tenant=tenant,
            document_id=self.document_id(j),
            version=1,
            file_name=f"bench-{j}.txt",
            acl_tokens=self.acl_tokens(j),
            chunk=Chunk(index=0, text=text, page=None, section=None, token_count=len(text.split())),
            vector=tuple(self.vectors[j].tolist()),
        )


def replicate(
    texts: list[str], vectors: np.ndarray, n_chunks: int, *, sigma: float = NOISE_SIGMA, seed: int = SEED
) -> ReplicatedCorpus:
    """Reach `n_chunks` points from the base passages with distinct ids and distinct vectors: point j is passage
    j % P plus Gaussian noise (seeded), re-normalized. Every point is perturbed, replica 0 included, so no point is
    privileged by being an exact original.

    Noise: sigma = 0.045 per dimension on 384-dimensional unit vectors is a noise vector of norm about 0.88, so a
    replica keeps a cosine of about 0.75 with its passage and about 0.56 with another replica of the same passage.
    0.56 is where a passage's nearest other passage lies in dbpedia itself (nearest-neighbour cosine: median 0.54,
    quartiles 0.45 and 0.65), so a replica reads as "another passage on the same subject", and the neighbourhoods
    grow denser with scale as in a larger real corpus. Less noise makes tight clusters of near-copies that no real
    corpus has (at sigma 0.02, siblings at cosine 0.87, beyond dbpedia's 90th percentile, 0.76); no noise makes
    exact duplicates, whose ties leave recall ill-defined and give HNSW a degenerate graph of zero-length links."""
    if n_chunks < 1:
        raise ValueError("n_chunks must be at least 1")
    rng = np.random.default_rng(seed)
    base = _unit_rows(np.asarray(vectors, dtype=np.float32))
    rows = base[np.arange(n_chunks) % len(base)]
    for start in range(0, n_chunks, 65536):  # in blocks, to bound the noise's memory
        stop = min(n_chunks, start + 65536)
        rows[start:stop] = perturbed(rows[start:stop], sigma, rng)
    buckets = rng.permutation(n_chunks) * BUCKETS // n_chunks
    return ReplicatedCorpus(texts=texts, vectors=rows, buckets=buckets)


def query_vectors(base: np.ndarray, count: int, *, sigma: float = QUERY_NOISE_SIGMA, seed: int = SEED) -> np.ndarray:
    """`count` query vectors: the dataset's own queries first, then perturbed copies of them when more are asked
    than the dataset has, so no timed query repeats an earlier one exactly. Their noise is smaller than the
    replicas': a copy is a paraphrase of its query (cosine about 0.93), still as close to the corpus as a real
    query; at the replicas' sigma, copies land far from every passage (best cosine 0.45 against 0.56 for the real
    queries), a harder case than real traffic, which the dataset-query recall column would then not match."""
    rng = np.random.default_rng(seed + 1)
    rows = _unit_rows(np.asarray(base, dtype=np.float32))[np.arange(count) % len(base)]
    if count > len(base):
        rows[len(base) :] = perturbed(rows[len(base) :], sigma, rng)
    return rows


# --- building the index through the adapter ------------------------------------------------------------------


@dataclass(frozen=True)
class BuildStats:
    """How the index was built, and what the engine reports after it."""

    n_chunks: int
    upsert_s: float  # EdgeIndex.upsert of every chunk, not live yet (the adapter also computes BM25 terms)
    publish_s: float  # EdgeIndex.publish of every document, one call each, as ingestion does
    optimize_s: float  # EdgeShard.optimize: Edge builds HNSW only there, never on its own
    optimized: bool  # whether optimize had anything to do
    flush_s: float
    segments: int
    points: int
    indexed_vectors: int  # vectors in an index, as the engine counts them: dense (HNSW) and sparse (BM25) alike
    size_bytes: int  # allocated on disk
    apparent_bytes: int  # file sizes (the WAL preallocates 32 MiB files)
    segment_indexes: list[str]  # each segment's vector index config, from its segment.json
    reused: bool = False  # loaded from an earlier run with the same parameters instead of built


@dataclass
class BuiltIndex:
    """An open index, the corpus written into it and how it was built. The caller closes the index."""

    index: EdgeIndex
    corpus: ReplicatedCorpus
    stats: BuildStats


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file under `path`."""
    allocated = apparent = 0
    for file in path.rglob("*"):
        if file.is_file():
            stat = file.stat()
            allocated += stat.st_blocks * 512
            apparent += stat.st_size
    return allocated, apparent


def _segment_indexes(path: Path) -> list[str]:
    configs: list[str] = []
    for segment in sorted((path / "segments").glob("*/segment.json")):
        vector_data = json.loads(segment.read_text(encoding="utf-8"))["config"]["vector_data"]
        configs.extend(json.dumps(v.get("index"), sort_keys=True) for v in vector_data.values())
    return configs


def _upsert(index: EdgeIndex, corpus: ReplicatedCorpus, tenant: str) -> None:
    for start in range(0, corpus.n, _BUILD_BATCH):  # ChunkPoints hold Python floats: build them batch by batch
        index.upsert([corpus.chunk_point(j, tenant) for j in range(start, min(corpus.n, start + _BUILD_BATCH))])


def _publish(index: EdgeIndex, corpus: ReplicatedCorpus, tenant: str) -> None:
    for j in range(corpus.n):  # one call per document, as ingestion makes; the port has no bulk publish
        index.publish(tenant, corpus.document_id(j), 1, 1)


def build_index(
    path: Path,
    n_chunks: int,
    texts: list[str],
    vectors: np.ndarray,
    *,
    tenant: str = TENANT,
    sigma: float = NOISE_SIGMA,
    seed: int = SEED,
) -> BuiltIndex:
    """Write `n_chunks` replicated chunks into a new Edge index at `path` through the real adapter (ensure_ready,
    upsert, publish per document), then run the engine's optimizer so the HNSW index exists before anything is
    measured. Qdrant Edge has no background optimizer (qdrant-edge-py 0.9.0: nothing is indexed however long one
    waits after the writes); without this call the points stay in a plain segment that each search scans in full,
    about 100 ms a search at 200k chunks for a principal who reads everything. The optimizer holds the GIL for its
    whole run. Times each step and records the size on disk."""
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already holds an index; the benchmark builds into an empty directory")
    corpus = replicate(texts, vectors, n_chunks, sigma=sigma, seed=seed)
    index = EdgeIndex(path)
    index.ensure_ready(corpus.vectors.shape[1])
    seconds: dict[str, float] = {}
    with timed(seconds, "upsert"):
        _upsert(index, corpus, tenant)
    with timed(seconds, "publish"):
        _publish(index, corpus, tenant)
    with timed(seconds, "optimize"):
        optimized = index.optimize()
    with timed(seconds, "flush"):
        index.shard.flush()
    return BuiltIndex(index=index, corpus=corpus, stats=_stats(index, n_chunks, seconds, optimized))


def _stats(index: EdgeIndex, n_chunks: int, seconds: dict[str, float], optimized: bool) -> BuildStats:
    info = index.shard.info()
    allocated, apparent = disk_usage(index.path)
    return BuildStats(
        n_chunks=n_chunks,
        upsert_s=round(seconds["upsert"], 2),
        publish_s=round(seconds["publish"], 2),
        optimize_s=round(seconds["optimize"], 2),
        optimized=optimized,
        flush_s=round(seconds["flush"], 2),
        segments=info.segments_count,
        points=info.points_count,
        indexed_vectors=info.indexed_vectors_count,
        size_bytes=allocated,
        apparent_bytes=apparent,
        segment_indexes=_segment_indexes(index.path),
    )


# --- the exact reference -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPoints:
    """Every point as the engine stored it: what the exact reference is computed over."""

    document_ids: list[str]
    tenants: list[str]
    acl: list[frozenset[str]]
    live: np.ndarray  # (n,) bool
    vectors: np.ndarray  # (n, dimension) float32

    def admitted(self, principal: Principal) -> np.ndarray:
        """Which points the principal may read: the rule of acl_filter (and of Principal.may_read), applied here
        to the stored payloads: same tenant, a shared ACL token, live."""
        tokens = frozenset(principal.acl_tokens())
        may_read = [
            t == principal.tenant and not tokens.isdisjoint(a) for t, a in zip(self.tenants, self.acl, strict=True)
        ]
        mask: np.ndarray = np.asarray(may_read, dtype=bool) & self.live
        return mask


def stored_points(index: EdgeIndex, page: int = 2048) -> StoredPoints:
    """Scroll every point with its vector, page by page straight into numpy (EdgeIndex.vectors builds a tuple
    of Python floats per point, gigabytes at 200k chunks)."""
    ids: list[str] = []
    tenants: list[str] = []
    acl: list[frozenset[str]] = []
    live: list[bool] = []
    blocks: list[np.ndarray] = []
    offset = None
    fields = [DOCUMENT_FIELD, TENANT_FIELD, ACL_FIELD, LIVE_FIELD]
    while True:
        request = edge.ScrollRequest(offset=offset, limit=page, with_payload=fields, with_vector=[_DENSE_VECTOR])
        records, offset = index.shard.scroll(request)
        for record in records:
            payload = record.payload or {}
            ids.append(str(payload[DOCUMENT_FIELD]))
            tenants.append(str(payload[TENANT_FIELD]))
            acl.append(frozenset(payload[ACL_FIELD]))
            live.append(payload[LIVE_FIELD] == LIVE)
        blocks.append(np.asarray([_dense(record.vector) for record in records], dtype=np.float32))
        if offset is None:
            break
    return StoredPoints(ids, tenants, acl, np.asarray(live, dtype=bool), np.concatenate(blocks))


def _dense(vector: Any) -> Any:
    """The dense vector of a record: the unnamed one, alone or beside named ones (the BM25 sparse vector)."""
    return vector[_DENSE_VECTOR] if isinstance(vector, dict) else vector


def exact_top_k(
    points: StoredPoints, queries: np.ndarray, admitted: dict[float, np.ndarray], k: int, block: int = 32
) -> dict[float, list[list[str]]]:
    """For each selectivity, each query's exact top k (cosine: the stored vectors are unit length, so the dot
    product) among the admitted points, as document ids. Scores are computed once per query block."""
    candidates = {s: np.flatnonzero(mask) for s, mask in admitted.items()}
    top: dict[float, list[list[str]]] = {s: [] for s in admitted}
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ points.vectors.T
        for s, rows in candidates.items():
            for row_scores in scores[:, rows]:
                top[s].append([points.document_ids[rows[i]] for i in _best(row_scores, k)])
    return top


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    if len(scores) <= k:
        return np.argsort(-scores, kind="stable")
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


def _recalls(results: list[list[str]], exact: list[list[str]], k: int) -> list[float | None]:
    """recall@k of each query against the exact filtered top k (the suite's fidelity@k: the share of the exact
    top k the index returned in its own top k)."""
    return [fidelity_at_k(returned, truth, k) for returned, truth in zip(results, exact, strict=True)]


# --- measuring -----------------------------------------------------------------------------------------------


def timed_searches(
    index: EdgeIndex, principal: Principal, queries: np.ndarray, top_k: int, warmup: int = WARMUP_QUERIES
) -> tuple[list[float], list[list[str]]]:
    """Run every query through EdgeIndex.search after `warmup` untimed ones; (milliseconds, document ids) each."""
    for vector in queries[:warmup]:
        index.search(principal, vector.tolist(), top_k)
    latencies: list[float] = []
    results: list[list[str]] = []
    for vector in queries:
        as_list = vector.tolist()  # outside the timed call: the API hands the adapter a list too
        started = time.perf_counter()
        hits = index.search(principal, as_list, top_k)
        latencies.append((time.perf_counter() - started) * 1000)
        results.append([hit.document_id for hit in hits])
    return latencies, results


def _selectivity_row(
    selectivity: float,
    admitted: np.ndarray,
    allowed_ids: set[str],
    runs: list[tuple[list[float], list[list[str]]]],
    exact: list[list[str]],
    top_k: int,
    dataset_queries: int,
) -> dict[str, Any]:
    """One row of the report: latency per run (median over runs quoted), recall@k and leaks over every run, and
    recall@k over the dataset's own queries alone (the first `dataset_queries`)."""
    summaries = [latency_summary(latencies) for latencies, _ in runs]
    per_query = [_recalls(results, exact, top_k) for _, results in runs]
    scored = [r for recalls in per_query for r in recalls if r is not None]
    scored_dataset = [r for recalls in per_query for r in recalls[:dataset_queries] if r is not None]
    leaks = sum(1 for _, results in runs for returned in results for doc in returned if doc not in allowed_ids)
    return {
        "selectivity": selectivity,
        "group": group_name(selectivity),
        "admitted": int(admitted.sum()),
        "fraction": float(admitted.mean()),
        **{f"{p}_ms": float(np.median([s[p] for s in summaries])) for p in ("p50", "p95", "p99", "mean")},
        "p95_ms_runs": [round(s["p95"], 3) for s in summaries],
        f"recall@{top_k}": float(np.mean(scored)) if scored else None,
        f"min_recall@{top_k}": float(np.min(scored)) if scored else None,
        f"recall@{top_k}_dataset_queries": float(np.mean(scored_dataset)) if scored_dataset else None,
        "short_results": sum(1 for _, results in runs for returned in results if len(returned) < top_k),
        "leaks": leaks,
    }


# --- one scale run -------------------------------------------------------------------------------------------


def _manifest(n_chunks: int, passages: np.ndarray, tenant: str, sigma: float, seed: int) -> dict[str, Any]:
    """What an index was built from: the corpus, the replication, the adapter's code and the engine version (an
    index written by another adapter, say without the sparse vectors, is not the one to measure)."""
    return {
        "format": CACHE_FORMAT,
        "n_chunks": n_chunks,
        "tenant": tenant,
        "sigma": sigma,
        "seed": seed,
        "passages": hashlib.sha256(np.ascontiguousarray(passages).tobytes()).hexdigest()[:16],
        "adapter": hashlib.sha256(Path(edge_index_module.__file__).read_bytes()).hexdigest()[:16],
        "qdrant_edge": version("qdrant-edge-py"),
    }


def open_or_build(
    path: Path, n_chunks: int, texts: list[str], vectors: np.ndarray, *, tenant: str, sigma: float, seed: int
) -> BuiltIndex:
    """Load the index an earlier run built at `path` with the same parameters (its manifest beside it says so),
    or build it: at 200k chunks the build takes minutes, and a noisy measurement is worth repeating."""
    manifest_file = path.with_name(path.name + ".json")
    wanted = _manifest(n_chunks, vectors, tenant, sigma, seed)
    if manifest_file.is_file() and path.is_dir():
        saved = json.loads(manifest_file.read_text(encoding="utf-8"))
        if saved["params"] != wanted:
            raise FileExistsError(
                f"{path} holds an index built from other parameters, another adapter or engine version "
                f"(see {manifest_file}); remove both or choose another data directory"
            )
        stats = BuildStats(**{**saved["stats"], "reused": True})
        corpus = replicate(texts, vectors, n_chunks, sigma=sigma, seed=seed)
        return BuiltIndex(index=EdgeIndex(path), corpus=corpus, stats=stats)
    built = build_index(path, n_chunks, texts, vectors, tenant=tenant, sigma=sigma, seed=seed)
    manifest_file.write_text(json.dumps({"params": wanted, "stats": asdict(built.stats)}, indent=1), encoding="utf-8")
    return built


@contextmanager
def _workspace(data_dir: Path | None) -> Iterator[Path]:
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        yield data_dir
        return
    with tempfile.TemporaryDirectory(prefix="tessera-scale-") as tmp:
        yield Path(tmp)


def run_scale(
    n_chunks: int,
    queries: int = 200,
    top_k: int = 10,
    *,
    repeats: int = 1,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    datasets_dir: Path = DEFAULT_DATASETS_DIR,
    data_dir: Path | None = None,
    corpus: tuple[list[str], np.ndarray, np.ndarray] | None = None,
    selectivities: Sequence[float] = SELECTIVITIES,
    tenant: str = TENANT,
    sigma: float = NOISE_SIGMA,
    seed: int = SEED,
) -> dict[str, Any]:
    """Build (or reuse) an index of `n_chunks`, then for each selectivity run `queries` query vectors through
    EdgeIndex.search `repeats` times: latency percentiles (the median over repeats), recall@top_k against the
    exact filtered top k, the fraction of chunks the principal may read, and leaks. `corpus` replaces the cached
    dbpedia embedding (texts, passage vectors, query vectors). `data_dir` None: a temporary directory, removed.
    Prints nothing."""
    started = datetime.now(UTC)
    machine = machine_record()  # before the build: the load average the run started under
    texts, passages, base_queries = corpus if corpus is not None else embedded_corpus(cache_dir, datasets_dir)
    with _workspace(data_dir) as root:
        built = open_or_build(
            root / f"scale-{n_chunks}", n_chunks, texts, passages, tenant=tenant, sigma=sigma, seed=seed
        )
        try:
            vectors = query_vectors(base_queries, queries, seed=seed)
            rows = _measure(
                built.index, vectors, min(queries, len(base_queries)), selectivities, tenant, top_k, repeats
            )
        finally:
            built.index.close()
    return {
        "benchmark": "index-scale",
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": {**machine, "numpy": np.__version__, "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {
            "dataset": DATASET,
            "base_passages": len(texts),
            "n_chunks": n_chunks,
            "queries": queries,
            "dataset_queries": len(base_queries),
            "top_k": top_k,
            "repeats": repeats,
            "warmup_queries": WARMUP_QUERIES,
            "noise_sigma": sigma,
            "query_noise_sigma": QUERY_NOISE_SIGMA,
            "seed": seed,
            "search": "EdgeIndex.search as served: no SearchParams (engine default hnsw_ef), with_payload",
            "index_path": str(built.index.path) if data_dir is not None else None,
        },
        "build": asdict(built.stats),
        "rows": rows,
    }


def _measure(
    index: EdgeIndex,
    queries: np.ndarray,
    dataset_queries: int,
    selectivities: Sequence[float],
    tenant: str,
    top_k: int,
    repeats: int,
) -> list[dict[str, Any]]:
    points = stored_points(index)
    principals = {s: principal_for(s, tenant) for s in selectivities}
    admitted = {s: points.admitted(p) for s, p in principals.items()}
    exact = exact_top_k(points, queries, admitted, top_k)
    runs: dict[float, list[tuple[list[float], list[list[str]]]]] = {s: [] for s in selectivities}
    for _ in range(repeats):  # selectivities interleaved per repeat, so a burst of load spreads over all of them
        for s, principal in principals.items():
            runs[s].append(timed_searches(index, principal, queries, top_k))
    rows = []
    for s in selectivities:
        allowed_ids = {points.document_ids[i] for i in np.flatnonzero(admitted[s])}
        rows.append(_selectivity_row(s, admitted[s], allowed_ids, runs[s], exact[s], top_k, dataset_queries))
    return rows


# --- seeding a served data directory -------------------------------------------------------------------------


@dataclass(frozen=True)
class SeededReader:
    """Who to mint a token for to query a seeded data directory at one selectivity."""

    tenant: str
    subject: str
    groups: tuple[str, ...]
    selectivity: float
    admitted: int  # chunks this reader may read

    def principal(self) -> Principal:
        return Principal.of(self.tenant, self.subject, self.groups)


def seed_query_data_dir(
    data_dir: Path,
    n_chunks: int,
    tenant: str = TENANT,
    *,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    datasets_dir: Path = DEFAULT_DATASETS_DIR,
    corpus: tuple[list[str], np.ndarray, np.ndarray] | None = None,
    sigma: float = NOISE_SIGMA,
    seed: int = SEED,
) -> dict[str, SeededReader]:
    """Build the replicated index at data_dir/"edge" (Settings.edge_path), payload text the passage text, so that
    `tessera serve` on `data_dir` answers /v1/query from it (its registry stays empty: search reads only the
    index). Returns a reader per selectivity label ("0.5%" ... "100%") for a load generator to mint tokens for.
    The index is closed on return: one process holds an Edge directory."""
    texts, passages, _ = corpus if corpus is not None else embedded_corpus(cache_dir, datasets_dir)
    built = build_index(data_dir / "edge", n_chunks, texts, passages, tenant=tenant, sigma=sigma, seed=seed)
    try:
        points = stored_points(built.index)
    finally:
        built.index.close()
    readers = {}
    for s in SELECTIVITIES:
        principal = principal_for(s, tenant)
        admitted = int(points.admitted(principal).sum())
        readers[f"{s * 100:g}%"] = SeededReader(tenant, READER, tuple(sorted(principal.groups)), s, admitted)
    return readers


# --- command line --------------------------------------------------------------------------------------------


def _figure(value: float | None, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def format_table(result: dict[str, Any]) -> str:
    """The figures of one run as a text table, the build and machine above it."""
    build, machine, settings = result["build"], result["machine"], result["settings"]
    top_k = settings["top_k"]
    hnsw_segments = sum('"hnsw"' in config for config in build["segment_indexes"])
    lines = [
        f"{settings['n_chunks']:,} chunks ({settings['base_passages']:,} {settings['dataset']} passages replicated, "
        f"noise sigma {settings['noise_sigma']}), {settings['queries']} queries x {settings['repeats']} repeats, "
        f"top {top_k}",
        f"machine: {machine['cpu_count']} CPUs {machine['cpu_model']}, load {machine['load_average']} -> "
        f"{machine['load_average_after']}, qdrant-edge {machine['qdrant_edge']}",
        f"build{' (reused)' if build['reused'] else ''}: upsert {build['upsert_s']} s, publish {build['publish_s']} s, "
        f"optimize {build['optimize_s']} s; {build['points']:,} points in {build['segments']} segments "
        f"({hnsw_segments} HNSW), {build['indexed_vectors']:,} vectors indexed, "
        f"{build['size_bytes'] / 2**20:,.0f} MiB on disk",
        f"{'admits':>7} {'points':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {f'recall@{top_k}':>9} "
        f"{'dataset q':>9} {'min':>5} {'leaks':>5}",
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['fraction'] * 100:6.2f}% {row['admitted']:8,} {row['p50_ms']:7.2f} {row['p95_ms']:7.2f} "
            f"{row['p99_ms']:7.2f} {_figure(row[f'recall@{top_k}'], 9, 4)} "
            f"{_figure(row[f'recall@{top_k}_dataset_queries'], 9, 4)} {_figure(row[f'min_recall@{top_k}'], 5, 2)} "
            f"{row['leaks']:5}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--datasets-dir", type=Path, default=DEFAULT_DATASETS_DIR)
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the indexes here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write every run's record here")
    args = parser.parse_args(argv)
    results = []
    for n_chunks in args.chunks:
        result = run_scale(
            n_chunks,
            args.queries,
            args.top_k,
            repeats=args.repeats,
            cache_dir=args.cache_dir,
            datasets_dir=args.datasets_dir,
            data_dir=args.data_dir,
        )
        results.append(result)
        print(format_table(result), end="\n\n", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
