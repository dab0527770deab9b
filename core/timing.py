"""Wall-clock timing of named steps, for the figures a run reports (ingestion stages, benchmark builds)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Add the block's wall-clock seconds to `seconds[step]` (a step timed twice accumulates)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - started
