"""Imported once by the parse sandbox's fork server (ingest/sandbox.py): loads the parser, its language
model and the partitioners of every accepted type, so that each forked child starts warm.

Without torch: thinc (spaCy's) imports torch whenever it is installed, only to offer it as a backend, and
nothing the parser runs uses it (the language model runs on thinc's numpy ops; unstructured's fast strategy
needs no layout model). Marked missing before anything imports it, the fork server loaded in 3.6 s instead
of 5.1 s with 483 instead of 665 MiB resident (2026-12-07), and each child starts 120 MiB further from its
data cap. The first documents after a start wait for this load.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("torch", None)  # type: ignore[arg-type]  # None: `import torch` raises ImportError

from ingest.parse import warm_up  # noqa: E402  # after torch is marked missing

warm_up()
