"""Evaluation suites: relevance and retrieval time over BEIR datasets, ACL-aware, with history and a report."""

import core.offline  # noqa: F401  (offline switches before any third-party import)
