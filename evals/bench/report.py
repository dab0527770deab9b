"""A benchmark result as text tables (one per section) and as one JSON document with the machine and settings."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.bench.ingest import STAGES


def cell(value: Any) -> str:
    """A table cell: '-' for nothing, thousands separators for integers, floats to 4 significant figures (never
    fewer digits than the integer part) without trailing zeros."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        digits = max(0, 3 - math.floor(math.log10(abs(value))))
        text = f"{value:,.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A titled plain-text table: the first column left-aligned, the others right-aligned."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in texts)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in texts)])


def _header(result: dict[str, Any]) -> str:
    machine, settings = result["machine"], result["settings"]
    git = machine.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (modified)" if git.get("dirty") else "")
    overrides = ", ".join(f"{k}={v}" for k, v in settings.get("overrides", {}).items()) or "none"
    return "\n".join(
        [
            f"tessera bench {result['kind']}  {machine['recorded_at']}  commit {commit}",
            f"machine: {machine['cpu_count']} CPUs ({machine['cpu_affinity']} usable) {machine['cpu_model']}, "
            f"{machine['memory_gib']} GiB, load {machine['load_average']}; Python {machine['python']}, "
            f"torch {machine['torch']}, qdrant-edge {machine['qdrant_edge']}",
            f"settings: queue {settings['queue']}, engine {settings['embedded_engine']}, "
            f"backend {settings['embed_backend']}, batch {settings['embed_batch_size']}, "
            f"worker concurrency {settings['worker_concurrency']}, chunk {settings['chunk_tokens']}/"
            f"{settings['chunk_overlap_tokens']} tokens; overrides: {overrides}",
        ]
    )


def _ingest_tables(result: dict[str, Any]) -> list[str]:
    ingest = result["ingest"]
    sections = [
        table(
            "Ingestion (upload of the first document to the last one final, after one warm-up document)",
            [
                "passages",
                "documents",
                "ready",
                "failed",
                "refused",
                "chunks",
                "source MB",
                "wall s",
                "docs/s",
                "chunks/s",
                "MB/s",
                "warm-up s",
            ],
            [
                [
                    ingest["passages"],
                    ingest["documents"],
                    ingest["ready"],
                    ingest["failed"],
                    ingest["refused"],
                    ingest["chunks"],
                    ingest["source_mb"],
                    ingest["wall_s"],
                    ingest["docs_per_s"],
                    ingest["chunks_per_s"],
                    ingest["mb_per_s"],
                    ingest.get("warm_up_s"),
                ]
            ],
        ),
        table(
            "Ingestion stages (seconds summed over documents; they overlap when documents are ingested concurrently)",
            ["stage", "seconds", "share", "ms/chunk"],
            [
                [stage, figures["seconds"], f"{100 * figures['share']:.1f}%", figures["ms_per_chunk"]]
                for stage, figures in ((s, ingest["stages"][s]) for s in STAGES)
            ],
        ),
    ]
    reference = result.get("encode_reference")
    if reference is not None:
        ratio = result.get("ingest_vs_encode")
        sections.append(
            table(
                "Encode-only reference (same model, backend, batch size and texts; server stopped)",
                [
                    "texts",
                    "passes",
                    "seconds",
                    "texts/s",
                    "batch",
                    "backend",
                    "device",
                    "ingest chunks/s ÷ encode texts/s",
                ],
                [
                    [
                        reference["texts"],
                        reference["passes"],
                        reference["seconds"],
                        reference["texts_per_s"],
                        reference["batch_size"],
                        reference["backend"],
                        reference["device"],
                        f"{ratio:.3f} (target ≥ 0.85)" if ratio is not None else None,
                    ]
                ],
            )
        )
    return sections


def _query_table(result: dict[str, Any]) -> str:
    query = result["query"]
    readers = "; ".join(f"{r['subject']} ({r['label']})" for r in query["readers"])
    warm = query.get("warmup")
    warm_line = (
        f"\nwarm-up before the levels (untimed): {warm['requests']} requests in {cell(warm['wall_s'])}s at "
        f"{warm['clients']} clients, {warm['failures']} failures, p50 {cell(warm['p50_ms'])} ms"
        if warm
        else ""
    )
    return (
        table(
            f"Queries over HTTP (mode {query['mode'] or 'server default'}, top_k {query['top_k'] or 'server default'}, "
            f"{query['queries']} distinct queries; readers: {readers})",
            ["clients", "requests", "failures", "p50 ms", "p95 ms", "p99 ms", "max ms", "queries/s"],
            [
                [
                    level["clients"],
                    level["requests"],
                    level["failures"],
                    level["p50_ms"],
                    level["p95_ms"],
                    level["p99_ms"],
                    level["max_ms"],
                    level["qps"],
                ]
                for level in query["levels"]
            ],
        )
        + warm_line
    )


def _server_table(result: dict[str, Any]) -> str:
    servers: dict[str, dict[str, Any]] = result["servers"]
    one_process = all(s["single_process"] for s in servers.values())
    title = "Server runs (`tessera serve` subprocess; peak RSS = VmHWM"
    title += ": API and ingestion worker in one process)" if one_process else " of the API process)"
    return table(
        title,
        ["run", "cold start s", "healthy s", "peak RSS MiB", "children MiB", "index MiB", "apparent MiB"],
        [
            [
                name,
                s["cold_start_s"],
                s["healthy_s"],
                s["peak_rss_mib"],
                s["children_peak_rss_mib"],
                s["index_mib"],
                s["index_apparent_mib"],
            ]
            for name, s in servers.items()
        ],
    )


def format_report(result: dict[str, Any]) -> str:
    """Every section present in `result`, as text tables under a header naming the machine and settings."""
    parts = [_header(result)]
    if "ingest" in result:
        parts.extend(_ingest_tables(result))
    if "query" in result:
        parts.append(_query_table(result))
    if result.get("servers"):
        parts.append(_server_table(result))
    parts.extend(f"note: {note}" for note in result.get("notes", []))
    return "\n\n".join(parts)


def write_json(result: dict[str, Any], path: Path) -> Path:
    """Write `result` as indented JSON at `path` (its folder made if needed); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path
