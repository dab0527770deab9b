"""Query benchmark: latency percentiles and throughput of POST /v1/query through the real HTTP API, at several
numbers of concurrent clients, from a load generator in a separate process (evals/bench/loadgen.py).

What is measured, and why: per request, the time a client waits for its answer (ACL-filtered search, prompt
assembly and the audit record included), as p50/p95/p99 over every request of a level, and the answered
queries per second over the level's window. At 1 client this is the latency of one user; at 4 and 16 it shows
how the server shares its CPUs (queries are embedded together when they arrive together). The queries are
dbpedia's, asked in turn by several principals whose groups admit different shares of the chunks, since the
filter's selectivity changes how the engine searches. Every non-200 answer counts as a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evals.bench.loadgen import LoadSpec
from evals.metrics import latency_summary

DEFAULT_LEVELS = (1, 4, 16)
_LOADGEN_GRACE_S = 120.0


@dataclass(frozen=True)
class Reader:
    """A principal the load generator asks as: a subject in some groups of a tenant."""

    tenant: str
    subject: str
    groups: tuple[str, ...]
    label: str  # what it admits, e.g. "25%" or "groups g1,g2"
    admitted: int | None = None  # chunks it may read, when known

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reader:
        return cls(
            tenant=str(data["tenant"]),
            subject=str(data["subject"]),
            groups=tuple(data["groups"]),
            label=str(data["label"]),
            admitted=data.get("admitted"),
        )


def load_queries(dataset_dir: Path) -> list[str]:
    """The texts of the dataset's queries.jsonl, in file order."""
    lines = (dataset_dir / "queries.jsonl").read_text(encoding="utf-8").split("\n")  # not splitlines: see datasets
    queries = [str(json.loads(line)["text"]) for line in lines if line.strip()]
    if not queries:
        raise ValueError(f"no queries in {dataset_dir / 'queries.jsonl'}")
    return queries


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """One level's figures from the load generator's raw samples: latency of the answered requests (ms) and
    answered requests per second over the measured window; failures counted by status."""
    samples = result["samples"]
    ok = [float(ms) for _, ms, status in samples if status == 200]
    statuses: dict[str, int] = {}
    for _, _, status in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    wall_s = float(result["wall_s"])
    latency = latency_summary(ok)  # the eval suites' percentiles: numpy's linear interpolation
    return {
        "clients": int(result["concurrency"]),
        "requests": len(samples),
        "ok": len(ok),
        "failures": len(samples) - len(ok),
        "statuses": statuses,
        "errors": dict(sorted(result["errors"].items(), key=lambda item: -item[1])[:5]),
        "warmup_failures": int(result["warmup_failures"]),
        **{f"{q}_ms": round(latency[q], 2) if ok else None for q in ("p50", "p95", "p99")},
        "mean_ms": round(sum(ok) / len(ok), 2) if ok else None,
        "max_ms": round(max(ok), 2) if ok else None,
        "qps": round(len(ok) / wall_s, 2) if wall_s > 0 else 0.0,
        "wall_s": round(wall_s, 3),
    }


def run_loadgen(spec: LoadSpec) -> dict[str, Any]:
    """Run the load generator in a subprocess on `spec`; its raw result. The spec (tokens) is written to a
    private temporary directory and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tessera-loadgen-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        descriptor = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(asdict(spec), handle)
        command = [sys.executable, "-m", "evals.bench.loadgen", str(spec_path), "--out", str(out_path)]
        timeout = spec.duration_s + _LOADGEN_GRACE_S + spec.warmup * 60
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or not out_path.is_file():
            raise RuntimeError(f"the load generator failed (exit {done.returncode}): {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
        return result


def warm_up(
    base_url: str,
    tokens: Sequence[str],
    queries: Sequence[str],
    *,
    seconds: float,
    clients: int = 4,
    top_k: int | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Load the server for `seconds` before the measured levels, untimed: the first queries after a start are
    several times slower than later ones (lazy initialisation, cold caches), which would otherwise be charged to
    whichever level runs first. Its failures are reported like any level's."""
    spec = LoadSpec(
        url=base_url,
        tokens=list(tokens),
        queries=list(queries),
        concurrency=clients,
        requests=10**9,
        duration_s=seconds,
        warmup=0,
        top_k=top_k,
        mode=mode,
    )
    return summarize(run_loadgen(spec))


def run_query_bench(
    base_url: str,
    tokens: Sequence[str],
    queries: Sequence[str],
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    requests: int = 500,
    duration_s: float = 30.0,
    warmup: int = 2,
    top_k: int | None = None,
    mode: str | None = None,
) -> list[dict[str, Any]]:
    """For each number of clients in `levels`, one load generator run of at most `requests` requests and at most
    `duration_s` seconds after its warm-up (`warmup` requests per client); the figures of each level."""
    rows = []
    for clients in levels:
        spec = LoadSpec(
            url=base_url,
            tokens=list(tokens),
            queries=list(queries),
            concurrency=clients,
            requests=requests,
            duration_s=duration_s,
            warmup=warmup,
            top_k=top_k,
            mode=mode,
        )
        rows.append(summarize(run_loadgen(spec)))
    return rows
