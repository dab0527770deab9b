"""unstructured's three questions to spaCy, each answered by only the part of the language model it needs.

unstructured classifies every paragraph it partitions (title, narrative text, ...) from its words, its sentences
and its part-of-speech tags (`unstructured.partition.text_type`), and answers all three from one run of the whole
pipeline: tok2vec, tagger and senter, 0.8 ms a dbpedia paragraph in batches, most of a text file's parse. The
three answers come from independent parts of en_core_web_sm, so each can be had alone, and they are the answers
of the whole pipeline:
- words from the tokenizer, which every component runs on (0.02 ms);
- sentences from the senter, which has a tok2vec of its own (0.09 ms a paragraph in batches, 0.37 alone);
- tags from the shared tok2vec and the tagger, which reads what tok2vec leaves on the Doc (0.75 ms in batches).
Only a paragraph of fewer than two sentences of three words is asked for its tags (does it hold a verb?): 19 %
of dbpedia's paragraphs.

Given the paragraphs a text file's partitioner will ask about, in order, `Tagger` finds the sentences of a window of
them in one senter batch when the first is asked for, and keeps them until the next window. Asked for the tags of a
paragraph in the window, it tags in one batch that paragraph and the later ones of one sentence, those likely to be
asked next. A window holds at most WINDOW paragraphs and WINDOW_CHARS characters; a paragraph longer than
BATCH_UP_TO_CHARS, or a text not foreseen, is answered alone: a wrong guess costs only time. A text longer than
spaCy takes goes through unstructured's own call, which cuts it to the limit.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

import spacy
import unstructured.nlp.tokenize as unstructured_tokenize
import unstructured.partition.text_type as unstructured_text_type
from spacy.pipeline import TrainablePipe

from core.assets import spacy_model_dir

WINDOW = 64
WINDOW_CHARS = 32_768
BATCH_UP_TO_CHARS = unstructured_tokenize.MAX_CACHEABLE_CHARS
_ANSWERS_CACHED = 128  # texts answered alone, as unstructured caches its own answers
_EXCLUDED = ["ner", "lemmatizer", "attribute_ruler", "parser"]  # unstructured uses none of them


@lru_cache(maxsize=1)
def language_model() -> spacy.language.Language:
    """The verified packaged en_core_web_sm with only what unstructured's questions need: tok2vec, tagger and
    senter."""
    nlp = spacy.load(spacy_model_dir(), exclude=_EXCLUDED)
    nlp.enable_pipe("senter")
    return nlp


class Tagger:
    """Words, sentences and tags of texts, each from its own part of `nlp`; sentences of `paragraphs` in
    windows (module docstring)."""

    def __init__(self, nlp: spacy.language.Language, paragraphs: Sequence[str] = ()) -> None:
        self._nlp = nlp
        self._paragraphs = list(paragraphs)
        self._positions: dict[str, list[int]] = {}
        for position, text in enumerate(self._paragraphs):
            self._positions.setdefault(text, []).append(position)
        self._window_start = 0
        self._window: dict[str, tuple[str, ...]] = {}  # each paragraph's sentences
        self._window_tags: dict[str, tuple[tuple[str, str], ...]] = {}

    def words(self, text: str) -> list[str]:
        return [token.text for token in _annotated(self._nlp, text)]

    def sentences(self, text: str) -> list[str]:
        found = self._window.get(text)
        if found is None:
            if text in self._positions and self._batchable(text):
                self._next_window(text)
                found = self._window[text]
            else:
                found = _sentences_alone(self._nlp, text)
        return list(found)

    def tags(self, text: str) -> list[tuple[str, str]]:
        found = self._window_tags.get(text)
        if found is None:
            if text in self._window:
                self._tag_window_from(text)
                found = self._window_tags[text]
            else:
                found = _tags_alone(self._nlp, text)
        return list(found)

    def _tag_window_from(self, text: str) -> None:
        """Tags for `text` and for the paragraphs after it in the window that will likely be asked for theirs:
        those of one sentence (unstructured asks when fewer than two have three words or more)."""
        later = list(self._window)
        later = later[later.index(text) + 1 :]
        wanted = [text, *(p for p in later if len(self._window[p]) < 2 and p not in self._window_tags)]
        docs = (self._nlp.make_doc(paragraph) for paragraph in wanted)
        tok2vec, tagger = _component(self._nlp, "tok2vec"), _component(self._nlp, "tagger")
        for doc in tagger.pipe(tok2vec.pipe(docs, batch_size=len(wanted)), batch_size=len(wanted)):
            self._window_tags[doc.text] = _tag_pairs(doc)

    def _batchable(self, text: str) -> bool:
        return len(text) <= min(BATCH_UP_TO_CHARS, self._nlp.max_length)

    def _next_window(self, text: str) -> None:
        # a text met again (a repeated heading) starts the window at its next place, not at its first
        positions = self._positions[text]
        later = bisect.bisect_left(positions, self._window_start)
        self._window_start = positions[later] if later < len(positions) else positions[0]
        window: dict[str, None] = {}
        chars = 0
        for paragraph in self._paragraphs[self._window_start : self._window_start + WINDOW]:
            if not self._batchable(paragraph) or paragraph in window:
                continue
            if window and chars + len(paragraph) > WINDOW_CHARS:
                break
            window[paragraph] = None
            chars += len(paragraph)
        docs = _component(self._nlp, "senter").pipe((self._nlp.make_doc(p) for p in window), batch_size=len(window))
        self._window = {doc.text: _sentence_texts(doc) for doc in docs}
        self._window_tags = {}


def _component(nlp: spacy.language.Language, name: str) -> TrainablePipe:
    component = nlp.get_pipe(name)
    if not isinstance(component, TrainablePipe):
        raise TypeError(f"the language model's {name} is not a trained component: {component!r}")
    return component


def _sentence_texts(doc: spacy.tokens.Doc) -> tuple[str, ...]:
    return tuple(sentence.text for sentence in doc.sents)


def _annotated(nlp: spacy.language.Language, text: str, *components: str) -> spacy.tokens.Doc:
    """`text` tokenized and run through `components` in order; a text longer than spaCy takes goes through
    unstructured's own call instead (the whole pipeline, on the text cut to the limit)."""
    if len(text) > nlp.max_length:
        return unstructured_tokenize._run_pipeline(text)
    doc = nlp.make_doc(text)
    for name in components:
        doc = _component(nlp, name)(doc)
    return doc


@lru_cache(maxsize=_ANSWERS_CACHED)
def _sentences_alone(nlp: spacy.language.Language, text: str) -> tuple[str, ...]:
    return _sentence_texts(_annotated(nlp, text, "senter"))


@lru_cache(maxsize=_ANSWERS_CACHED)
def _tags_alone(nlp: spacy.language.Language, text: str) -> tuple[tuple[str, str], ...]:
    return _tag_pairs(_annotated(nlp, text, "tok2vec", "tagger"))


def _tag_pairs(doc: spacy.tokens.Doc) -> tuple[tuple[str, str], ...]:
    return tuple((token.text, token.tag_) for token in doc)


_current: ContextVar[Tagger | None] = ContextVar("tessera_tagger", default=None)


def _tagger() -> Tagger:
    return _current.get() or Tagger(language_model())


def _word_tokenize(text: str) -> list[str]:
    return _tagger().words(text)


def _sent_tokenize(text: str) -> list[str]:
    return _tagger().sentences(text)


def _pos_tag(text: str) -> list[tuple[str, str]]:
    return _tagger().tags(text)


@contextmanager
def tagging(paragraphs: Sequence[str]) -> Iterator[Tagger]:
    """While partitioning one file, answer unstructured's questions with a Tagger that foresees `paragraphs`."""
    tagger = Tagger(language_model(), paragraphs)
    token = _current.set(tagger)
    try:
        yield tagger
    finally:
        _current.reset(token)


def install() -> None:
    """Answer unstructured's classification questions here from now on, in this process, and hand it the verified
    packaged model wherever it still loads one itself (it would load `en_core_web_sm` by package name and
    download it when missing)."""
    replacements = {
        (unstructured_tokenize, "_get_nlp"): language_model,
        (unstructured_text_type, "word_tokenize"): _word_tokenize,
        (unstructured_text_type, "sent_tokenize"): _sent_tokenize,
        (unstructured_text_type, "pos_tag"): _pos_tag,
    }
    for (module, name), replacement in replacements.items():
        setattr(module, name, replacement)
