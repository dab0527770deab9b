"""The int8 ONNX backend against the real model: exported into a temporary folder, compared with the fp32
sentence-transformers vectors, and its export manifest re-used or rejected as it should be."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from sentence_transformers import SentenceTransformer

import core.onnx_encoder as onnx_encoder
from core.assets import embedding_model_dir
from core.embedding import Embedder
from core.onnx_encoder import MANIFEST_FILE, ONNX_FILE, OnnxInt8Encoder, export_int8

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_LONG = (
    "The Stanley Cup is the championship trophy awarded annually to the playoff champion club of the National "
    "Hockey League. It was commissioned in 1892 as the Dominion Hockey Challenge Cup and is named after Lord "
    "Stanley of Preston, then Governor General of Canada, who donated it as an award to Canada's top-ranking "
    "amateur ice hockey club. The entire Stanley family supported the sport, the sons and daughters all playing "
    "and promoting the game. The first Cup was awarded in 1893 to the Montreal Hockey Club, and winners from 1893 "
    "to 1914 were determined by challenge games and league play. "
)
SENTENCES = [
    "Who won the most Stanley Cups?",
    "What are the duties of a standing trustee in a chapter 13 bankruptcy case?",
    "Dense passage retrieval encodes questions and passages into vectors and ranks passages by inner product.",
    "Net revenue increased 12% year over year to $4.2 billion, driven by higher volumes in the Americas.",
    "Anna Pavlovna received Prince Vasili, a man of high rank and importance, who was the first to arrive.",
    "LayoutParser detects the layout of scanned documents with deep learning models.",
    "Iwan Roberts is a Welsh former footballer who played as a striker for Watford, Huddersfield and Norwich.",
    "Galaxy Gaming's risk factors include its dependence on a small number of casino customers.",
    "Where do good ideas come from?",
    "photosynthesis",
    "Café Müller is a dance piece by Pina Bausch, first performed in Wuppertal in 1978.",
    "東京は日本の首都です。",
    "def encode(texts): return model.encode(texts, normalize_embeddings=True)",
    "Please deliver 24 bottles of water to building C, room 3.14, before 9:30 am on Monday.",
    "The mitochondrion is the powerhouse of the cell, producing most of its supply of ATP.",
    "Die Bundesrepublik Deutschland ist ein demokratischer und sozialer Bundesstaat.",
    "The family day will take place on June 14th with a barbecue, games for children and a concert.",
    "Error: connection refused (errno 111) while contacting the upstream server at 10.0.0.7:8080",
    _LONG * 4,  # over 256 word pieces: truncated like sentence-transformers does
    "   leading and trailing whitespace   ",
]
# Measured on this list: the lowest cosine between int8 and fp32 vectors is 0.9949 (mean 0.996); over the 5,000
# DBpedia passages the lowest is about 0.99. 0.98 leaves room for other CPUs' int8 kernels and still catches a
# worse recipe (every MatMul in int8 gives 0.991 here, per-tensor weight scales 0.72-0.93; a wrong pooling or
# truncation far less).
MIN_COSINE = 0.98
MIN_MEAN_COSINE = 0.994


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return embedding_model_dir()


@pytest.fixture(scope="module")
def encoder(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxInt8Encoder:
    return OnnxInt8Encoder(model_dir, tmp_path_factory.mktemp("onnx"))


@pytest.fixture
def export_copy(encoder: OnnxInt8Encoder, tmp_path: Path) -> Path:
    """A copy of the module's export (export folder with .onnx and manifest) that a test may alter."""
    target = tmp_path / "export"
    shutil.copytree(encoder.onnx_path.parent, target)
    return target


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


@pytest.fixture
def export_counter(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every real fp32 export (the exporter itself still runs)."""
    calls: list[Path] = []
    real: Callable[[Path, Path], None] = onnx_encoder._export_fp32

    def counting(model_dir: Path, target: Path) -> None:
        calls.append(target)
        real(model_dir, target)

    monkeypatch.setattr(onnx_encoder, "_export_fp32", counting)
    return calls


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_vectors_match_fp32(encoder: OnnxInt8Encoder, fp32: SentenceTransformer) -> None:
    vectors = encoder.encode(SENTENCES, batch_size=32)
    reference = fp32.encode(SENTENCES, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    assert vectors.shape == (len(SENTENCES), 384) == reference.shape
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= MIN_COSINE, dict(zip(SENTENCES, cosines.round(4).tolist(), strict=True))
    assert cosines.mean() >= MIN_MEAN_COSINE
    # Each int8 vector is nearest to its own fp32 vector: the order was restored after grouping by length.
    assert (np.argmax(vectors @ reference.T, axis=1) == np.arange(len(SENTENCES))).all()


def test_batch_size_does_not_change_meaning(encoder: OnnxInt8Encoder) -> None:
    together = encoder.encode(SENTENCES, batch_size=32)
    alone = encoder.encode(SENTENCES, batch_size=1)
    assert alone.shape == together.shape
    # Activations are quantized per batch, so the vectors may differ slightly, never in meaning.
    assert (together * alone).sum(axis=1).min() >= 0.98  # measured: 0.994
    assert encoder.encode([], batch_size=8).shape == (0, encoder.dimension)
    with pytest.raises(ValueError):
        encoder.encode(SENTENCES, batch_size=0)


def test_concurrent_encode_calls(encoder: OnnxInt8Encoder) -> None:
    expected = encoder.encode(SENTENCES, batch_size=8)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: encoder.encode(SENTENCES, batch_size=8), range(3)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_dimension_and_token_count(encoder: OnnxInt8Encoder, fp32: SentenceTransformer) -> None:
    assert encoder.dimension == 384
    counts = [encoder.token_count(text) for text in SENTENCES]
    assert counts == [len(fp32.tokenizer.tokenize(text)) for text in SENTENCES]
    assert max(counts) > 256  # counted in full, not truncated


def test_sensitive_projections_stay_fp32(encoder: OnnxInt8Encoder) -> None:
    graph = onnx.load(str(encoder.onnx_path)).graph
    fp32 = sorted(node.name for node in graph.node if node.op_type == "MatMul" and "/output/dense/" in node.name)
    assert fp32 == [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(3)]
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == 6 * 6 - 3  # every other projection


def test_export_is_reused(encoder: OnnxInt8Encoder, model_dir: Path, export_counter: list[Path]) -> None:
    export_dir = encoder.onnx_path.parent
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["source_sha256"] == _sha256(model_dir / "model.safetensors")
    assert manifest["onnx_sha256"] == _sha256(encoder.onnx_path)
    mtime = encoder.onnx_path.stat().st_mtime_ns
    assert export_int8(model_dir, export_dir) == encoder.onnx_path
    assert export_counter == []
    assert encoder.onnx_path.stat().st_mtime_ns == mtime


def test_corrupted_export_is_replaced(model_dir: Path, export_copy: Path, export_counter: list[Path]) -> None:
    onnx_path = export_copy / ONNX_FILE
    good = _sha256(onnx_path)
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the weights
    onnx_path.write_bytes(bytes(data))

    assert export_int8(model_dir, export_copy) == onnx_path
    assert len(export_counter) == 1
    manifest = json.loads((export_copy / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert _sha256(onnx_path) == manifest["onnx_sha256"] == good  # the export is deterministic
    assert not [p for p in export_copy.iterdir() if p.name.startswith(".export-")]  # no scratch left behind


def test_manifest_for_other_weights_is_not_reused(
    model_dir: Path, export_copy: Path, export_counter: list[Path]
) -> None:
    manifest_path = export_copy / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest_path.write_text(json.dumps({**manifest, "source_sha256": "0" * 64}), encoding="utf-8")
    export_int8(model_dir, export_copy)
    assert len(export_counter) == 1
    assert json.loads(manifest_path.read_text(encoding="utf-8"))["source_sha256"] == manifest["source_sha256"]


def test_the_embedder_serves_the_int8_backend_when_set(tmp_path: Path, fp32: SentenceTransformer) -> None:
    """TESSERA_EMBED_BACKEND=onnx-int8: the Embedder exports into its model directory and encodes with it."""
    embedder = Embedder(backend="onnx-int8", model_cache_dir=tmp_path / "models")
    texts = ["Peregrine falcons nest on the cathedral tower.", "Revenue rose eight percent in the quarter."]
    vectors = embedder.encode(texts)
    assert (tmp_path / "models" / ONNX_FILE).is_file() and embedder.device == "cpu"
    reference = fp32.encode(texts, normalize_embeddings=True)
    assert all(float(np.dot(a, b)) >= 0.98 for a, b in zip(vectors, reference, strict=True))
