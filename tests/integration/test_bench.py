"""`tessera bench`: a smoke run of `bench all` on 30 dbpedia documents (real `tessera serve` subprocesses, real
uploads, a real load generator process), and unit tests of the percentile and of the table and JSON output.

No timing is asserted: only that every figure is there, every query was answered and the chunk count agrees
with the registry.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from evals.bench.cli import ADMIN, UPLOADER
from evals.bench.ingest import bench_documents
from evals.bench.query import summarize
from evals.bench.report import cell, format_report, table, write_json
from evals.datasets import Passage

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
DOCUMENTS = 30
STAGES = ("parse", "chunk", "embed", "index")


# --- unit: percentile, summaries, formatting ------------------------------------------------------------------


@pytest.mark.unit
def test_bench_documents_join_consecutive_passages_and_cycle_the_groups() -> None:
    passages = [Passage(id=f"<dbpedia:P{i}>", title=f"Title {i}", text=f"text of passage {i}.") for i in range(7)]
    groups = [("a", "all"), ("b", "all")]
    one_each = bench_documents(passages, groups)
    assert [d.passage_ids for d in one_each] == [(p.id,) for p in passages]
    assert one_each[0].content == b"Title 0\n\ntext of passage 0."

    documents = bench_documents(passages, groups, passages_per_document=3)
    assert [d.passage_ids for d in documents] == [tuple(p.id for p in passages[i : i + 3]) for i in (0, 3, 6)]
    assert [d.groups for d in documents] == [groups[0], groups[1], groups[0]]
    assert documents[1].content.decode() == "\n\n".join(p.document_text for p in passages[3:6])
    assert len({d.file_name for d in documents}) == 3
    with pytest.raises(ValueError, match="at least 1"):
        bench_documents(passages, groups, passages_per_document=0)


@pytest.mark.unit
def test_bench_refuses_fewer_than_one_passage_per_document(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "ingest", "--passages-per-document", "0"])
    assert exit_info.value.code == 2
    assert "--passages-per-document: a whole number, at least 1" in capsys.readouterr().err


@pytest.mark.unit
def test_summary_percentiles_interpolate_linearly_like_numpy() -> None:
    def level(latencies: list[float]) -> dict[str, Any]:
        samples = [[0.1 * i, ms, 200] for i, ms in enumerate(latencies)]
        return summarize({"concurrency": 1, "wall_s": 1.0, "samples": samples, "errors": {}, "warmup_failures": 0})

    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert level(values)["p50_ms"] == 35.0
    assert level(list(reversed(values)))["p95_ms"] == pytest.approx(
        48.0
    )  # rank 3.8: 40 + 0.8 * 10; order does not matter
    assert level(values)["p99_ms"] == pytest.approx(49.6)
    assert level([7.0])["p99_ms"] == 7.0
    assert level([])["p50_ms"] is None  # no answered request: no latency, not zero


@pytest.mark.unit
def test_summarize_counts_every_non_200_as_a_failure() -> None:
    raw = {
        "concurrency": 4,
        "wall_s": 2.0,
        "samples": [[0.0, 10.0, 200], [0.1, 20.0, 200], [0.2, 30.0, 500], [0.3, 5.0, 0], [0.4, 40.0, 200]],
        "errors": {"HTTP 500: boom": 1, "ConnectError: refused": 1},
        "warmup_failures": 0,
    }
    level = summarize(raw)
    assert (level["requests"], level["ok"], level["failures"]) == (5, 3, 2)
    assert level["statuses"] == {"200": 3, "500": 1, "0": 1}
    assert level["p50_ms"] == 20.0 and level["max_ms"] == 40.0
    assert level["qps"] == 1.5  # answered requests over the window


@pytest.mark.unit
def test_cells_and_tables_are_aligned_and_readable() -> None:
    assert cell(None) == "-" and cell(float("nan")) == "-"
    assert cell(1234567) == "1,234,567"
    assert cell(12.3456) == "12.35" and cell(0.0123456) == "0.01235" and cell(800.0) == "800"
    assert cell(2.5e4) == "25,000" and cell(0.0) == "0" and cell(True) == "yes"
    text = table("Title", ["name", "value"], [["a", 1.5], ["longer", 1000]])
    lines = text.splitlines()
    assert lines[0] == "Title"
    assert lines[1] == "name    value"
    assert lines[3] == "a         1.5" and lines[4] == "longer  1,000"
    assert len({len(line) for line in lines[1:]}) == 1


@pytest.mark.unit
def test_report_prints_each_section_and_the_json_round_trips(tmp_path: Path) -> None:
    result = _minimal_result()
    text = format_report(result)
    for heading in ("Ingestion (", "Ingestion stages", "Encode-only reference", "Queries over HTTP", "Server runs"):
        assert heading in text
    assert "0.900 (target ≥ 0.85)" in text and "API and ingestion worker in one process" in text
    path = write_json(result, tmp_path / "out" / "bench.json")
    assert json.loads(path.read_text(encoding="utf-8")) == result


def _minimal_result() -> dict[str, Any]:
    level = {"clients": 1, "requests": 10, "failures": 0, "p50_ms": 5.0, "p95_ms": 9.0, "p99_ms": 9.5}
    server = {
        "cold_start_s": 3.2,
        "healthy_s": 3.0,
        "peak_rss_mib": 900.0,
        "children_peak_rss_mib": 0.0,
        "index_mib": 1.0,
        "index_apparent_mib": 200.0,
        "single_process": True,
    }
    return {
        "kind": "all",
        "machine": {
            "recorded_at": "2025-01-01T00:00:00+00:00",
            "cpu_count": 2,
            "cpu_affinity": 2,
            "cpu_model": "cpu",
            "memory_gib": 8.0,
            "load_average": [0.1, 0.1, 0.1],
            "python": "3.11",
            "torch": "2",
            "qdrant_edge": "0.9.0",
            "git": {"commit": "abc", "dirty": False},
        },
        "settings": {
            "queue": "embedded",
            "embedded_engine": "edge",
            "embed_backend": "torch",
            "embed_batch_size": 32,
            "worker_concurrency": 4,
            "chunk_tokens": 200,
            "chunk_overlap_tokens": 20,
            "overrides": {},
        },
        "ingest": {
            "documents": 2,
            "passages": 2,
            "ready": 2,
            "failed": 0,
            "refused": 0,
            "chunks": 3,
            "source_mb": 0.001,
            "wall_s": 1.0,
            "docs_per_s": 2.0,
            "chunks_per_s": 3.0,
            "mb_per_s": 0.001,
            "warm_up_s": 2.0,
            "stages": {s: {"seconds": 0.25, "share": 0.25, "ms_per_chunk": 83.3} for s in STAGES},
        },
        "encode_reference": {
            "texts": 3,
            "passes": 1,
            "seconds": 0.9,
            "texts_per_s": 3.333,
            "batch_size": 32,
            "backend": "torch",
            "device": "cpu",
        },
        "ingest_vs_encode": 0.9,
        "query": {
            "mode": None,
            "top_k": None,
            "queries": 2,
            "readers": [{"subject": "r", "label": "100%"}],
            "warmup": {**level, "wall_s": 1.0},
            "levels": [{**level, "max_ms": 10.0, "qps": 100.0}],
        },
        "servers": {"ingest": server, "query": server},
        "notes": [],
    }


# --- integration: `tessera bench all` -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_bench_all_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "bench.json"
    argv = ["bench", "all", "--dataset", str(DATASETS / "dbpedia"), "--data-dir", str(data_dir), "--json", str(out)]
    argv += ["--documents", str(DOCUMENTS), "--encode-min-s", "0", "--clients", "1,4"]
    argv += ["--requests", "30", "--duration", "1", "--warmup-s", "0.5", "--warmup", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Queries over HTTP" in printed and f"saved {out}" in printed
    result = json.loads(out.read_text(encoding="utf-8"))

    machine, settings = result["machine"], result["settings"]
    for key in ("cpu_count", "cpu_model", "memory_gib", "python", "torch", "qdrant_edge"):
        assert machine[key], key
    assert "commit" in machine["git"]
    for key in ("worker_concurrency", "embed_backend", "embed_batch_size", "embedded_engine"):
        assert settings[key] is not None, key

    ingest = result["ingest"]
    assert ingest["documents"] == ingest["ready"] == DOCUMENTS
    assert ingest["failed"] == ingest["refused"] == 0
    for key in ("wall_s", "docs_per_s", "chunks_per_s", "mb_per_s"):
        assert ingest[key] > 0, key
    assert set(ingest["stages"]) == set(STAGES)
    assert sum(stage["share"] for stage in ingest["stages"].values()) == pytest.approx(1.0, abs=1e-3)
    # the chunk count from the audit records agrees with the registry, over HTTP and in its database
    assert ingest["chunks"] >= DOCUMENTS
    assert ingest["registry"] == {"ready": DOCUMENTS, "chunks": ingest["chunks"]}
    with sqlite3.connect(data_dir / "registry.db") as db:
        by_owner = dict(
            db.execute("SELECT owner, COUNT(*) FROM documents WHERE status = 'ready' GROUP BY owner").fetchall()
        )
        ((chunks,),) = db.execute("SELECT SUM(chunk_count) FROM documents WHERE owner = ?", (UPLOADER,))
    # the measured documents, and the one warm-up document before them, the admin's own (no reader sees it)
    assert by_owner == {UPLOADER: DOCUMENTS, ADMIN: 1} and chunks == ingest["chunks"]
    assert ingest["warm_up_s"] > 0

    reference = result["encode_reference"]
    assert reference["texts"] == ingest["chunks"] and reference["texts_per_s"] > 0
    assert result["ingest_vs_encode"] > 0

    query = result["query"]
    assert [level["clients"] for level in query["levels"]] == [1, 4]
    assert len(query["readers"]) >= 2
    for level in [query["warmup"], *query["levels"]]:
        assert level["requests"] > 0 and level["failures"] == 0 and level["warmup_failures"] == 0
        assert level["statuses"] == {"200": level["requests"]}
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert level["qps"] > 0

    for run in ("ingest", "query"):
        server = result["servers"][run]
        assert 0 < server["healthy_s"] <= server["cold_start_s"]
        assert server["peak_rss_mib"] > 0 and server["index_mib"] > 0 and server["single_process"]
