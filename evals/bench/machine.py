"""The machine and the settings a benchmark figure was measured with, recorded beside every figure.

A throughput or a latency means little without them: the CPU model and count bound the embedding rate, the
load average says whether the CPUs were shared during the run, and the versions and the commit say which code
was measured.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from core.settings import Settings

_REPO_ROOT = Path(__file__).resolve().parents[2]
# The settings that change what the benchmarks measure; recorded with every run.
RECORDED_SETTINGS = (
    "queue",
    "embedded_engine",
    "qdrant_url",
    "worker_concurrency",
    "embed_backend",
    "embed_batch_size",
    "default_search_mode",
    "chunk_tokens",
    "chunk_overlap_tokens",
    "default_top_k",
    "default_max_context_tokens",
)


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the repository, or None where git or the repository is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def head_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    return _git("rev-parse", "HEAD") or None


def git_commit() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it (then the commit alone is not the code)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head_commit(), "dirty": bool(status) if status is not None else None}


def machine_record() -> dict[str, Any]:
    """CPU count and model, total memory, load average, OS, Python, torch, qdrant-edge and git commit."""
    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or None,
    )
    memory_kb = next((int(line.split()[1]) for line in _read_lines("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kb / 2**20, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "onnxruntime": _package_version("onnxruntime"),
        "qdrant_edge": _package_version("qdrant-edge-py"),
        "git": git_commit(),
    }


def settings_record(settings: Settings, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings that shape the figures (the server's, computed from the same environment and overrides)."""
    record: dict[str, Any] = {name: getattr(settings, name) for name in RECORDED_SETTINGS}
    record["overrides"] = dict(sorted((overrides or {}).items()))
    return record
