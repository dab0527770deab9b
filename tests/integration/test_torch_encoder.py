"""The torch backend's pipelined loop (its default on CUDA: batches tokenized on a thread pool ahead of the model)
against sentence-transformers' own encode, both run here on the CPU in fp32 with the real model. No GPU here: this
checks that the loop gives the same vectors in the caller's order; scripts/gpu_check.py measures its speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.embedding import TorchEncoder
from evals.datasets import load_beir
from tests.integration.test_onnx_encoder import SENTENCES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DBPEDIA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "dbpedia"


@pytest.fixture(scope="module")
def pipelined() -> TorchEncoder:
    return TorchEncoder("cpu", pipelined=True)


@pytest.fixture(scope="module")
def reference() -> TorchEncoder:
    return TorchEncoder("cpu", pipelined=False)


def test_cpu_default_is_sentence_transformers_own_loop(reference: TorchEncoder) -> None:
    assert TorchEncoder("cpu").pipelined is False
    assert reference.pipelined is False


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_pipelined_vectors_equal_sentence_transformers(
    pipelined: TorchEncoder, reference: TorchEncoder, batch_size: int
) -> None:
    # Short and long texts, one over 256 word pieces (truncated), whitespace, and an empty string, in an order
    # that is not their length order: each row must come back where its text was.
    texts = [*SENTENCES, "", *reversed(SENTENCES)]
    vectors = pipelined.encode(texts, batch_size)
    expected = reference.encode(texts, batch_size)
    assert vectors.shape == expected.shape == (len(texts), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_pipelined_on_passages_and_no_texts(pipelined: TorchEncoder, reference: TorchEncoder) -> None:
    passages = [p.document_text for p in list(load_beir(DBPEDIA).passages.values())[:200]]
    np.testing.assert_allclose(pipelined.encode(passages, 64), reference.encode(passages, 64), atol=1e-5)
    assert pipelined.encode([], 8).shape == (0, 384)
