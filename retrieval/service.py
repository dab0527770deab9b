"""Retrieval: embed the question, search with the caller's filter inside the engine, build the prompt."""

from __future__ import annotations

from dataclasses import dataclass

import tiktoken

from core.access import Principal
from core.embedding import Embedder
from core.index import VectorIndex
from core.records import SearchHit
from retrieval.prompt import BuiltPrompt, build_prompt


@dataclass(frozen=True)
class QueryResult:
    hits: list[SearchHit]
    prompt: BuiltPrompt


class Retriever:
    def __init__(self, *, index: VectorIndex, embedder: Embedder, encoding: tiktoken.Encoding) -> None:
        self.index = index
        self.embedder = embedder
        self.encoding = encoding

    def search(self, principal: Principal, question: str, top_k: int) -> list[SearchHit]:
        vector = self.embedder.encode([question])[0]
        return self.index.search(principal, [float(x) for x in vector], top_k)

    def query(self, principal: Principal, question: str, top_k: int, max_context_tokens: int) -> QueryResult:
        hits = self.search(principal, question, top_k)
        return QueryResult(hits=hits, prompt=build_prompt(question, hits, max_context_tokens, self.encoding))
