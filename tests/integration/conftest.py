from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.runtime import Runtime
from tests.helpers import settings_for


class Served:
    """A running embedded Tessera: the HTTP client and the process runtime behind it."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]


def serve(data_dir: Path, **overrides: object) -> Iterator[Served]:
    with TestClient(create_app(settings_for(data_dir, **overrides))) as client:
        yield Served(client)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One embedded service per test module (model, parser, Qdrant local mode, in-process worker)."""
    yield from serve(tmp_path_factory.mktemp("tessera"))
