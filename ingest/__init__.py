"""Ingestion: parse, chunk, embed and index uploaded documents; the Celery task that runs it."""

import core.offline  # noqa: F401  (offline switches before any third-party import)
