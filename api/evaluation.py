"""Running the evaluation suites against this code: `tessera eval run|report` and the nightly Celery beat task.

A suite runs on a fresh embedded Tessera in a temporary directory (the same code path as serving: the
upload registry, the Celery ingestion task, the Retriever), so it never touches production data. Run
records go to TESSERA_EVAL_RESULTS_DIR (default <data_dir>/evals).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.schedules import crontab

import evals
from api.eval_target import RuntimeEvalTarget
from api.runtime import Runtime
from core.errors import ConfigError
from core.index import SearchMode
from core.settings import Settings
from evals.datasets import load_beir
from evals.gate import GateResult, check, load_thresholds
from evals.llm_judge import LlmJudgeSettings
from evals.report import write_report
from evals.store import load_runs, save_run
from evals.suite import SuiteOptions, run_suite

log = logging.getLogger(__name__)
THRESHOLDS = Path(evals.__file__).resolve().parent / "thresholds.toml"
Progress = Callable[[str, int, int], None]


def dataset_path(settings: Settings, suite: str) -> Path:
    path = Path(suite)
    if not path.is_dir():
        path = settings.eval_datasets_dir / suite
    if not path.is_dir():
        raise ConfigError(f"no dataset {suite!r}: not a directory, nor one under {settings.eval_datasets_dir}")
    return path


def llm_settings(settings: Settings) -> LlmJudgeSettings | None:
    if settings.eval_llm_base_url and settings.eval_llm_model and settings.eval_llm_api_key:
        return LlmJudgeSettings(
            base_url=settings.eval_llm_base_url,
            model=settings.eval_llm_model,
            api_key=settings.eval_llm_api_key.get_secret_value(),
        )
    return None


def run_evaluation(
    settings: Settings,
    suite: str,
    options: SuiteOptions,
    *,
    max_queries: int | None = None,
    extra_passages: int | None = None,
    progress: Progress = lambda stage, done, total: None,
) -> list[tuple[dict[str, Any], Path]]:
    """Run one suite on a fresh embedded Tessera; returns each mode's run record and where it was saved."""
    dataset = load_beir(dataset_path(settings, suite), max_queries=max_queries, extra_passages=extra_passages)
    with tempfile.TemporaryDirectory(prefix="tessera-eval-") as scratch:
        isolated = settings.model_copy(
            update={"data_dir": Path(scratch), "queue": "embedded", "qdrant_url": None, "registry_url": None}
        )
        runtime = Runtime(isolated)
        runtime.start()
        try:
            target = RuntimeEvalTarget(runtime, tenant=f"eval-{dataset.name}")
            records = run_suite(dataset, target, options, llm=llm_settings(settings), progress=progress)
        finally:
            runtime.stop()
    saved = [(record, save_run(settings.eval_results_path, record)) for record in records]
    for _, path in saved:
        log.info("eval %s: saved %s", suite, path)
    return saved


def run_mode(run: dict[str, Any]) -> str:
    return str(run.get("mode", SearchMode.DENSE.value))  # runs from before search modes were all dense


def report(
    settings: Settings, suite: str | None, *, baseline_id: str | None, out: Path | None, mode: str | None = None
) -> tuple[Path, GateResult]:
    """Write the HTML report of a suite's runs in one search mode (default: the serving default) and check
    the latest against the previous run of the same mode."""
    runs = load_runs(settings.eval_results_path)
    if not runs:
        raise ConfigError(f"no eval runs under {settings.eval_results_path}: run `tessera eval run SUITE` first")
    suite = suite or runs[-1]["suite"]
    mode = mode or settings.default_search_mode
    runs = [r for r in runs if r["suite"] == suite and run_mode(r) == mode]
    if not runs:
        raise ConfigError(f"no {mode} runs of suite {suite!r} under {settings.eval_results_path}")
    baseline = None
    if baseline_id:
        baseline = next((r for r in runs if r["run_id"] == baseline_id), None)
        if baseline is None:
            raise ConfigError(f"no run {baseline_id!r} of suite {suite!r}")
    path = write_report(runs, out or settings.eval_results_path / f"report-{suite}-{mode}.html", baseline=baseline)
    previous = runs[-2] if len(runs) > 1 else None
    return path, check(runs[-1], previous, load_thresholds(THRESHOLDS))


NIGHTLY_TASK_NAME = "tessera.evals.nightly"


def register_nightly(runtime: Runtime) -> None:
    """The nightly task (run by a worker) and its Celery beat schedule (TESSERA_EVAL_NIGHTLY_AT, UTC)."""
    settings = runtime.settings

    # shared=False: bound to this app, like the ingestion task.
    @runtime.celery.task(name=NIGHTLY_TASK_NAME, shared=False, queue="tessera.evals")  # type: ignore[untyped-decorator]
    def nightly() -> dict[str, Any]:
        results: dict[str, Any] = {}
        for suite in [s.strip() for s in settings.eval_suites.split(",") if s.strip()]:
            for record, _ in run_evaluation(settings, suite, SuiteOptions()):
                mode = run_mode(record)
                _, gate = report(settings, suite, baseline_id=None, out=None, mode=mode)
                results[f"{suite}/{mode}"] = {"run": record["run_id"], "leaks": record["leaks"], "gate": gate.passed}
                if not gate.passed:
                    log.error("nightly eval %s (%s) failed its gate: %s", suite, mode, "; ".join(gate.failures))
        return results

    hour, minute = (int(part) for part in settings.eval_nightly_at.split(":"))
    runtime.celery.conf.beat_schedule = {
        "nightly-evals": {"task": NIGHTLY_TASK_NAME, "schedule": crontab(hour=hour, minute=minute)}
    }
    runtime.celery.conf.timezone = "UTC"
