"""Measure the embedded default end to end over real HTTP: time to ingest a folder of documents, then
the latency of N sequential queries. Prints a table and a JSON line.

    .venv/bin/python scripts/measure_embedded.py [--docs ../shared/docs] [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from api.background import serving
from api.client import ClientError, TesseraClient
from core.settings import load_settings

QUESTIONS = (
    "Who won the most Stanley Cups?",
    "What did Anna Pavlovna say to Prince Vasili?",
    "What are the duties of a standing trustee?",
    "How is layout detection done in LayoutParser?",
    "What is dense passage retrieval?",
    "When is the family day and what is planned?",
    "What are the risk factors of Galaxy Gaming?",
    "Where do good ideas come from?",
    "Which clubs did Iwan Roberts play for?",
    "How many bottles of water were delivered?",
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", default="../shared/docs")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    docs = sorted(p for p in Path(args.docs).iterdir() if p.is_file() and p.name != "README.md")

    secret = secrets.token_urlsafe(48)
    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="tessera-measure-")), jwt_secret=secret)
    started = time.perf_counter()
    with serving(settings) as base_url:
        startup_s = time.perf_counter() - started
        client = TesseraClient.for_user(base_url, secret, user="alice", tenant="acme", groups=["eng"])
        result = _measure(client, docs, args.queries)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "settings": {
            "chunk_tokens": settings.chunk_tokens,
            "overlap": settings.chunk_overlap_tokens,
            "embed_batch": settings.embed_batch_size,
            "index": "qdrant server" if settings.qdrant_url else settings.embedded_engine,
        },
        "startup_s": round(startup_s, 2),
        **result,
    }
    for key, value in result.items():
        print(f"{key:>14}: {value}")
    print(json.dumps(result))


def _measure(client: TesseraClient, docs: list[Path], queries: int) -> dict[str, object]:
    began = time.perf_counter()
    ids = []
    for path in docs:
        try:
            ids.append(client.upload(path, groups=["eng"])["id"])
        except ClientError as exc:  # refused at the door (415, ...): counted, not timed
            print(f"refused {path.name}: {exc}")
    final = client.wait(ids)
    ingest_s = time.perf_counter() - began
    ready = [r for r in final.values() if r["status"] == "ready"]
    client.query("warm up")
    latencies = []
    for i in range(queries):
        t0 = time.perf_counter()
        client.query(QUESTIONS[i % len(QUESTIONS)], top_k=5)
        latencies.append((time.perf_counter() - t0) * 1000)
    return {
        "documents": len(docs),
        "ready": len(ready),
        "failed": len(final) - len(ready),
        "chunks": sum(int(r["chunk_count"]) for r in ready),
        "source_mb": round(sum(p.stat().st_size for p in docs) / 1e6, 3),
        "ingest_s": round(ingest_s, 2),
        "query_n": len(latencies),
        "query_p50_ms": round(statistics.median(latencies), 1),
        "query_p95_ms": round(_percentile(latencies, 95), 1),
        "query_max_ms": round(max(latencies), 1),
    }


if __name__ == "__main__":
    main()
