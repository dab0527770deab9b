"""An evaluation suite run: ingest a BEIR corpus through Tessera's own ingestion task, run every query as
several users through the same retrieval code the query API uses, and score it.

The system under test is reached through `EvalTarget` (provided by the composition root, api/), so the
suite never builds engines of its own and measures exactly what serves queries.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from core.access import Principal
from core.index import SearchMode
from core.records import StoredVector
from evals.acl import ALL_USER, AclPlan, plan_acls
from evals.bench.machine import head_commit
from evals.datasets import BeirDataset, Passage
from evals.llm_judge import LlmJudgeSettings, judge
from evals.metrics import (
    collapse_to_passages,
    fidelity_at_k,
    latency_summary,
    mean_of,
    mrr_at_k,
    ndcg_at_k,
    ragas_id_context_precision,
    ragas_id_context_recall,
    recall_at_k,
)
from retrieval.service import TimedSearch

RECALL_KS = (1, 5, 10, 50)
FIDELITY_K = 10


class EvalTarget(Protocol):
    """What a suite needs from a running Tessera."""

    tenant: str

    def ingest(
        self, passages: Sequence[Passage], groups: dict[str, str], progress: Callable[[int], None]
    ) -> dict[str, str]:
        """Upload each passage (shared with its group) through the ingestion task; wait until all are final.
        Returns passage id -> document id for the ready ones."""

    def search(self, principal: Principal, question: str, top_k: int, mode: SearchMode) -> TimedSearch:
        """The query API's retrieval, timed."""

    def embed(self, text: str) -> np.ndarray:
        """The query vector, as retrieval computes it."""

    def vectors(self) -> list[StoredVector]:
        """Every stored chunk of the suite's tenant, with its vector."""

    def describe(self) -> dict[str, Any]:
        """Settings to record beside the figures."""


@dataclass(frozen=True)
class SuiteOptions:
    acl_groups: int = 8  # 1: no ACLs
    acl_users: int = 4
    seed: int = 13
    top_k: int = 50
    # Each mode is a run record of its own, over one ingestion.
    modes: tuple[SearchMode, ...] = (SearchMode.DENSE, SearchMode.SPARSE, SearchMode.HYBRID)


def _exact_top(query: np.ndarray, matrix: np.ndarray, keys: list[str], allowed: np.ndarray, k: int) -> list[str]:
    """Brute-force cosine top-k among the allowed chunks (vectors are unit length: cosine is the dot)."""
    if not allowed.any():
        return []
    scores = matrix[allowed] @ query
    candidates = np.flatnonzero(allowed)
    order = np.argsort(-scores, kind="stable")[:k]
    return [keys[candidates[i]] for i in order]


def _ragas_id_metrics(retrieved: list[str], relevant: list[str]) -> dict[str, float | None]:
    """Ragas' ID-based context precision and recall over the top 10. Ragas answers NaN for an empty
    retrieval: that is a retrieval that found nothing, scored 0. A query with nothing relevant to find
    (for this user) has no score."""
    if not relevant:
        return {"context_precision": None, "context_recall": None}
    if not retrieved:
        return {"context_precision": 0.0, "context_recall": 0.0}
    return {
        "context_precision": ragas_id_context_precision(retrieved, relevant),
        "context_recall": ragas_id_context_recall(retrieved, relevant),
    }


def run_suite(
    dataset: BeirDataset,
    target: EvalTarget,
    options: SuiteOptions,
    *,
    llm: LlmJudgeSettings | None = None,
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
) -> list[dict[str, Any]]:
    """Ingest once, then query in each of `options.modes`; one run record per mode (evals/report.py)."""
    started = datetime.now(UTC)
    plan: AclPlan = plan_acls(dataset.passages, groups=options.acl_groups, users=options.acl_users, seed=options.seed)

    ingest_started = time.perf_counter()
    passages = list(dataset.passages.values())
    document_of = target.ingest(passages, plan.passage_groups, lambda done: progress("ingest", done, len(passages)))
    ingest_s = time.perf_counter() - ingest_started
    index = _IndexedCorpus.read(target, document_of, plan)
    records = []
    for mode in options.modes:
        record = _query_run(dataset, target, options, plan, index, mode, llm, progress)
        record.update(
            run_id=f"{started.strftime('%Y%m%dT%H%M%SZ')}-{dataset.name}-{mode.value}",
            started_at=started.isoformat(),
            settings={
                **target.describe(),
                "mode": mode.value,
                "top_k": options.top_k,
                "ingest_seconds": round(ingest_s, 2),
            },
        )
        records.append(record)
    return records


@dataclass(frozen=True)
class _IndexedCorpus:
    """What the index holds for the suite: the exact-search reference for the dense mode."""

    passage_of: dict[str, str]  # document id -> passage id
    keys: list[str]
    matrix: np.ndarray
    chunk_group: np.ndarray

    @classmethod
    def read(cls, target: EvalTarget, document_of: dict[str, str], plan: AclPlan) -> _IndexedCorpus:
        passage_of = {document_id: passage_id for passage_id, document_id in document_of.items()}
        stored = [v for v in target.vectors() if v.live and v.document_id in passage_of]
        return cls(
            passage_of=passage_of,
            keys=[f"{v.document_id}:{v.chunk_index}" for v in stored],
            matrix=np.asarray([v.vector for v in stored], dtype=np.float32),
            chunk_group=np.asarray([plan.passage_groups[passage_of[v.document_id]] for v in stored]),
        )


def _query_run(
    dataset: BeirDataset,
    target: EvalTarget,
    options: SuiteOptions,
    plan: AclPlan,
    index: _IndexedCorpus,
    mode: SearchMode,
    llm: LlmJudgeSettings | None,
    progress: Callable[[str, int, int], None],
) -> dict[str, Any]:
    passage_of = index.passage_of
    rows: list[dict[str, Any]] = []
    per_user: dict[str, dict[str, Any]] = {}
    embed_ms: list[float] = []
    search_ms: list[float] = []
    total_ms: list[float] = []
    users = list(plan.users)
    total = len(users) * len(dataset.queries)
    for user in users:
        principal = Principal.of(target.tenant, f"eval-{user}", sorted(plan.users[user]))
        allowed_passages = plan.allowed(user)
        allowed_chunks = np.isin(index.chunk_group, sorted(plan.users[user]))
        user_rows = []
        for query_id, text in dataset.queries.items():
            timed = target.search(principal, text, options.top_k, mode)
            chunk_passages = [passage_of.get(hit.document_id, f"?{hit.document_id}") for hit in timed.hits]
            leaked = sorted({p for p in chunk_passages if p not in allowed_passages})
            ranked = collapse_to_passages(chunk_passages)
            qrels = {p: g for p, g in dataset.qrels[query_id].items() if p in allowed_passages}
            fidelity = None  # against exact dense search: only the dense mode has that reference
            if mode is SearchMode.DENSE:
                returned_keys = [f"{hit.document_id}:{hit.chunk_index}" for hit in timed.hits]
                query = np.asarray(timed.vector, dtype=np.float32)
                exact = _exact_top(query, index.matrix, index.keys, allowed_chunks, FIDELITY_K)
                fidelity = fidelity_at_k(returned_keys, exact, FIDELITY_K)
            relevant_ids = [p for p, g in qrels.items() if g > 0]
            row: dict[str, Any] = {
                "query_id": query_id,
                "text": text,
                "user": user,
                "ndcg@10": ndcg_at_k(ranked, qrels, 10),
                "mrr@10": mrr_at_k(ranked, qrels, 10),
                **{f"recall@{k}": recall_at_k(ranked, qrels, k) for k in RECALL_KS},
                **_ragas_id_metrics(ranked[:10], relevant_ids),
                "fidelity@10": fidelity,
                "retrieved": ranked[:10],
                "relevant": qrels,
                "embed_ms": timed.embed_s * 1000,
                "search_ms": timed.search_s * 1000,
                "total_ms": (timed.embed_s + timed.search_s) * 1000,
                "leaked": leaked,
            }
            embed_ms.append(row["embed_ms"])
            search_ms.append(row["search_ms"])
            total_ms.append(row["total_ms"])
            user_rows.append(row)
            progress(f"query {mode.value}", len(rows) + len(user_rows), total)
        rows.extend(user_rows)
        per_user[user] = {
            "groups": sorted(plan.users[user]),
            "visible_passages": len(allowed_passages),
            "ndcg@10": mean_of(r["ndcg@10"] for r in user_rows),
            "recall@10": mean_of(r["recall@10"] for r in user_rows),
            "fidelity@10": mean_of(r["fidelity@10"] for r in user_rows),
            "leaks": sum(len(r["leaked"]) for r in user_rows),
            "queries": len(user_rows),
        }

    everyone = [r for r in rows if r["user"] == ALL_USER]
    metric_names = ["ndcg@10", *(f"recall@{k}" for k in RECALL_KS), "mrr@10", "context_precision", "context_recall"]
    return {
        "suite": dataset.name,
        "mode": mode.value,
        "dataset_path": str(dataset.path),
        "finished_at": datetime.now(UTC).isoformat(),
        "git_commit": head_commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "index_size": {"passages": len(index.passage_of), "chunks": len(index.keys), "queries": len(dataset.queries)},
        "acl": plan.as_json(),
        "metrics": {name: mean_of(r[name] for r in everyone) for name in metric_names},
        "per_user": per_user,
        "leaks": sum(u["leaks"] for u in per_user.values()),
        "latency_ms": {
            "embed": latency_summary(embed_ms),
            "search": latency_summary(search_ms),
            "total": latency_summary(total_ms),
        },
        "llm_metrics": judge(llm, dataset, everyone, target.embed),
        "queries": rows,
    }
