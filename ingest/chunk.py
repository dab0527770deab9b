"""Chunk: elements -> token-bounded chunks that follow the document's structure.

A Title starts a new section; consecutive elements of one section and page form a block; small blocks on
the same page are packed together up to the chunk size, and a block larger than the chunk size is split at
sentence boundaries (llama-index's SentenceSplitter) with a small overlap. Sizes are cl100k_base tokens.
No chunk crosses a page boundary, so every chunk cites one page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import tiktoken
from llama_index.core.node_parser import SentenceSplitter

from core.records import Chunk, Element
from core.tokens import token_count, tokens

_TITLE = "Title"
# Longer than any chunk: splitting it loads the sentence tokenizer (nltk's punkt, through llama-index).
_WARM_UP_TEXT = "Tessera splits long blocks at sentence boundaries. " * 400
_BLOCK_SEPARATOR = "\n"  # elements are paragraphs, or lines of hard-wrapped text


def warm_up_sentence_splitting() -> None:
    """Load the sentence tokenizer now: llama-index imports nltk on the first split, 1.2 s that the first document
    with a block longer than a chunk would otherwise wait (and hold its thread for)."""
    SentenceSplitter(chunk_size=200, chunk_overlap=0, tokenizer=str.split).split_text(_WARM_UP_TEXT)


@dataclass
class _Block:
    section: str | None
    page: int | None
    texts: list[str]

    @property
    def text(self) -> str:
        return _BLOCK_SEPARATOR.join(self.texts)


class Chunker:
    def __init__(self, encoding: tiktoken.Encoding, chunk_tokens: int, overlap_tokens: int) -> None:
        if not 0 <= overlap_tokens < chunk_tokens:
            raise ValueError("overlap_tokens must be >= 0 and smaller than chunk_tokens")
        self.chunk_tokens = chunk_tokens
        self._encoding = encoding
        self._splitter = SentenceSplitter(
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            tokenizer=partial(tokens, encoding),
            paragraph_separator=_BLOCK_SEPARATOR,
        )

    def count(self, text: str) -> int:
        return token_count(self._encoding, text)

    def chunk(self, elements: Sequence[Element]) -> list[Chunk]:
        pieces: list[tuple[str, int, int | None, str | None]] = []  # text, its token count, page, section
        for block in self._packed(self._blocks(elements)):
            text = block.text
            tokens = self.count(text)
            if tokens <= self.chunk_tokens:
                pieces.append((text, tokens, block.page, block.section))
            else:
                parts = self._splitter.split_text(text)
                pieces.extend((part, self.count(part), block.page, block.section) for part in parts)
        kept = [piece for piece in pieces if piece[0].strip()]
        return [
            Chunk(index=i, text=text, page=page, section=section, token_count=tokens)
            for i, (text, tokens, page, section) in enumerate(kept)
        ]

    @staticmethod
    def _blocks(elements: Sequence[Element]) -> list[_Block]:
        blocks: list[_Block] = []
        section: str | None = None
        for element in elements:
            if element.kind == _TITLE:
                section = element.text[:200]
                blocks.append(_Block(section=section, page=element.page, texts=[element.text]))
                continue
            last = blocks[-1] if blocks else None
            if last is not None and last.section == section and last.page == element.page:
                last.texts.append(element.text)
            else:
                blocks.append(_Block(section=section, page=element.page, texts=[element.text]))
        return blocks

    def _packed(self, blocks: list[_Block]) -> list[_Block]:
        """Merge neighbouring small blocks of one page while they fit in one chunk."""
        packed: list[_Block] = []
        for block in blocks:
            last = packed[-1] if packed else None
            if (
                last is not None
                and last.page == block.page
                and self.count(last.text + _BLOCK_SEPARATOR + block.text) <= self.chunk_tokens
            ):
                last.texts.extend(block.texts)
            else:
                packed.append(_Block(section=block.section, page=block.page, texts=list(block.texts)))
        return packed
