"""Ingestion benchmark: dbpedia passages uploaded through the real HTTP API to a running `tessera serve`, and the
encode-only throughput of the same model on the same texts, as the reference.

What is measured, and why (after one warm-up document, outside the timed run: `_warm_up`):
- wall time from the first upload to the last document final (ready or failed), the server's own timestamp on
  that document's `document.ingested` audit record: what a user waits for a batch of documents. It gives
  documents/s, chunks/s and MB/s of source bytes. Uploads run on a few client threads, so that the upload
  rate does not cap what the server can ingest;
- the seconds each document spent in each stage (parse, chunk, embed, index), summed from the audit records,
  and each stage's share: where the time goes. With several documents in flight (worker concurrency > 1) the
  stages of different documents overlap, so their sum exceeds the wall time; `embed` includes the wait for a
  model batch shared with other documents;
- the encode-only reference: the chunk texts the server stored, encoded in this process with the same model,
  backend and batch size while the server is stopped. Ingest chunks/s divided by encode-only texts/s says how
  much of the model's throughput the pipeline delivers (the issue's target: at least 0.85).

Completion is followed on the audit log (one record per finished document, read as a tenant admin): one cheap
request per poll, instead of one per document. At the end the registry is listed once, to check the chunk
counts against it.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from core.settings import Settings
from evals.datasets import Passage

STAGES = ("parse", "chunk", "embed", "index")
INGESTED_ACTION = "document.ingested"
_POLL_S = 0.5
_AUDIT_PAGE = 1000
_LIST_PAGE = 200
_HTTP_TIMEOUT_S = 120.0
_CURSOR_MARGIN = timedelta(seconds=5)
_WARM_UP_NAME = "bench-warm-up.txt"
# The paragraph is longer than a chunk, so that its chunking loads the sentence tokenizer too (see _warm_up).
_WARM_UP_TEXT = (
    "Warming up\n\nThe benchmark's warm-up document, uploaded at {at}, readable by its owner only.\n\n"
    + "Its chunking splits this paragraph at sentence boundaries, which loads the sentence tokenizer. " * 40
    + "\n"
)


class IngestBenchError(RuntimeError):
    """The ingestion benchmark could not complete (the server refused or never finished)."""


@dataclass(frozen=True)
class BenchDocument:
    """Passages as uploaded: `<first id>.txt` holding each passage's title, a blank line and its text, the passages
    separated by blank lines."""

    passage_ids: tuple[str, ...]
    file_name: str
    content: bytes
    groups: tuple[str, ...]


def file_name_for(passage_id: str, taken: set[str]) -> str:
    """`<id>.txt` with the id reduced to characters safe in a file name, unique among `taken` (updated)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", passage_id.removeprefix("<dbpedia:").removesuffix(">")).strip("._")
    stem = stem[:150] or "passage"
    name, n = f"{stem}.txt", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.txt"
    taken.add(name)
    return name


def bench_documents(
    passages: Sequence[Passage], group_of: Sequence[Sequence[str]], passages_per_document: int = 1
) -> list[BenchDocument]:
    """The passages as documents of `passages_per_document` consecutive passages each (the last may hold fewer);
    document i is shared with the groups `group_of[i % len(group_of)]`."""
    if passages_per_document < 1:
        raise ValueError("passages_per_document must be at least 1")
    taken: set[str] = set()
    batches = [passages[i : i + passages_per_document] for i in range(0, len(passages), passages_per_document)]
    return [
        BenchDocument(
            passage_ids=tuple(p.id for p in batch),
            file_name=file_name_for(batch[0].id, taken),
            content="\n\n".join(p.document_text for p in batch).encode("utf-8"),
            groups=tuple(group_of[i % len(group_of)]),
        )
        for i, batch in enumerate(batches)
    ]


@dataclass
class _Uploads:
    accepted: list[str]  # document ids, in upload order
    duplicates: int
    refused: list[str]
    finished_s: float


def _upload_all(client: httpx.Client, documents: Sequence[BenchDocument], concurrency: int) -> _Uploads:
    accepted: list[tuple[int, str]] = []
    refused: list[str] = []
    duplicates = 0
    lock = threading.Lock()

    def upload(position: int, document: BenchDocument) -> None:
        nonlocal duplicates
        acl = json.dumps({"users": [], "groups": list(document.groups)})
        response = client.post(
            "/v1/documents", files={"file": (document.file_name, document.content)}, data={"acl": acl}
        )
        with lock:
            if response.status_code == 202:
                accepted.append((position, response.json()["id"]))
            elif response.status_code == 200:  # the same bytes already uploaded: nothing is ingested
                duplicates += 1
            else:
                refused.append(f"{document.file_name}: HTTP {response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-upload") as pool:
        for future in [pool.submit(upload, i, d) for i, d in enumerate(documents)]:
            future.result()
    return _Uploads([doc_id for _, doc_id in sorted(accepted)], duplicates, refused, time.perf_counter() - started)


def _ingested_since(admin: httpx.Client, since: str) -> list[dict[str, Any]]:
    """Every `document.ingested` audit record at or after `since` (ISO time), all pages."""
    records: list[dict[str, Any]] = []
    params: dict[str, Any] = {"action": INGESTED_ACTION, "since": since, "limit": _AUDIT_PAGE}
    while True:
        response = admin.get("/v1/audit", params=params)
        if response.status_code != 200:
            raise IngestBenchError(f"reading the audit log failed: HTTP {response.status_code} {response.text[:300]}")
        page = response.json()
        records.extend(page["records"])
        if page["next_before_id"] is None:
            return records
        params["before_id"] = page["next_before_id"]


def _wait_for_final(
    admin: httpx.Client, document_ids: Sequence[str], since: datetime, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Poll the audit log until every document has its `document.ingested` record; returns them by document.
    Each poll asks only for the records from a few seconds before the newest one seen: a record is stamped before
    it commits, so one stamped earlier may appear after a later one (concurrent workers)."""
    wanted = set(document_ids)
    final: dict[str, dict[str, Any]] = {}
    cursor = since
    deadline = time.monotonic() + timeout_s
    while True:
        for record in _ingested_since(admin, (cursor - _CURSOR_MARGIN).isoformat()):
            if record["target"] in wanted and record["target"] not in final:
                final[record["target"]] = record
                cursor = max(cursor, _parse_time(record["at"]))
        if len(final) == len(wanted):
            return final
        if time.monotonic() > deadline:
            raise IngestBenchError(f"{len(wanted) - len(final)} documents not final after {timeout_s:.0f}s")
        time.sleep(_POLL_S)


def _warm_up(admin: httpx.Client, timeout_s: float) -> float:
    """Ingest one short document of the admin's own, outside the timed run, and wait until it is final; the
    seconds that took. The server answers before its ingestion path is warm: the parse sandbox's fork server
    loads the parser in the background (ingest/sandbox.py), 2-4 s on two cores beside the server's own start,
    and the first documents wait for it; a thread loads the chunker's sentence tokenizer (nltk, through
    llama-index: 2-4 s holding the GIL), which the document's long paragraph waits for. The timed run then
    measures a warm server; its uploader's own parse children still start in it, as a new owner's do."""
    since = datetime.now(UTC)
    started = time.perf_counter()
    response = admin.post(
        "/v1/documents",
        files={"file": (_WARM_UP_NAME, _WARM_UP_TEXT.format(at=since.isoformat()).encode("utf-8"))},
        data={"acl": json.dumps({"users": [], "groups": []})},
    )
    if response.status_code != 202:
        raise IngestBenchError(f"the warm-up upload failed: HTTP {response.status_code} {response.text[:300]}")
    document_id = response.json()["id"]
    record = _wait_for_final(admin, [document_id], since, timeout_s)[document_id]
    if record["outcome"] != "ready":
        raise IngestBenchError(f"the warm-up document did not become ready: {record['detail']}")
    return time.perf_counter() - started


def registry_counts(client: httpx.Client) -> dict[str, int]:
    """Documents by status and the ready documents' chunks, as the registry lists them to the caller."""
    counts: dict[str, int] = {"chunks": 0}
    params: dict[str, Any] = {"limit": _LIST_PAGE}
    while True:
        response = client.get("/v1/documents", params=params)
        if response.status_code != 200:
            raise IngestBenchError(f"listing documents failed: HTTP {response.status_code} {response.text[:300]}")
        page = response.json()
        for document in page["documents"]:
            counts[document["status"]] = counts.get(document["status"], 0) + 1
            if document["status"] == "ready":
                counts["chunks"] += int(document["chunk_count"])
        if page["next_cursor"] is None:
            return counts
        params["cursor"] = page["next_cursor"]


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def stage_summary(details: Sequence[dict[str, Any]], chunks: int) -> dict[str, dict[str, float]]:
    """Per stage: seconds summed over the documents, share of the four stages' total, milliseconds per chunk."""
    seconds = {stage: sum(float((d.get("stages") or {}).get(stage, 0.0)) for d in details) for stage in STAGES}
    total = sum(seconds.values())
    return {
        stage: {
            "seconds": round(spent, 3),
            "share": round(spent / total, 4) if total else 0.0,
            "ms_per_chunk": round(1000 * spent / chunks, 3) if chunks else 0.0,
        }
        for stage, spent in seconds.items()
    }


def run_ingest(
    base_url: str,
    documents: Sequence[BenchDocument],
    *,
    uploader_token: str,
    admin_token: str,
    upload_concurrency: int = 4,
    timeout_s: float = 3600.0,
) -> tuple[dict[str, Any], list[str]]:
    """After a warm-up document (_warm_up), upload `documents`, wait until each is final, and return the figures
    and the accepted document ids (in upload order). Nothing else may be uploading to the server meanwhile."""
    limits = httpx.Limits(max_connections=upload_concurrency + 2, max_keepalive_connections=upload_concurrency + 2)
    uploader = httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {uploader_token}"}, timeout=_HTTP_TIMEOUT_S, limits=limits
    )
    admin = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=_HTTP_TIMEOUT_S)
    with uploader, admin:
        warm_up_s = _warm_up(admin, timeout_s)
        since = datetime.now(UTC)
        started = since.timestamp()
        uploads = _upload_all(uploader, documents, upload_concurrency)
        final = _wait_for_final(admin, uploads.accepted, since, timeout_s)
        observed_s = time.time() - started
        registry = registry_counts(uploader)
    records = list(final.values())
    ready = [r for r in records if r["outcome"] == "ready"]
    chunks = sum(int(r["detail"].get("chunks", 0)) for r in ready)
    source_bytes = sum(len(d.content) for d in documents)
    # The server's timestamp on the last final record; polling would add up to one interval.
    wall_s = max((_parse_time(r["at"]).timestamp() for r in records), default=started) - started
    doc_seconds = sorted(float(r["detail"].get("seconds", 0.0)) for r in ready)
    figures: dict[str, Any] = {
        "documents": len(documents),
        "passages": sum(len(d.passage_ids) for d in documents),
        "accepted": len(uploads.accepted),
        "duplicates": uploads.duplicates,
        "refused": len(uploads.refused),
        "refused_examples": uploads.refused[:5],
        "ready": len(ready),
        "failed": len(records) - len(ready),
        "failed_examples": [f"{r['target']}: {r['detail'].get('reason')}" for r in records if r["outcome"] != "ready"][
            :5
        ],
        "chunks": chunks,
        "registry": registry,
        "source_bytes": source_bytes,
        "source_mb": round(source_bytes / 1e6, 3),
        "upload_concurrency": upload_concurrency,
        "warm_up_s": round(warm_up_s, 3),
        "upload_s": round(uploads.finished_s, 3),
        "wall_s": round(wall_s, 3),
        "observed_s": round(observed_s, 3),
        "docs_per_s": round(len(records) / wall_s, 2) if wall_s > 0 else 0.0,
        "chunks_per_s": round(chunks / wall_s, 2) if wall_s > 0 else 0.0,
        "mb_per_s": round(source_bytes / 1e6 / wall_s, 4) if wall_s > 0 else 0.0,
        "stages": stage_summary([r["detail"] for r in ready], chunks),
        "document_seconds_p50": round(doc_seconds[len(doc_seconds) // 2], 3) if doc_seconds else 0.0,
        "document_seconds_max": round(doc_seconds[-1], 3) if doc_seconds else 0.0,
    }
    return figures, uploads.accepted


# --- the encode-only reference -------------------------------------------------------------------------------


def chunk_texts_from_edge(settings: Settings, document_order: Sequence[str]) -> list[str]:
    """The live chunk texts the server stored in its Edge index, in upload order then chunk order. Read with the
    server stopped: one process holds an Edge directory."""
    import qdrant_edge as edge

    from retrieval.acl_filter import CHUNK_INDEX_FIELD, DOCUMENT_FIELD, LIVE, LIVE_FIELD
    from retrieval.edge_index import EdgeIndex

    position = {document_id: i for i, document_id in enumerate(document_order)}
    rows: list[tuple[int, int, str]] = []
    index = EdgeIndex(settings.edge_path)
    try:
        offset = None
        fields = ["text", DOCUMENT_FIELD, CHUNK_INDEX_FIELD, LIVE_FIELD]
        while True:
            request = edge.ScrollRequest(offset=offset, limit=1024, with_payload=fields, with_vector=False)
            records, offset = index.shard.scroll(request)
            for record in records:
                payload = record.payload or {}
                if payload.get(LIVE_FIELD) == LIVE and payload.get(DOCUMENT_FIELD) in position:
                    rows.append(
                        (position[payload[DOCUMENT_FIELD]], int(payload[CHUNK_INDEX_FIELD]), str(payload["text"]))
                    )
            if offset is None:
                break
    finally:
        index.close()
    return [text for _, _, text in sorted(rows)]


def chunk_texts_by_pipeline(settings: Settings, documents: Sequence[BenchDocument]) -> list[str]:
    """The chunk texts made again with the pipeline's own parser and chunker (for engines other than Edge, whose
    stored payloads this process cannot read directly). Slower: ~10 ms per document to parse."""
    from unstructured.file_utils.model import FileType

    from core.assets import load_encoding
    from ingest.chunk import Chunker
    from ingest.parse import parse, parse_limits

    limits = parse_limits(settings)
    chunker = Chunker(load_encoding(), settings.chunk_tokens, settings.chunk_overlap_tokens)
    texts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-chunks-") as tmp:
        for document in documents:
            path = Path(tmp) / document.file_name
            path.write_bytes(document.content)
            texts.extend(chunk.text for chunk in chunker.chunk(parse(path, FileType.TXT, document.file_name, limits)))
            path.unlink()
    return texts


def encode_only(
    settings: Settings, texts: Sequence[str], *, min_seconds: float = 10.0, max_passes: int = 5
) -> dict[str, Any]:
    """Encode `texts` with the server's model, backend and batch size, one batch of `embed_batch_size` after
    another, in this process, after loading the model and one untimed batch. Passes over all the texts are
    repeated until `min_seconds` were spent (at most `max_passes`): one pass over a small set is noise. Returns
    texts/s over all the passes, and each pass's rate."""
    from core.embedding import Embedder

    embedder = Embedder(
        batch_size=settings.embed_batch_size, backend=settings.embed_backend, model_cache_dir=settings.model_dir
    )
    size = settings.embed_batch_size
    embedder.encode(list(texts[:size]) or ["warm up"])
    rates: list[float] = []
    seconds = 0.0
    while texts and len(rates) < max_passes and (not rates or seconds < min_seconds):
        started = time.perf_counter()
        for start in range(0, len(texts), size):
            embedder.encode(list(texts[start : start + size]))
        spent = time.perf_counter() - started
        seconds += spent
        rates.append(round(len(texts) / spent, 2))
    encoded = len(texts) * len(rates)
    return {
        "texts": len(texts),
        "passes": len(rates),
        "seconds": round(seconds, 3),
        "texts_per_s": round(encoded / seconds, 2) if seconds > 0 else 0.0,
        "pass_texts_per_s": rates,
        "batch_size": size,
        "backend": embedder.backend,
        "device": embedder.device,
    }
