"""Chooses the index adapter from settings: the one place that knows which engines exist."""

from __future__ import annotations

from typing import assert_never, get_args

from core.index import VectorIndex
from core.settings import Settings
from retrieval.edge_host import EdgeHost
from retrieval.qdrant_index import CollectionOptions, QdrantIndex

SERVER_ENGINE = "qdrant-server"  # a Qdrant server, chosen by TESSERA_QDRANT_URL rather than by engine name


def engines() -> frozenset[str]:
    """Every engine `create_index` can build: each embedded engine Settings admits, and a Qdrant server."""
    return frozenset(get_args(Settings.model_fields["embedded_engine"].annotation)) | {SERVER_ENGINE}


def engine_of(settings: Settings) -> str:
    """The engine `create_index` builds for these settings."""
    return SERVER_ENGINE if settings.qdrant_url else settings.embedded_engine


def collection_options(settings: Settings) -> CollectionOptions:
    return CollectionOptions(
        on_disk=settings.qdrant_on_disk,
        quantization=settings.qdrant_quantization,
        shards=settings.qdrant_shards,
        replicas=settings.qdrant_replicas,
    )


def create_index(settings: Settings) -> VectorIndex:
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantIndex(
            settings.collection, url=settings.qdrant_url, api_key=api_key, options=collection_options(settings)
        )
    if settings.embedded_engine == "edge":
        return EdgeHost(settings.edge_path)
    if settings.embedded_engine == "qdrant-local":
        return QdrantIndex(settings.collection, path=settings.qdrant_path)
    assert_never(settings.embedded_engine)  # a new engine in Settings must get a branch here
