"""The regression gate for nightly evaluation runs.

`check` compares the latest run record with the previous one of the same suite against the thresholds in
`thresholds.toml` and returns every rule it breaks as a readable sentence: a relevance metric that dropped
more than allowed, total p95 latency that rose more than allowed, and — always, even with no previous
run — any ACL leak.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_THRESHOLDS = Path(__file__).with_name("thresholds.toml")

_EPSILON = 1e-9  # 0.61 - 0.59 is 0.020000000000000018 in floating point: a drop of exactly the limit passes


@dataclass(frozen=True)
class GateResult:
    """The verdict: `passed` is true when `failures` is empty."""

    passed: bool
    failures: list[str]


def load_thresholds(path: Path = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Read and validate a thresholds TOML file (see evals/thresholds.toml for the format)."""
    with path.open("rb") as handle:
        thresholds = tomllib.load(handle)
    _validate(thresholds, path)
    return thresholds


def check(latest: Mapping[str, Any], previous: Mapping[str, Any] | None, thresholds: Mapping[str, Any]) -> GateResult:
    """Check `latest` against `previous` (None for a suite's first run: only the leak rule applies)."""
    failures = _leak_failures(latest, thresholds)
    if previous is not None:
        failures += _metric_failures(latest, previous, thresholds)
        failures += _latency_failures(latest, previous, thresholds)
    return GateResult(passed=not failures, failures=failures)


def leak_count(run: Mapping[str, Any]) -> int | None:
    """The run's leak count: `leaks`, or the per-user sum where that is larger or `leaks` is missing."""
    total = _number(run.get("leaks"))
    per_user = [_number(stats.get("leaks")) for stats in (run.get("per_user") or {}).values()]
    known = [value for value in per_user if value is not None]
    per_user_total = sum(known) if known else None
    candidates = [value for value in (total, per_user_total) if value is not None]
    return int(max(candidates)) if candidates else None


def _leak_failures(latest: Mapping[str, Any], thresholds: Mapping[str, Any]) -> list[str]:
    allowed = int(thresholds.get("leaks", {}).get("max", 0))
    count = leak_count(latest)
    if count is None or count <= allowed:
        return []
    by_user = [
        f"{user} {int(stats['leaks'])}"
        for user, stats in sorted((latest.get("per_user") or {}).items())
        if (_number(stats.get("leaks")) or 0) > 0
    ]
    detail = f": {', '.join(by_user)}" if by_user else ""
    noun = "leak" if count == 1 else "leaks"
    return [f"{count} {noun} (max {allowed}){detail}"]


def _metric_failures(
    latest: Mapping[str, Any], previous: Mapping[str, Any], thresholds: Mapping[str, Any]
) -> list[str]:
    failures = []
    new_metrics = latest.get("metrics") or {}
    old_metrics = previous.get("metrics") or {}
    for name, allowed in thresholds.get("max_drop", {}).items():
        new, old = _number(new_metrics.get(name)), _number(old_metrics.get(name))
        if new is None or old is None:
            continue
        drop = old - new
        if drop > allowed + _EPSILON:
            failures.append(f"{name} dropped {drop:.3f} ({old:.3f} -> {new:.3f}), more than {allowed:g} allowed")
    return failures


def _latency_failures(
    latest: Mapping[str, Any], previous: Mapping[str, Any], thresholds: Mapping[str, Any]
) -> list[str]:
    rules = thresholds.get("latency", {})
    allowed = rules.get("max_p95_increase")
    new, old = _total_p95(latest), _total_p95(previous)
    if allowed is None or new is None or old is None or old <= 0:
        return []
    increase = (new - old) / old
    if increase <= allowed + _EPSILON or new - old < float(rules.get("min_p95_increase_ms", 0.0)):
        return []
    return [f"total p95 latency rose {increase:.0%} ({old:.1f} -> {new:.1f} ms), more than {allowed:.0%} allowed"]


def _total_p95(run: Mapping[str, Any]) -> float | None:
    return _number(((run.get("latency_ms") or {}).get("total") or {}).get("p95"))


def _number(value: Any) -> float | None:
    """A finite number as float; None for null, NaN, booleans and anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _validate(thresholds: Mapping[str, Any], path: Path) -> None:
    limits = dict(thresholds.get("max_drop", {}))
    limits.update({f"latency.{key}": value for key, value in thresholds.get("latency", {}).items()})
    limits.update({f"leaks.{key}": value for key, value in thresholds.get("leaks", {}).items()})
    for name, value in limits.items():
        if _number(value) is None or value < 0:
            raise ValueError(f"{path}: threshold {name!r} must be a non-negative number, got {value!r}")
