from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.assets import load_encoding
from core.records import Element
from ingest.chunk import Chunker

pytestmark = pytest.mark.unit

ENCODING = load_encoding()


def _sentence(i: int) -> str:
    return f"Sentence number {i} talks about topic {i % 7} in some detail for the reader."


def _elements() -> list[Element]:
    long_paragraph = " ".join(_sentence(i) for i in range(120))
    return [
        Element("Introduction", "Title", page=1),
        Element("A short opening paragraph.", "NarrativeText", page=1),
        Element("Another short one.", "NarrativeText", page=1),
        Element("Methods", "Title", page=1),
        Element(long_paragraph, "NarrativeText", page=1),
        Element("Still methods, on the next page.", "NarrativeText", page=2),
        Element("Results", "Title", page=3),
        Element("Tiny.", "NarrativeText", page=3),
    ]


def test_chunks_respect_the_token_limit_and_are_numbered_from_zero() -> None:
    chunker = Chunker(ENCODING, chunk_tokens=120, overlap_tokens=15)
    chunks = chunker.chunk(_elements())
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(0 < c.token_count <= 120 for c in chunks)
    assert all(c.token_count == len(ENCODING.encode(c.text)) for c in chunks)


def test_special_tokens_text_is_chunked_as_ordinary_text() -> None:
    # A long block holding "<|endoftext|>": the splitter's tokenizer raised ValueError on it, which the pipeline
    # retried as a transient error and then failed the document with.
    long_paragraph = " ".join(f"{_sentence(i)} It mentions <|endoftext|> and <|fim_prefix|>." for i in range(60))
    chunks = Chunker(ENCODING, chunk_tokens=120, overlap_tokens=15).chunk([Element(long_paragraph, "NarrativeText")])
    assert len(chunks) > 3 and all("<|endoftext|>" in c.text for c in chunks)
    assert all(0 < c.token_count <= 120 for c in chunks)
    assert all(c.token_count == len(ENCODING.encode(c.text, disallowed_special=())) for c in chunks)


def test_chunks_follow_sections_and_never_cross_a_page() -> None:
    chunks = Chunker(ENCODING, chunk_tokens=120, overlap_tokens=15).chunk(_elements())
    first = chunks[0]
    assert first.section == "Introduction" and first.page == 1
    assert "A short opening paragraph." in first.text and "Another short one." in first.text
    methods = [c for c in chunks if c.section == "Methods"]
    assert len(methods) > 3  # the long paragraph was split
    assert {c.page for c in methods} == {1, 2}
    assert any("Still methods, on the next page." in c.text and c.page == 2 for c in methods)
    assert chunks[-1].section == "Results" and chunks[-1].page == 3 and "Tiny." in chunks[-1].text


def test_every_sentence_survives_chunking() -> None:
    chunks = Chunker(ENCODING, chunk_tokens=120, overlap_tokens=15).chunk(_elements())
    joined = " ".join(c.text for c in chunks)
    for i in range(120):
        assert _sentence(i) in joined


def test_small_blocks_of_one_page_are_packed_together() -> None:
    elements = [Element(f"Heading {i}", "Title", page=1) for i in range(10)]
    chunks = Chunker(ENCODING, chunk_tokens=200, overlap_tokens=20).chunk(elements)
    assert len(chunks) == 1 and chunks[0].section == "Heading 0"


def test_overlap_must_be_smaller_than_the_chunk() -> None:
    with pytest.raises(ValueError):
        Chunker(ENCODING, chunk_tokens=100, overlap_tokens=100)


def test_the_warm_up_loads_the_sentence_tokenizer_the_first_split_needs() -> None:
    # In a fresh interpreter: this one may have loaded it already.
    script = (
        "from llama_index.core.utils import globals_helper as g\n"
        "from ingest.chunk import warm_up_sentence_splitting\n"
        "assert g._punkt_tokenizer is None\n"
        "warm_up_sentence_splitting()\n"
        "assert g._punkt_tokenizer is not None\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
