"""Refuses hostile ZIP-based documents (DOCX, PPTX, XLSX, ODT, EPUB) before a parser opens them.

Every entry is decompressed once through a bounded stream, so the limits hold against what the bytes
really expand to, not what the archive's directory declares. The limits (settings, with the reasons):
- entries: a real office file has tens to a few hundred parts; thousands is a parser-time attack;
- total decompressed size: what the parser would hold in memory as XML trees is several times this;
- compression ratio of any entry past 1 MiB: the shared documents' worst entry is 32:1 (XML styles);
  deflate cannot exceed about 1,032:1, which is where bombs live.
XML parts may not declare entities (<!ENTITY: how billion-laughs and XXE attacks work, and something no
office format needs), and OOXML parts may not carry a DOCTYPE at all.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from core.errors import DocumentRejected

_READ_BYTES = 64 * 1024
_RATIO_FLOOR_BYTES = 1024 * 1024  # small entries may compress well (a run of spaces); ratios count above this
_XML_SUFFIXES = (".xml", ".rels", ".xhtml", ".html", ".htm", ".opf", ".ncx", ".svg", ".vml")
# Byte patterns in the encodings an XML part may use (UTF-8 and its ASCII subsets, UTF-16 either order).
_ENTITY = tuple("<!ENTITY".encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be"))
_DOCTYPE = tuple("<!DOCTYPE".encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be"))
_OVERLAP = max(len(pattern) for pattern in _ENTITY + _DOCTYPE) - 1


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_total_bytes: int
    max_ratio: float


def check_archive(path: Path, limits: ArchiveLimits, *, forbid_doctype: bool) -> None:
    """DocumentRejected, with the reason, unless the archive stays within the limits and its XML is inert."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DocumentRejected(f"damaged archive: {exc}") from exc
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.max_entries:
            raise DocumentRejected(f"the archive holds {len(entries)} entries; the limit is {limits.max_entries}")
        total = 0
        for entry in entries:
            total += _check_entry(archive, entry, limits, limits.max_total_bytes - total, forbid_doctype)


def _check_entry(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, limits: ArchiveLimits, budget: int, forbid_doctype: bool
) -> int:
    if entry.flag_bits & 0x1:
        raise DocumentRejected(f"the archive entry {entry.filename!r} is encrypted")
    is_xml = entry.filename.lower().endswith(_XML_SUFFIXES)
    size = 0
    tail = b""
    try:
        with archive.open(entry) as stream:
            while block := stream.read(_READ_BYTES):
                size += len(block)
                if size > budget:
                    raise DocumentRejected(
                        f"the archive decompresses past the limit of {limits.max_total_bytes // (1024 * 1024)} MiB"
                    )
                if size > _RATIO_FLOOR_BYTES and size > limits.max_ratio * max(entry.compress_size, 1):
                    raise DocumentRejected(
                        f"the archive entry {entry.filename!r} expands more than {limits.max_ratio:.0f} times "
                        "(a decompression bomb)"
                    )
                if is_xml:
                    window = tail + block
                    if any(pattern in window for pattern in _ENTITY):
                        raise DocumentRejected(
                            f"the archive entry {entry.filename!r} declares XML entities, which are refused"
                        )
                    if forbid_doctype and any(pattern in window for pattern in _DOCTYPE):
                        raise DocumentRejected(f"the archive entry {entry.filename!r} has a DOCTYPE, which is refused")
                    tail = window[-_OVERLAP:]
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
        raise DocumentRejected(f"damaged archive entry {entry.filename!r}: {exc}") from exc
    return size
