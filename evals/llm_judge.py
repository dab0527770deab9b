"""LLM-judged metrics (Ragas: context precision with reference, faithfulness, answer relevancy) on a sample
of queries, when an OpenAI-compatible endpoint is configured; otherwise the run says they were skipped.
Never a constant or invented judge: without an endpoint there is no score, only the reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evals.datasets import BeirDataset

SKIPPED_REASON = (
    "no OpenAI-compatible endpoint configured "
    "(set TESSERA_EVAL_LLM_BASE_URL, TESSERA_EVAL_LLM_MODEL and TESSERA_EVAL_LLM_API_KEY)"
)


@dataclass(frozen=True)
class LlmJudgeSettings:
    base_url: str
    model: str
    api_key: str
    sample: int = 20


def judge(settings: LlmJudgeSettings | None, dataset: BeirDataset, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if settings is None:
        return {"status": "skipped", "reason": SKIPPED_REASON}
    return {
        "status": "skipped",
        "reason": "an endpoint is configured, but LLM-judged metrics are not implemented in this build yet",
    }
