from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from evals.gate import DEFAULT_THRESHOLDS, GateResult, check, load_thresholds
from evals.report import worst_queries, write_report

pytestmark = pytest.mark.unit

SCRIPT_TEXT = "<script>alert('x')</script> what is a qubit?"
WORST_TEXT = "which river flows through the unfindable city"
BASELINE_ID = "20260101T000000Z-dbpedia-release"


def _latency(p95: float) -> dict[str, float]:
    return {"p50": p95 * 0.7, "p95": p95, "p99": p95 * 1.3, "mean": p95 * 0.75, "n": 4}


def _query(
    qid: str, text: str, ndcg: float | None, recall: float | None, leaked: list[str] | None = None
) -> dict[str, Any]:
    return {
        "query_id": qid,
        "text": text,
        "user": "u1",
        "ndcg@10": ndcg,
        "recall@10": recall,
        "retrieved": [f"p{qid}-{i}" for i in range(12)] + ["p-rel-1"],
        "relevant": {"p-rel-1": 2, "p-rel-2": 1},
        "embed_ms": 7.0 + len(text) % 5,
        "search_ms": 1.0 + len(text) % 3,
        "total_ms": 8.0 + len(text) % 7,
        "leaked": leaked or [],
    }


def _run(index: int, ndcg: float, leaks: int = 0, p95: float = 10.0) -> dict[str, Any]:
    return {
        "run_id": f"2026112{index}T112233Z-dbpedia",
        "suite": "dbpedia",
        "dataset_path": "../shared/datasets/dbpedia",
        "started_at": f"2026-11-2{index}T11:22:33+00:00",
        "finished_at": f"2026-11-2{index}T11:32:33+00:00",
        "git_commit": f"abc12{index}",
        "machine": {"platform": "Linux-x86_64", "cpus": 2, "python": "3.11.7"},
        "settings": {"chunk_tokens": 200, "top_k": 50},
        "index_size": {"passages": 5000, "chunks": 5100},
        "acl": {"enabled": True, "seed": 13, "groups": ["g0", "g1"], "users": {"all": ["g0", "g1"], "u1": ["g0"]}},
        "metrics": {
            "ndcg@10": ndcg,
            "recall@1": 0.1,
            "recall@5": 0.3,
            "recall@10": 0.45,
            "recall@50": 0.7,
            "mrr@10": 0.8,
            "context_precision": None,
            "context_recall": 0.45,
        },
        "per_user": {
            "all": {"ndcg@10": ndcg, "recall@10": 0.5, "leaks": 0, "fidelity@10": 1.0, "queries": 50},
            "u1": {"ndcg@10": ndcg - 0.05, "recall@10": 0.4, "leaks": leaks, "fidelity@10": 0.9, "queries": 50},
        },
        "leaks": leaks,
        "latency_ms": {"embed": _latency(p95 * 0.8), "search": _latency(p95 * 0.2), "total": _latency(p95)},
        "llm_metrics": {"status": "skipped", "reason": "no OpenAI-compatible endpoint configured"},
        "queries": [
            _query("q1", "an easy question about Paris", 0.9, 0.8),
            _query("q2", SCRIPT_TEXT, 0.2, 0.5, leaked=["p-secret"] if leaks else None),
            _query("q3", WORST_TEXT, 0.1, 0.0),
            _query("q4", "tied with the script query but better recall", 0.2, 0.9),
            _query("q5", "no judgements", None, None),
        ],
    }


RUNS = [_run(1, 0.60), _run(2, 0.61), _run(3, 0.58, leaks=3)]
THRESHOLDS = load_thresholds(DEFAULT_THRESHOLDS)


@pytest.fixture
def report(tmp_path: Path) -> str:
    baseline = _run(0, 0.55) | {"run_id": BASELINE_ID}
    path = write_report(RUNS, tmp_path / "out" / "report.html", baseline=baseline, worst=3)
    assert path == tmp_path / "out" / "report.html" and path.is_file()
    return path.read_text(encoding="utf-8")


def test_report_is_self_contained(report: str) -> None:
    assert "http://" not in report and "https://" not in report
    assert "<link" not in report and "<script" not in report
    assert report.count("data:image/png;base64,") >= 2


def test_report_shows_the_latest_leak_count_and_the_leaking_user(report: str) -> None:
    assert "<div class='leaks bad' id='leak-count'>3</div>" in report
    assert "<td class='num bad'><b>3</b></td>" in report  # u1's per-user leaks
    assert "p-secret" in report


def test_report_lists_the_worst_queries_in_order_and_escapes_them(report: str) -> None:
    worst = report.index(WORST_TEXT)
    escaped = report.index("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; what is a qubit?")
    tie = report.index("tied with the script query but better recall")
    assert worst < escaped < tie  # lowest nDCG first; on a tie, lower recall first
    assert "an easy question about Paris" not in report  # worst=3 leaves the best query out
    assert "<script>" not in report
    assert "p-rel-1 (2), p-rel-2 (1)" in report


def test_report_has_metrics_header_latency_and_llm_status(report: str) -> None:
    latest, previous = RUNS[-1]["run_id"], RUNS[-2]["run_id"]
    assert latest in report and previous in report and "abc123" in report
    assert "<td class='num bad'>-0.030</td>" in report  # nDCG@10 0.58 vs 0.61
    assert "<td class='num ok'>+0.030</td>" in report  # nDCG@10 0.58 vs baseline 0.55
    assert "recall@50" in report and "context_recall" in report
    assert "fidelity@10" in report and "p99 (ms)" in report
    assert "no OpenAI-compatible endpoint configured" in report


def test_report_baseline_column_only_when_given(report: str, tmp_path: Path) -> None:
    assert BASELINE_ID in report and "Δ vs baseline" in report
    plain = write_report(RUNS, tmp_path / "plain.html").read_text(encoding="utf-8")
    assert BASELINE_ID not in plain and "Δ vs baseline" not in plain
    assert "Δ vs previous" in plain


def test_report_of_a_single_clean_run(tmp_path: Path) -> None:
    run = _run(1, 0.6)
    run["queries"] = []
    text = write_report([run], tmp_path / "one.html").read_text(encoding="utf-8")
    assert "<div class='leaks ok' id='leak-count'>0</div>" in text
    assert text.count("data:image/png;base64,") == 1 and "no per-query timings" in text
    assert "Δ vs previous" not in text


def test_report_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_report([], tmp_path / "none.html")


def test_worst_queries_sorts_by_ndcg_then_recall_and_skips_unscored() -> None:
    queries = RUNS[-1]["queries"]
    assert [q["query_id"] for q in worst_queries(queries, 10)] == ["q3", "q2", "q4", "q1"]
    assert worst_queries(queries, 0) == []


# --- gate -----------------------------------------------------------------------------------------------


def _with(run: dict[str, Any], **metrics: float | None) -> dict[str, Any]:
    changed = copy.deepcopy(run)
    changed["metrics"].update({name.replace("_at_", "@"): value for name, value in metrics.items()})
    return changed


def test_shipped_thresholds() -> None:
    assert THRESHOLDS["max_drop"] == {"ndcg@10": 0.02, "recall@10": 0.02, "mrr@10": 0.03}
    assert THRESHOLDS["latency"]["max_p95_increase"] == 0.5
    assert THRESHOLDS["leaks"]["max"] == 0


def test_drop_beyond_threshold_fails_naming_the_metric() -> None:
    previous = _run(1, 0.61)
    result = check(_with(previous, ndcg_at_10=0.575), previous, THRESHOLDS)
    assert result == GateResult(
        passed=False, failures=["ndcg@10 dropped 0.035 (0.610 -> 0.575), more than 0.02 allowed"]
    )


def test_drop_within_threshold_passes() -> None:
    previous = _run(1, 0.61)
    latest = _with(previous, ndcg_at_10=0.59, recall_at_10=0.44, mrr_at_10=0.77)  # exactly at each limit
    assert check(latest, previous, THRESHOLDS) == GateResult(passed=True, failures=[])


def test_several_drops_are_all_reported() -> None:
    previous = _run(1, 0.61)
    result = check(_with(previous, ndcg_at_10=0.5, mrr_at_10=0.7), previous, THRESHOLDS)
    assert not result.passed
    assert [failure.split()[0] for failure in result.failures] == ["ndcg@10", "mrr@10"]


def test_any_leak_fails_even_without_previous() -> None:
    result = check(_run(1, 0.6, leaks=2), None, THRESHOLDS)
    assert not result.passed and result.failures == ["2 leaks (max 0): u1 2"]
    assert check(_run(1, 0.6), None, THRESHOLDS).passed


def test_per_user_leaks_count_when_the_total_is_missing() -> None:
    latest = _run(1, 0.6, leaks=1)
    latest["leaks"] = None
    assert check(latest, None, THRESHOLDS).failures == ["1 leak (max 0): u1 1"]


def test_null_metrics_are_skipped() -> None:
    previous = _with(_run(1, 0.61), recall_at_10=None)
    latest = _with(_run(2, 0.61), ndcg_at_10=None, recall_at_10=0.0)
    assert check(latest, previous, THRESHOLDS).passed
    assert not check(_with(latest, mrr_at_10=0.1), previous, THRESHOLDS).passed  # the other rules still apply


def test_latency_rule() -> None:
    previous = _run(1, 0.6, p95=20.0)
    slower = check(_run(2, 0.6, p95=31.0), previous, THRESHOLDS)
    assert slower.failures == ["total p95 latency rose 55% (20.0 -> 31.0 ms), more than 50% allowed"]
    assert check(_run(2, 0.6, p95=30.0), previous, THRESHOLDS).passed  # +50 % exactly
    tiny = _run(1, 0.6, p95=2.0)
    assert check(_run(2, 0.6, p95=6.0), tiny, THRESHOLDS).passed  # +200 % but only 4 ms: below the floor
    assert not check(_run(2, 0.6, p95=8.0), tiny, THRESHOLDS).passed


def test_no_previous_means_only_the_leak_rule() -> None:
    assert check(_with(_run(1, 0.0, p95=1e6), mrr_at_10=0.0), None, THRESHOLDS).passed


def test_invalid_thresholds_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[max_drop]\n"ndcg@10" = -0.1\n', encoding="utf-8")
    with pytest.raises(ValueError, match="ndcg@10"):
        load_thresholds(path)
