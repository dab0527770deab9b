"""Parse: uploaded bytes -> structural elements, with unstructured (fast strategy for PDFs, no OCR).

Refusals are DocumentRejected with a reason a person can read; the document then ends `failed`. The
pipeline parses through IsolatedParser: the archive and page checks, then unstructured, in a sandboxed
child process (ingest/sandbox.py).
"""

from __future__ import annotations

import codecs
import importlib
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pypdf
from pypdf.errors import PdfReadError
from unstructured.cleaners.core import auto_paragraph_grouper
from unstructured.documents.elements import Element as UnstructuredElement
from unstructured.errors import UnprocessableEntityError
from unstructured.file_utils.filetype import detect_filetype
from unstructured.file_utils.model import FileType
from unstructured.nlp.patterns import PARAGRAPH_PATTERN
from unstructured.partition.auto import partition

from core.errors import DocumentRejected, UnsupportedType
from core.records import Element
from core.settings import Settings
from ingest import tagging
from ingest.archive import ArchiveLimits, check_archive
from ingest.sandbox import ChildLimits, ChildPool

log = logging.getLogger(__name__)

# What Tessera accepts, by the type detected from the bytes (libmagic) and the file name.
SUPPORTED_TYPES: dict[FileType, str] = {
    FileType.PDF: "pdf",
    FileType.DOCX: "docx",
    FileType.PPTX: "pptx",
    FileType.XLSX: "xlsx",
    FileType.ODT: "odt",
    FileType.RTF: "rtf",
    FileType.EPUB: "epub",
    FileType.HTML: "html",
    FileType.MD: "md",
    FileType.TXT: "txt",
    FileType.CSV: "csv",
    FileType.TSV: "tsv",
    FileType.EML: "eml",
}
SUPPORTED_NAMES = ", ".join(sorted(SUPPORTED_TYPES.values()))
_SKIPPED_CATEGORIES = {"PageBreak", "Image"}
_TEXT_TYPES = {FileType.TXT, FileType.MD, FileType.CSV, FileType.TSV, FileType.HTML}
_SNIFF_BYTES = 8192
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_ARCHIVE_TYPES = {FileType.DOCX, FileType.PPTX, FileType.XLSX, FileType.ODT, FileType.EPUB}
_OOXML_TYPES = {FileType.DOCX, FileType.PPTX, FileType.XLSX}  # no DOCTYPE in any of their parts
_PARTITIONERS = ("docx", "pptx", "xlsx", "odt", "epub", "rtf", "html", "md", "text", "csv", "tsv", "email", "pdf")


@dataclass(frozen=True)
class ParseLimits:
    child: ChildLimits
    archive: ArchiveLimits
    pdf_max_pages: int


def _text_paragraphs(path: Path, encoding: str | None) -> list[str]:
    """The paragraphs unstructured's text partitioner classifies, found as it finds them; [] when the encoding
    is left to unstructured to detect."""
    if encoding is None:
        return []
    text = auto_paragraph_grouper(path.read_text(encoding=encoding))
    return [paragraph.strip() for paragraph in re.split(PARAGRAPH_PATTERN, text.strip()) if paragraph.strip()]


# The only place Tessera reaches into unstructured: its questions to spaCy are answered by ingest/tagging.py.
tagging.install()


def detect_type(source: BinaryIO, file_name: str) -> FileType:
    """The file's type from its bytes (and its name as a hint); UnsupportedType when Tessera cannot parse it."""
    position = source.tell()
    try:
        head = source.read(_SNIFF_BYTES)
        source.seek(position)
        file_type = detect_filetype(file=source, metadata_file_path=file_name)
    except (UnprocessableEntityError, ValueError) as exc:  # bytes in no encoding it can tell (UnicodeDecodeError)
        raise UnsupportedType(
            f"the file's type cannot be told from its bytes; supported types: {SUPPORTED_NAMES}"
        ) from exc
    finally:
        source.seek(position)
    if file_type in _TEXT_TYPES and b"\x00" in head and not head.startswith(_UTF16_BOMS):
        # unstructured takes the name's word for text; text has no NUL bytes unless it is UTF-16 (with a BOM).
        raise UnsupportedType(f"binary content under a text file's name; supported types: {SUPPORTED_NAMES}")
    if file_type is FileType.EMPTY:
        # Accepted by its name, so that it ends `failed` with a reason instead of vanishing at the door.
        file_type = FileType.from_extension(Path(file_name).suffix.lower()) or FileType.TXT
    if file_type not in SUPPORTED_TYPES:
        raise UnsupportedType(f"unsupported file type ({file_type.name.lower()}); supported types: {SUPPORTED_NAMES}")
    return file_type


def _check_pdf(path: Path, max_pages: int) -> None:
    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentRejected("encrypted PDF: no extractable text without the password")
        pages = len(reader.pages)
    except PdfReadError as exc:
        raise DocumentRejected(f"damaged PDF: {exc}") from exc
    if pages > max_pages:
        raise DocumentRejected(f"the PDF has {pages} pages; the limit is {max_pages}")


def _text_encoding(path: Path, file_type: FileType) -> str | None:
    """UTF-8 when a text file decodes as UTF-8: unstructured's guess can read it as Latin-1 (mojibake)."""
    if file_type not in _TEXT_TYPES:
        return None
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None  # let unstructured detect it
    return "utf-8"


def parse_limits(settings: Settings) -> ParseLimits:
    return ParseLimits(
        child=ChildLimits(memory_bytes=settings.parse_memory_mb * 2**20, seconds=settings.parse_timeout_s),
        archive=ArchiveLimits(
            max_entries=settings.archive_max_entries,
            max_total_bytes=settings.archive_max_uncompressed_mb * 2**20,
            max_ratio=settings.archive_max_ratio,
        ),
        pdf_max_pages=settings.pdf_max_pages,
    )


def warm_up() -> None:
    """Load the language model and every partitioner now (unstructured imports them on first use), and
    partition one short text, whose first call fills caches (7 ms) that every forked child would fill again."""
    tagging.language_model()
    for name in _PARTITIONERS:
        importlib.import_module(f"unstructured.partition.{name}")
    with tempfile.TemporaryDirectory(prefix="tessera-warm-") as folder:
        sample = Path(folder) / "warm.txt"
        sample.write_text("Tessera warms its parser. The first call fills caches; later ones reuse them.\n")
        partition(filename=str(sample), content_type=FileType.TXT.mime_type, strategy="fast", languages=["eng"])


class IsolatedParser:
    """The pipeline's parse step: `parse` in a sandboxed child, within the limits. A child parses only the
    documents of one `owner` key (the pipeline's: tenant and owner), one after another (ingest/sandbox.py)."""

    def __init__(self, limits: ParseLimits) -> None:
        self.limits = limits
        self.children = ChildPool()

    def parse(self, path: Path, file_type: FileType, file_name: str, *, owner: str) -> list[Element]:
        elements: list[Element] = self.children.run(
            owner, parse, path, file_type, file_name, self.limits, limits=self.limits.child, what="parsing"
        )
        return elements

    def close(self) -> None:
        self.children.close()


def parse(path: Path, file_type: FileType, file_name: str, limits: ParseLimits) -> list[Element]:
    """Check the file against the limits, then partition it into elements with text; DocumentRejected when
    it is refused or there is nothing to index."""
    if file_type in _ARCHIVE_TYPES:
        check_archive(path, limits.archive, forbid_doctype=file_type in _OOXML_TYPES)
    if file_type is FileType.PDF:
        _check_pdf(path, limits.pdf_max_pages)
    try:
        encoding = _text_encoding(path, file_type)
        paragraphs = _text_paragraphs(path, encoding) if file_type is FileType.TXT else []
        with tagging.tagging(paragraphs):
            parts: list[UnstructuredElement] = partition(
                filename=str(path),
                content_type=file_type.mime_type,
                encoding=encoding,
                metadata_filename=file_name,
                strategy="fast",
                languages=["eng"],
            )
    except DocumentRejected:
        raise
    except Exception as exc:  # the parser's failures are the document's: same bytes, same error
        log.info("parser failed on %s: %r", file_name, exc)
        raise DocumentRejected(f"could not parse the file as {SUPPORTED_TYPES[file_type]}: {exc}") from exc
    elements = [
        Element(text=part.text.strip(), kind=part.category, page=part.metadata.page_number)
        for part in parts
        if part.category not in _SKIPPED_CATEGORIES and part.text and part.text.strip()
    ]
    if not elements:
        detail = " (a scanned PDF would need OCR, which is not enabled)" if file_type is FileType.PDF else ""
        raise DocumentRejected(f"no extractable text: the file is empty or holds only whitespace{detail}")
    return elements
