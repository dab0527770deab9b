"""unstructured's questions to spaCy answered by only the parts of the language model each needs, in batches for a
text file's paragraphs (ingest/tagging.py): the same answers, and the same elements, as unstructured's own
answers from the whole pipeline, on real files, with the real parser and language model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import spacy
import unstructured.nlp.tokenize as unstructured_tokenize
import unstructured.partition.text_type as unstructured_text_type
from pydantic import SecretStr
from unstructured.file_utils.model import FileType

import ingest.parse as parse_module
from core.errors import DocumentRejected
from core.settings import Settings
from evals.datasets import load_beir
from ingest import tagging

pytestmark = pytest.mark.integration

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
LIMITS = parse_module.parse_limits(Settings(jwt_secret=SecretStr("t" * 40)))
QUESTIONS = ("word_tokenize", "sent_tokenize", "pos_tag")


def _forget_caches() -> None:
    """Both sides memoize their answers by text: without this a second parse would ask spaCy nothing."""
    for cached in (
        unstructured_tokenize._process_cached,
        unstructured_tokenize.pos_tag,
        unstructured_tokenize.word_tokenize,
        unstructured_tokenize._tokenize_for_cache,
        tagging._sentences_alone,
        tagging._tags_alone,
    ):
        cached.cache_clear()


@pytest.fixture
def nlp() -> spacy.language.Language:
    return tagging.language_model()


class _CountingParts:
    """The real components, recording the texts each batch or lone call gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self._component = tagging._component

    def __call__(self, nlp: spacy.language.Language, name: str) -> Any:
        component = self._component(nlp, name)
        calls = self.calls

        class Counting:
            def pipe(self, docs: Iterator[spacy.tokens.Doc], batch_size: int) -> Iterator[spacy.tokens.Doc]:
                batch = list(docs)
                calls.append((name, [doc.text for doc in batch]))
                tagged: Iterator[spacy.tokens.Doc] = component.pipe(iter(batch), batch_size=batch_size)
                return tagged

            def __call__(self, doc: spacy.tokens.Doc) -> spacy.tokens.Doc:
                calls.append((f"{name} alone", [doc.text]))
                tagged: spacy.tokens.Doc = component(doc)
                return tagged

        return Counting()

    def texts(self, name: str) -> list[list[str]]:
        return [texts for called, texts in self.calls if called == name]


@pytest.fixture
def parts(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingParts]:
    counting = _CountingParts()
    monkeypatch.setattr(tagging, "_component", counting)
    _forget_caches()
    yield counting
    _forget_caches()


def _passage_file(folder: Path, dataset: str, count: int) -> Path:
    passages = list(load_beir(DATASETS / dataset).passages.values())[:count]
    path = folder / f"{dataset}.txt"
    path.write_text("\n\n".join(p.document_text for p in passages), encoding="utf-8")
    return path


def test_each_answer_is_the_whole_pipelines(nlp: spacy.language.Language) -> None:
    texts = [
        "Results",
        "ANNUAL REPORT 2024.",
        "The committee met twice. It approved the budget, then adjourned at 5 p.m. on Friday.",
        "Revenue grew 12% (see Fig. 3) while costs fell.",
        "Norwich City F.C. play at Carrow Road",
        "",
    ]
    paragraphs = texts[:3]
    for tagger in (tagging.Tagger(nlp, paragraphs), tagging.Tagger(nlp)):  # in windows, and alone
        for text in texts:
            whole = nlp(text)
            assert tagger.words(text) == [token.text for token in whole], text
            assert tagger.sentences(text) == [sentence.text for sentence in whole.sents], text
            assert tagger.tags(text) == [(token.text, token.tag_) for token in whole], text


def test_files_give_the_elements_of_unstructureds_own_answers(
    tmp_path: Path, shared_docs: Path, parts: _CountingParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [
        (shared_docs / "norwich-city.txt", FileType.TXT),
        (shared_docs / "book-war-and-peace-1p.txt", FileType.TXT),  # hard-wrapped lines that unstructured regroups
        (_passage_file(tmp_path, "dbpedia", 150), FileType.TXT),
        (_passage_file(tmp_path, "business-reports", 150), FileType.TXT),  # a report's title repeats
        (shared_docs / "example-10k-1p.html", FileType.HTML),  # no paragraphs foreseen: every answer alone
        (shared_docs / "handbook-1p.docx", FileType.DOCX),
    ]

    def parse(path: Path, file_type: FileType) -> list[Any]:
        _forget_caches()
        return parse_module.parse(path, file_type, path.name, LIMITS)

    answered_here = {path.name: parse(path, file_type) for path, file_type in files}
    senter_batches = parts.texts("senter")
    assert len(senter_batches) >= 9 and max(len(batch) for batch in senter_batches) == tagging.WINDOW
    assert parts.texts("tagger")  # one-sentence paragraphs were tagged in batches too
    assert parts.texts("senter alone") and parts.texts("tagger alone")  # the HTML's and DOCX's texts

    for question in QUESTIONS:  # unstructured's own functions, each a whole-pipeline run
        monkeypatch.setattr(unstructured_text_type, question, getattr(unstructured_tokenize, question))
    for path, file_type in files:
        assert answered_here[path.name] == parse(path, file_type), path.name
        assert len(answered_here[path.name]) > 5


def test_windows_follow_the_file_and_other_texts_are_answered_alone(
    nlp: spacy.language.Language, parts: _CountingParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tagging, "WINDOW", 3)
    paragraphs = ["Results", *(f"Paragraph {i} says something. Then more." for i in range(8)), "Results", "The end."]
    tagger = tagging.Tagger(nlp, paragraphs)

    asked = [*paragraphs, "A text the file does not hold."]
    assert [tagger.sentences(text) for text in asked] == [[s.text for s in nlp(text).sents] for text in asked]
    # windows of three, in order; the repeated heading starts its window at its second place, not its first
    assert parts.texts("senter") == [paragraphs[0:3], paragraphs[3:6], paragraphs[6:9], paragraphs[9:11]]
    assert parts.texts("senter alone") == [["A text the file does not hold."]]

    assert tagger.tags("Results") == [("Results", nlp("Results")[0].tag_)]
    # the last window's heading, and with it the one-sentence paragraph after it; the heading's first place is
    # in an earlier window, gone by now
    assert parts.texts("tagger") == [["Results", "The end."]]
    tagger.tags("The end.")
    tagger.tags("A text the file does not hold.")
    assert parts.texts("tagger") == [["Results", "The end."]]
    assert parts.texts("tagger alone") == [["A text the file does not hold."]]


def test_one_sentence_paragraphs_after_the_asked_one_are_tagged_with_it(
    nlp: spacy.language.Language, parts: _CountingParts
) -> None:
    paragraphs = ["Intro", "Two sentences here. And here.", "A caption", "Another heading", "Closing words."]
    tagger = tagging.Tagger(nlp, paragraphs)
    for text in paragraphs:
        tagger.sentences(text)
    assert tagger.tags("A caption") == [(token.text, token.tag_) for token in nlp("A caption")]
    assert tagger.tags("Closing words.") == [(token.text, token.tag_) for token in nlp("Closing words.")]
    assert parts.texts("tagger") == [["A caption", "Another heading", "Closing words."]]  # one batch, not the first
    assert parts.texts("tagger alone") == []


def test_a_window_holds_at_most_its_characters_and_long_paragraphs_are_answered_alone(
    nlp: spacy.language.Language, parts: _CountingParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tagging, "WINDOW_CHARS", 40)
    monkeypatch.setattr(tagging, "BATCH_UP_TO_CHARS", 60)
    long = "A paragraph longer than the limit for answering in a batch, said in one go."
    paragraphs = ["Fifteen letters", "Fifteen letters.", long, "Fifteen letters!", "Twenty-five letters here."]
    tagger = tagging.Tagger(nlp, paragraphs)

    assert [tagger.sentences(text) for text in paragraphs] == [[s.text for s in nlp(t).sents] for t in paragraphs]
    # 15 + 16 characters fit in 40, a third would not; the long one is skipped by the windows and answered alone
    assert parts.texts("senter") == [paragraphs[0:2], [paragraphs[3]], [paragraphs[4]]]
    assert parts.texts("senter alone") == [[long]]


def test_a_text_longer_than_spacy_takes_is_cut_as_unstructured_cuts_it(
    nlp: spacy.language.Language, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nlp, "max_length", 300)
    text = " ".join(f"Sentence {i} has a few words." for i in range(30))  # 868 characters
    _forget_caches()
    ours = tagging.Tagger(nlp, [text])
    whole = unstructured_tokenize._run_pipeline(text)
    assert len(whole.text) <= 300
    assert ours.words(text) == [token.text for token in whole]
    assert ours.sentences(text) == [sentence.text for sentence in whole.sents]
    assert ours.tags(text) == [(token.text, token.tag_) for token in whole]
    _forget_caches()


def test_the_files_tagger_is_put_away_when_a_parse_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("A heading\n\nA paragraph that says something.\n", encoding="utf-8")
    current: list[object] = []

    def failing_partition(**_: object) -> list[object]:
        current.append(tagging._current.get())
        raise ValueError("the partitioner broke")

    monkeypatch.setattr(parse_module, "partition", failing_partition)
    with pytest.raises(DocumentRejected, match="the partitioner broke"):
        parse_module.parse(path, FileType.TXT, path.name, LIMITS)
    assert isinstance(current[0], tagging.Tagger)  # the file's paragraphs were foreseen while partitioning
    assert tagging._current.get() is None  # and forgotten on the way out
