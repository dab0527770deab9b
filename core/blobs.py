"""Uploaded files, kept under the data directory until their ingestion ends, so a restarted worker
(or a worker in another process sharing the directory) can parse them.

File names from callers never become paths: a blob is stored under its document id only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.errors import TooLarge

_DOCUMENT_ID = re.compile(r"^[0-9a-f]{32}$")
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class StoredBlob:
    path: Path
    sha256: str
    size_bytes: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, document_id: str) -> Path:
        if not _DOCUMENT_ID.match(document_id):
            raise ValueError(f"not a document id: {document_id!r}")
        return self.root / document_id

    def save(self, document_id: str, source: BinaryIO, max_bytes: int) -> StoredBlob:
        """Copy `source` into the store while hashing it; TooLarge (and nothing kept) past max_bytes."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(document_id)
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

    def open(self, document_id: str) -> BinaryIO:
        return self.path_for(document_id).open("rb")

    def delete(self, document_id: str) -> None:
        self.path_for(document_id).unlink(missing_ok=True)

    def copy_to(self, document_id: str, target: Path) -> None:
        shutil.copyfile(self.path_for(document_id), target)
