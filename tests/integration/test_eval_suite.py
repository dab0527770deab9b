"""A small end-to-end eval suite over a slice of a shared dataset, through Tessera's own ingestion task and
retrieval code; and proof that the leak detector fires when retrieval ignores the ACL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.eval_target import RuntimeEvalTarget
from api.evaluation import report, run_evaluation
from api.runtime import Runtime
from core.access import Principal
from core.index import SearchMode
from core.settings import Settings
from evals.acl import ALL_USER, plan_acls
from evals.datasets import load_beir
from evals.metrics import ndcg_at_k
from evals.suite import SuiteOptions, run_suite
from retrieval.service import TimedSearch
from tests.helpers import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


@pytest.fixture(scope="module")
def mode_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[dict[str, Any], Path]], Settings]:
    settings = settings_for(tmp_path_factory.mktemp("evals"), eval_datasets_dir=DATASETS)
    options = SuiteOptions(acl_groups=4, acl_users=3)
    saved = run_evaluation(settings, "business-reports", options, max_queries=4, extra_passages=30)
    return saved, settings


@pytest.fixture(scope="module")
def slice_run(mode_runs: Any) -> tuple[dict[str, Any], Path, Settings]:
    """The dense run (the one with the exact-search reference)."""
    saved, settings = mode_runs
    record, path = next((record, path) for record, path in saved if record["mode"] == "dense")
    return record, path, settings


def test_one_ingestion_gives_a_run_per_search_mode(mode_runs: Any) -> None:
    saved, _ = mode_runs
    assert [record["mode"] for record, _ in saved] == ["dense", "sparse", "hybrid"]
    assert len({record["run_id"] for record, _ in saved}) == 3
    assert len({record["settings"]["ingest_seconds"] for record, _ in saved}) == 1  # ingested once
    for record, path in saved:
        assert path.is_file() and record["leaks"] == 0 and record["settings"]["mode"] == record["mode"]
        assert 0.0 <= record["metrics"]["ndcg@10"] <= 1.0
        fidelity = [figures["fidelity@10"] for figures in record["per_user"].values()]
        assert all(f is not None for f in fidelity) if record["mode"] == "dense" else all(f is None for f in fidelity)


def test_the_run_record_holds_every_figure(slice_run: Any) -> None:
    record, path, _ = slice_run
    assert path.is_file() and record["suite"] == "business-reports"
    assert record["index_size"]["queries"] == 4 and record["index_size"]["passages"] > 30
    assert record["leaks"] == 0
    for name in (
        "ndcg@10",
        "recall@1",
        "recall@5",
        "recall@10",
        "recall@50",
        "mrr@10",
        "context_precision",
        "context_recall",
    ):
        assert 0.0 <= record["metrics"][name] <= 1.0, name
    assert record["metrics"]["recall@50"] >= record["metrics"]["recall@10"] >= record["metrics"]["recall@1"]
    assert set(record["per_user"]) == {"all", "u0", "u1", "u2"}
    for figures in record["per_user"].values():
        assert figures["leaks"] == 0 and figures["queries"] == 4
        assert figures["fidelity@10"] is None or 0.0 <= figures["fidelity@10"] <= 1.0
    for part in ("embed", "search", "total"):
        summary = record["latency_ms"][part]
        assert summary["n"] == 16 and 0 < summary["p50"] <= summary["p95"] <= summary["p99"]
    assert record["llm_metrics"]["status"] == "skipped" and "endpoint" in record["llm_metrics"]["reason"]
    assert record["git_commit"] and record["machine"]["cpus"]


def test_per_query_rows_are_consistent_with_the_metrics(slice_run: Any) -> None:
    record, _, _ = slice_run
    for row in record["queries"]:
        assert not row["leaked"]
        if row["ndcg@10"] is not None:
            assert row["ndcg@10"] == pytest.approx(ndcg_at_k(row["retrieved"], row["relevant"], 10))
        assert len(row["retrieved"]) == len(set(row["retrieved"]))  # a passage counts once
    allowed = {user: set(f["groups"]) for user, f in record["per_user"].items()}
    assert allowed[ALL_USER] == set(record["acl"]["groups"])


def test_report_and_gate(slice_run: Any) -> None:
    record, _, settings = slice_run
    path, gate = report(settings, "business-reports", baseline_id=record["run_id"], out=None, mode="dense")
    html = path.read_text()
    assert record["run_id"] in html and "data:image/png;base64," in html
    assert gate.passed, gate.failures


@dataclass
class IgnoresAcl:
    """A deliberately broken target: it searches as a principal that holds every group."""

    inner: RuntimeEvalTarget
    groups: list[str]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def search(self, principal: Principal, question: str, top_k: int, mode: SearchMode) -> TimedSearch:
        widened = Principal.of(principal.tenant, principal.subject, self.groups)
        return self.inner.search(widened, question, top_k, mode)


@pytest.fixture
def small_runtime(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(settings_for(tmp_path))
    runtime.start()
    yield runtime
    runtime.stop()


def test_a_retrieval_that_ignores_the_acl_is_caught_as_leaks(small_runtime: Runtime) -> None:
    dataset = load_beir(DATASETS / "business-reports", max_queries=2, extra_passages=20)
    options = SuiteOptions(acl_groups=4, acl_users=2, seed=5, modes=(SearchMode.HYBRID,))
    groups = list(plan_acls(dataset.passages, groups=4, users=2, seed=5).groups)
    target = IgnoresAcl(RuntimeEvalTarget(small_runtime, tenant="eval-leaky"), groups)
    [record] = run_suite(dataset, target, options)  # type: ignore[arg-type]
    assert record["leaks"] > 0
    assert record["per_user"]["all"]["leaks"] == 0  # `all` may see everything: nothing to leak
    assert any(row["leaked"] for row in record["queries"] if row["user"] != "all")
