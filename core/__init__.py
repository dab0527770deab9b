"""Tessera's shared kernel: settings, records, the principal and ACL encoding, the index port, errors.

Imports point one way: api -> ingest / retrieval -> core. Nothing here imports from those packages.
"""

import core.offline  # noqa: F401  (offline switches before any third-party import)
