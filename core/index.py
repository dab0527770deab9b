"""The vector index port. One adapter per engine (retrieval/), chosen by settings in one factory.

Searching takes the authenticated Principal, never an optional filter: an adapter must build its filter
from the principal with the one filter builder and apply it inside the engine's search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from core.access import Principal
from core.records import ChunkPoint, SearchHit


class VectorIndex(Protocol):
    def ensure_ready(self, dimension: int) -> None:
        """Create the collection and its payload indexes if they do not exist."""

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        """Write chunks; ids are deterministic, so writing the same chunk twice keeps one copy."""

    def delete_document(self, tenant: str, document_id: str, from_chunk: int = 0) -> None:
        """Remove a document's chunks whose index is >= from_chunk (0: all of them)."""

    def count_document(self, tenant: str, document_id: str) -> int:
        """How many chunks of the document the index holds."""

    def search(self, principal: Principal, vector: Sequence[float], limit: int) -> list[SearchHit]:
        """The `limit` nearest chunks among those the principal may read, best first."""

    def close(self) -> None:
        """Release the engine (embedded engines hold their directory until closed)."""
