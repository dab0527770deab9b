"""The HTTP API, the process runtime that wires the engines together, and the CLI."""

import core.offline  # noqa: F401  (offline switches before any third-party import)
