"""Uploaded files, one per document version, kept under the data directory so a restarted worker (or a
worker in another process sharing the directory) can parse them, and a failed version can be retried.

File names from callers never become paths: a blob is stored under its document id and version only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.errors import TooLarge
from core.records import is_document_id

_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class StoredBlob:
    path: Path
    sha256: str
    size_bytes: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, document_id: str, version: int) -> Path:
        if not is_document_id(document_id) or version < 1:
            raise ValueError(f"not a document version: {document_id!r} v{version}")
        return self.root / f"{document_id}.v{version}"

    def save(self, document_id: str, version: int, source: BinaryIO, max_bytes: int) -> StoredBlob:
        """Copy `source` into the store while hashing it; TooLarge (and nothing kept) past max_bytes."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(document_id, version)
        partial = final.with_name(final.name + ".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with partial.open("wb") as out:
                while block := source.read(_COPY_BLOCK):
                    size += len(block)
                    if size > max_bytes:
                        raise TooLarge(f"the file is larger than the limit of {max_bytes // (1024 * 1024)} MB")
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(final)
        finally:
            partial.unlink(missing_ok=True)
        return StoredBlob(path=final, sha256=digest.hexdigest(), size_bytes=size)

    def delete(self, document_id: str, version: int | None = None, *, older_than: int | None = None) -> None:
        """Remove one version's file, the versions below `older_than`, or (neither given) all of them.

        Only removing all of them lists the directory, which holds every document's current file: the pipeline
        removes older versions after each document, and a listing per document grew with the store (a twentieth
        of an ingestion thread's time at 1,000 documents)."""
        self.path_for(document_id, 1)  # validates the id
        if version is None and older_than is None:
            versions = [
                int(path.name.rsplit(".v", 1)[1].removesuffix(".part")) for path in self.root.glob(f"{document_id}.v*")
            ]
        else:
            versions = [*([version] if version is not None else []), *range(1, older_than or 1)]
        for stored in versions:
            final = self.path_for(document_id, stored)
            final.unlink(missing_ok=True)
            final.with_name(final.name + ".part").unlink(missing_ok=True)
