"""Chooses the index adapter from settings: the one place that knows which engines exist."""

from __future__ import annotations

from core.index import VectorIndex
from core.settings import Settings
from retrieval.edge_index import EdgeIndex
from retrieval.qdrant_index import QdrantIndex


def create_index(settings: Settings) -> VectorIndex:
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantIndex(settings.collection, url=settings.qdrant_url, api_key=api_key)
    if settings.embedded_engine == "edge":
        return EdgeIndex(settings.edge_path)
    return QdrantIndex(settings.collection, path=settings.qdrant_path)
