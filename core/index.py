"""The vector index port. One adapter per engine (retrieval/), chosen by settings in one factory.

Searching takes the authenticated Principal, never an optional filter: an adapter must build its filter
from the principal with the one filter builder and apply it inside the engine's search.

Versions: chunks are written not live; `publish` makes one version live and then removes the older ones,
so a query sees the old chunks or the new ones and never none. While both are briefly live, `search`
keeps only the newest version of each document it returns, so a query never sees both either.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from core.access import Principal
from core.records import ChunkPoint, SearchHit, StoredChunk, StoredVector


class SearchMode(enum.StrEnum):
    DENSE = "dense"  # the embedding model's vectors, cosine
    SPARSE = "sparse"  # BM25 term vectors
    HYBRID = "hybrid"  # both, fused by reciprocal rank


class VectorIndex(Protocol):
    def ensure_ready(self, dimension: int) -> None:
        """Create the collection and its payload indexes if they do not exist."""

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        """Write chunks, not yet live; ids are deterministic, so writing a chunk twice keeps one copy."""

    def publish(self, tenant: str, document_id: str, version: int, chunk_count: int) -> None:
        """Make the `chunk_count` chunks of `version` live, then remove every older version's chunks."""

    def set_acl(self, tenant: str, document_id: str, acl_tokens: Sequence[str]) -> None:
        """Replace the ACL on every chunk of the document (all versions) without re-embedding."""

    def delete_document(self, tenant: str, document_id: str) -> None:
        """Remove every chunk of the document."""

    def delete_version(self, tenant: str, document_id: str, version: int, from_chunk: int = 0) -> None:
        """Remove one version's chunks whose index is >= from_chunk (0: all of them)."""

    def count_document(self, tenant: str, document_id: str, version: int | None = None) -> int:
        """How many chunks of the document (of one version, if given) the index holds."""

    def chunks(self) -> list[StoredChunk]:
        """Every chunk the index holds, over all tenants, without text or vector: for `tessera check`."""

    def check(self) -> None:
        """Raise Unavailable unless the engine answers now and the collection exists (for /readyz)."""

    def search(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        """The `limit` best live chunks among those the principal may read, best first: nearest to `vector`
        (dense), best BM25 match of `text` (sparse), or both fused by reciprocal rank (hybrid)."""

    async def search_async(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        """`search` for a coroutine on the API's event loop, which it must not block while the engine works."""

    def optimize(self) -> bool:
        """Build the engine's search index over what was written since the last build, where the engine
        does not do so on its own; True if anything was built. Slow and blocking: for start-up and after
        bulk loads, never on the query path."""

    def vectors(self, tenant: str) -> list[StoredVector]:
        """Every chunk of the tenant with its vector and ACL (for offline checks, never for serving)."""

    def close(self) -> None:
        """Release the engine (embedded engines hold their directory until closed)."""


def newest_versions_only(hits: Sequence[SearchHit]) -> list[SearchHit]:
    """Drop hits of a document's older version when its newer version is also among the hits."""
    newest: dict[str, int] = {}
    for hit in hits:
        newest[hit.document_id] = max(hit.version, newest.get(hit.document_id, hit.version))
    return [hit for hit in hits if hit.version == newest[hit.document_id]]
