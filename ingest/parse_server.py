"""Imported once by the parse sandbox's fork server (ingest/sandbox.py): loads the parser, its language
model and the partitioners of every accepted type, so that each forked child starts warm."""

from __future__ import annotations

from ingest.parse import warm_up

warm_up()
