"""`tessera serve` runs uvicorn with its defaults (loop and HTTP parser "auto"): with uvloop and httptools
installed, as pyproject requires, it picks both, and the query rate depends on it (docs/performance.md)."""

from __future__ import annotations

import pytest
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

pytestmark = pytest.mark.unit


def test_uvicorn_picks_the_c_event_loop_and_http_parser() -> None:
    config = uvicorn.Config(FastAPI(), log_config=None)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    loop_factory = config.get_loop_factory()
    assert loop_factory is not None
    loop = loop_factory()
    try:
        assert type(loop).__module__.startswith("uvloop"), type(loop)
    finally:
        loop.close()
