"""Run records, one JSON file per run under the results directory, so runs can be compared over time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_run(results_dir: Path, record: dict[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{record['run_id']}.json"
    partial = path.with_suffix(".json.part")
    partial.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    partial.replace(path)
    return path


def load_runs(results_dir: Path, suite: str | None = None) -> list[dict[str, Any]]:
    """Runs oldest first (run ids start with their UTC start time), of one suite if given."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(results_dir.glob("*.json"))]
    return [r for r in runs if suite is None or r["suite"] == suite]
