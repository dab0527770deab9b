"""BEIR-layout retrieval datasets: corpus.jsonl, queries.jsonl, qrels/test.tsv (graded relevance)."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    @property
    def document_text(self) -> str:
        """What is uploaded for the passage: its title, then its text."""
        return f"{self.title}\n\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class BeirDataset:
    name: str
    path: Path
    passages: dict[str, Passage]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> passage id -> grade (only passages in the corpus)


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    # Split on "\n" only: some texts hold U+2028, which str.splitlines() would also split on.
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            yield json.loads(line)


def load_beir(
    path: Path, *, max_queries: int | None = None, extra_passages: int | None = None, seed: int = 13
) -> BeirDataset:
    """Load a BEIR dataset. With `max_queries`, keep that many queries (those with a relevant passage,
    in file order), every passage they judge, and `extra_passages` other passages drawn with `seed`."""
    for part in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        if not (path / part).is_file():
            raise FileNotFoundError(f"{path} is not a BEIR dataset: {part} is missing")
    passages = {
        str(row["_id"]): Passage(id=str(row["_id"]), title=str(row.get("title") or ""), text=str(row["text"]))
        for row in _jsonl(path / "corpus.jsonl")
    }
    queries = {str(row["_id"]): str(row["text"]) for row in _jsonl(path / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with (path / "qrels" / "test.tsv").open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)  # header
        for query_id, passage_id, grade in reader:
            if query_id in queries and passage_id in passages:
                qrels.setdefault(query_id, {})[passage_id] = int(grade)
    judged = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
    if max_queries is not None:
        judged = judged[:max_queries]
        keep = {p for q in judged for p in qrels[q]}
        others = sorted(set(passages) - keep)
        keep |= set(random.Random(seed).sample(others, min(len(others), extra_passages or 0)))
        passages = {pid: passages[pid] for pid in passages if pid in keep}
    return BeirDataset(
        name=path.name,
        path=path,
        passages=passages,
        queries={q: queries[q] for q in judged},
        qrels={q: qrels[q] for q in judged},
    )
