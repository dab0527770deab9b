"""Tessera never reaches the network at run time. Libraries that would (a telemetry ping on import, a model
hub lookup) are switched off here, before they are imported: every top-level package imports this module
first (see the package __init__ files).
"""

from __future__ import annotations

import os

_SWITCHES = {
    "HF_HUB_OFFLINE": "1",  # sentence-transformers / transformers: never ask the hub
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",  # unstructured: no analytics ping on import or per partition call
    "SCARF_NO_ANALYTICS": "1",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "RAGAS_DO_NOT_TRACK": "true",  # ragas: no usage event posted per metric call (nothing is sent on import)
    "TOKENIZERS_PARALLELISM": "false",  # no fork warnings from the Rust tokenizer under Celery's prefork
}


# Defaults an operator may override. OpenMP threads that wait for work by spinning fight every other thread of
# the process (parsing, HTTP) for 2 cores: measured here with another process busy, one query's embedding took
# p50 17 ms, p95 475 ms with spinning threads, and p50 13 ms, p95 23 ms with passive ones. OpenMP reads this
# once, when torch loads it, so it must be set before torch is imported.
_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def enforce() -> None:
    """Set the offline switches and the thread defaults for this process (idempotent)."""
    for name, value in _SWITCHES.items():
        os.environ[name] = value
    for name, value in _DEFAULTS.items():
        os.environ.setdefault(name, value)


enforce()
