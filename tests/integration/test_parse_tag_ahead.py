"""Text files' paragraphs are tagged by spaCy in batches (ingest/parse.py, _TagAhead): the same elements as one
spaCy call per paragraph, on real files, with the real parser and language model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import spacy
import unstructured.nlp.tokenize as unstructured_tokenize
from pydantic import SecretStr
from unstructured.file_utils.model import FileType

import ingest.parse as parse_module
from core.errors import DocumentRejected
from core.settings import Settings
from evals.datasets import load_beir

pytestmark = pytest.mark.integration

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
LIMITS = parse_module.parse_limits(Settings(jwt_secret=SecretStr("t" * 40)))


def _forget_unstructured_caches() -> None:
    """unstructured memoizes its spaCy answers by text: without this a second parse would ask spaCy nothing."""
    for cached in (
        unstructured_tokenize._process_cached,
        unstructured_tokenize.pos_tag,
        unstructured_tokenize.word_tokenize,
        unstructured_tokenize._tokenize_for_cache,
    ):
        cached.cache_clear()


class _CountingAlone:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self._tag = parse_module._tag_alone

    def __call__(self, text: str) -> spacy.tokens.Doc:
        self.texts.append(text)
        return self._tag(text)


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingAlone]:
    counting = _CountingAlone()
    monkeypatch.setattr(parse_module, "_tag_alone", counting)
    # a parse puts parse_module._tag_alone (the spy, here) back into unstructured: undo that at the end too
    monkeypatch.setattr(unstructured_tokenize, "_run_pipeline", unstructured_tokenize._run_pipeline)
    _forget_unstructured_caches()
    yield counting
    _forget_unstructured_caches()


def _passage_file(folder: Path, dataset: str, count: int) -> Path:
    passages = list(load_beir(DATASETS / dataset).passages.values())[:count]
    path = folder / f"{dataset}.txt"
    path.write_text("\n\n".join(p.document_text for p in passages), encoding="utf-8")
    return path


def _parse(path: Path) -> list[Any]:
    _forget_unstructured_caches()
    return parse_module.parse(path, FileType.TXT, path.name, LIMITS)


def test_batched_tagging_gives_the_elements_of_one_call_per_paragraph(
    tmp_path: Path, shared_docs: Path, alone: _CountingAlone, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [
        shared_docs / "norwich-city.txt",
        shared_docs / "book-war-and-peace-1p.txt",  # hard-wrapped lines that unstructured regroups
        _passage_file(tmp_path, "dbpedia", 150),
        _passage_file(tmp_path, "business-reports", 150),  # each report's title repeats before its passages
    ]
    batched = {path.name: _parse(path) for path in files}
    assert alone.texts == []  # every paragraph unstructured asked about came from a batch

    monkeypatch.setattr(parse_module, "_text_paragraphs", lambda path, encoding: [])
    one_by_one = {path.name: _parse(path) for path in files}
    assert len(alone.texts) > 300  # the spy sees what is tagged alone: without the batches, everything is
    for path in files:
        assert batched[path.name] == one_by_one[path.name], path.name
        assert len(batched[path.name]) > 5


class _CountingPipeline:
    """The real language model, counting its batches."""

    def __init__(self) -> None:
        self._nlp = parse_module._spacy_pipeline()
        self.max_length = self._nlp.max_length
        self.batches: list[list[str]] = []

    def pipe(self, texts: list[str], batch_size: int) -> Iterator[spacy.tokens.Doc]:
        self.batches.append(list(texts))
        return self._nlp.pipe(texts, batch_size=batch_size)


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch) -> _CountingPipeline:
    counting = _CountingPipeline()
    monkeypatch.setattr(parse_module, "_spacy_pipeline", lambda: counting)
    return counting


def test_windows_follow_the_file_and_other_texts_are_tagged_alone(
    alone: _CountingAlone, pipeline: _CountingPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parse_module, "_TAG_AHEAD_WINDOW", 3)
    paragraphs = ["Results", *(f"Paragraph {i} says something." for i in range(8)), "Results", "The end."]
    tag = parse_module._TagAhead(paragraphs, parse_module._tag_alone)

    asked = [*paragraphs, "A text the file does not hold."]
    docs = [tag(text) for text in asked]
    assert [doc.text for doc in docs] == asked
    assert tag("The end.") is docs[-2]  # asked again (unstructured does, up to three times): no new batch
    assert [token.tag_ for token in docs[1]] == [token.tag_ for token in pipeline._nlp(paragraphs[1])]
    # windows of three, in order; the repeated heading starts its window at its second place, not its first
    assert pipeline.batches == [paragraphs[0:3], paragraphs[3:6], paragraphs[6:9], paragraphs[9:11]]
    assert alone.texts == ["A text the file does not hold."]


def test_a_window_holds_at_most_its_characters_and_long_paragraphs_are_tagged_alone(
    alone: _CountingAlone, pipeline: _CountingPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parse_module, "_TAG_AHEAD_CHARS", 40)
    monkeypatch.setattr(parse_module, "_TAG_ALONE_ABOVE_CHARS", 60)
    long = "A paragraph longer than the limit for tagging in a batch, said in one go."
    paragraphs = ["Fifteen letters", "Fifteen letters.", long, "Fifteen letters!", "Twenty-five letters here."]
    tag = parse_module._TagAhead(paragraphs, parse_module._tag_alone)

    assert [tag(text).text for text in paragraphs] == paragraphs
    # 15 + 16 characters fit in 40, a third would not; the long one is skipped by the windows and tagged alone
    assert pipeline.batches == [paragraphs[0:2], [paragraphs[3]], [paragraphs[4]]]
    assert alone.texts == [long]


def test_unstructured_is_given_back_its_own_tagging_when_a_parse_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("A heading\n\nA paragraph that says something.\n", encoding="utf-8")
    swapped_in: list[object] = []

    def failing_partition(**_: object) -> list[object]:
        swapped_in.append(unstructured_tokenize._run_pipeline)
        raise ValueError("the partitioner broke")

    monkeypatch.setattr(parse_module, "partition", failing_partition)
    with pytest.raises(DocumentRejected, match="the partitioner broke"):
        parse_module.parse(path, FileType.TXT, path.name, LIMITS)
    assert isinstance(swapped_in[0], parse_module._TagAhead)  # batched while partitioning
    assert unstructured_tokenize._run_pipeline is parse_module._tag_alone  # and given back on the way out
