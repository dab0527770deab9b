"""The blob store removes exactly the versions asked for, its unfinished copies included, and nothing of another
document's."""

from __future__ import annotations

import io
from pathlib import Path

from core.blobs import BlobStore

DOC = "a" * 32
OTHER = "b" * 32


def _store(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "blobs")
    for document_id in (DOC, OTHER):
        for version in (1, 2, 3, 4):
            store.save(document_id, version, io.BytesIO(b"x"), max_bytes=10)
    (store.root / f"{DOC}.v2.part").write_bytes(b"a copy cut short")
    return store


def _left(store: BlobStore) -> set[str]:
    return {path.name for path in store.root.iterdir()}


def _versions(document_id: str, *versions: int) -> set[str]:
    return {f"{document_id}.v{version}" for version in versions}


def test_older_versions_one_version_then_all(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.delete(DOC, older_than=3)
    assert _left(store) == _versions(DOC, 3, 4) | _versions(OTHER, 1, 2, 3, 4)
    store.delete(DOC, 4)
    assert _left(store) == _versions(DOC, 3) | _versions(OTHER, 1, 2, 3, 4)
    store.delete(DOC, older_than=1)  # nothing is older than the first version
    assert _left(store) == _versions(DOC, 3) | _versions(OTHER, 1, 2, 3, 4)
    (store.root / f"{DOC}.v7.part").write_bytes(b"")
    store.delete(DOC)
    assert _left(store) == _versions(OTHER, 1, 2, 3, 4)


def test_removing_what_is_not_there_is_harmless(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.delete(DOC, 9)
    store.delete(DOC, older_than=2)
    store.delete(DOC, older_than=2)
    assert _left(store) == {f"{DOC}.v2.part"} | _versions(DOC, 2, 3, 4) | _versions(OTHER, 1, 2, 3, 4)


def test_one_version_and_the_older_ones_at_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.delete(DOC, 4, older_than=2)
    assert _left(store) == {f"{DOC}.v2.part"} | _versions(DOC, 2, 3) | _versions(OTHER, 1, 2, 3, 4)
