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


def enforce() -> None:
    """Set the offline switches for this process (idempotent)."""
    for name, value in _SWITCHES.items():
        os.environ[name] = value


enforce()
