"""Retrieval: the vector index adapters, the ACL filter builder, search and prompt building."""

import core.offline  # noqa: F401  (offline switches before any third-party import)
