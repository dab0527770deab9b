"""The ONNX backends against the real model: exported into a temporary folder, compared with sentence-transformers'
fp32 vectors (the fp32 export equal to them, the int8 one close), and the export manifest re-used or rejected as it
should be."""

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
from core.assets import default_model_cache_dir, embedding_model_dir
from core.embedding import Embedder, resolve_backend
from core.onnx_encoder import OnnxEncoder, export_onnx, manifest_file, onnx_file

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
def encoder(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxEncoder:
    return OnnxEncoder(model_dir, tmp_path_factory.mktemp("onnx"), "int8")


@pytest.fixture
def export_copy(encoder: OnnxEncoder, tmp_path: Path) -> Path:
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


def test_vectors_match_fp32(encoder: OnnxEncoder, fp32: SentenceTransformer) -> None:
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


def test_batch_size_does_not_change_meaning(encoder: OnnxEncoder) -> None:
    together = encoder.encode(SENTENCES, batch_size=32)
    alone = encoder.encode(SENTENCES, batch_size=1)
    assert alone.shape == together.shape
    # Activations are quantized per batch, so the vectors may differ slightly, never in meaning.
    assert (together * alone).sum(axis=1).min() >= 0.98  # measured: 0.994
    assert encoder.encode([], batch_size=8).shape == (0, encoder.dimension)
    with pytest.raises(ValueError):
        encoder.encode(SENTENCES, batch_size=0)


def test_concurrent_encode_calls(encoder: OnnxEncoder) -> None:
    expected = encoder.encode(SENTENCES, batch_size=8)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: encoder.encode(SENTENCES, batch_size=8), range(3)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_dimension_and_token_count(encoder: OnnxEncoder, fp32: SentenceTransformer) -> None:
    assert encoder.dimension == 384
    counts = [encoder.token_count(text) for text in SENTENCES]
    assert counts == [len(fp32.tokenizer.tokenize(text)) for text in SENTENCES]
    assert max(counts) > 256  # counted in full, not truncated


def test_sensitive_projections_stay_fp32(encoder: OnnxEncoder) -> None:
    graph = onnx.load(str(encoder.onnx_path)).graph
    fp32 = sorted(node.name for node in graph.node if node.op_type == "MatMul" and "/output/dense/" in node.name)
    assert fp32 == [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(3)]
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == 6 * 6 - 3  # every other projection


def test_export_is_reused(encoder: OnnxEncoder, model_dir: Path, export_counter: list[Path]) -> None:
    export_dir = encoder.onnx_path.parent
    manifest = json.loads((export_dir / manifest_file("int8")).read_text(encoding="utf-8"))
    assert manifest["source_sha256"] == _sha256(model_dir / "model.safetensors")
    assert manifest["onnx_sha256"] == _sha256(encoder.onnx_path)
    mtime = encoder.onnx_path.stat().st_mtime_ns
    assert export_onnx(model_dir, export_dir, "int8") == encoder.onnx_path
    assert export_counter == []
    assert encoder.onnx_path.stat().st_mtime_ns == mtime


def test_corrupted_export_is_replaced(model_dir: Path, export_copy: Path, export_counter: list[Path]) -> None:
    onnx_path = export_copy / onnx_file("int8")
    good = _sha256(onnx_path)
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the weights
    onnx_path.write_bytes(bytes(data))

    assert export_onnx(model_dir, export_copy, "int8") == onnx_path
    assert len(export_counter) == 1
    manifest = json.loads((export_copy / manifest_file("int8")).read_text(encoding="utf-8"))
    assert _sha256(onnx_path) == manifest["onnx_sha256"] == good  # the export is deterministic
    assert not [p for p in export_copy.iterdir() if p.name.startswith(".export-")]  # no scratch left behind


def test_manifest_for_other_weights_is_not_reused(
    model_dir: Path, export_copy: Path, export_counter: list[Path]
) -> None:
    manifest_path = export_copy / manifest_file("int8")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest_path.write_text(json.dumps({**manifest, "source_sha256": "0" * 64}), encoding="utf-8")
    export_onnx(model_dir, export_copy, "int8")
    assert len(export_counter) == 1
    assert json.loads(manifest_path.read_text(encoding="utf-8"))["source_sha256"] == manifest["source_sha256"]


def test_the_embedder_serves_the_int8_backend_when_set(tmp_path: Path, fp32: SentenceTransformer) -> None:
    """TESSERA_EMBED_BACKEND=onnx-int8: the Embedder exports into its model directory and encodes with it."""
    embedder = Embedder(backend="onnx-int8", model_cache_dir=tmp_path / "models")
    texts = ["Peregrine falcons nest on the cathedral tower.", "Revenue rose eight percent in the quarter."]
    vectors = embedder.encode(texts)
    assert (tmp_path / "models" / onnx_file("int8")).is_file() and embedder.device == "cpu"
    reference = fp32.encode(texts, normalize_embeddings=True)
    assert all(float(np.dot(a, b)) >= 0.98 for a, b in zip(vectors, reference, strict=True))


@pytest.fixture(scope="module")
def fp32_encoder(model_dir: Path) -> OnnxEncoder:
    """The fp32 export the default backend uses, from the shared cache (`make install` made it)."""
    return OnnxEncoder(model_dir, default_model_cache_dir(), "fp32")


def test_fp32_export_gives_sentence_transformers_vectors(fp32_encoder: OnnxEncoder, fp32: SentenceTransformer) -> None:
    """The default backend on CPU: the same vectors as sentence-transformers, not merely close ones (measured:
    at most 2e-7 apart per component), alone or in a batch, truncation of long texts included."""
    reference = fp32.encode(SENTENCES, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    for batch_size in (32, 1):
        vectors = fp32_encoder.encode(SENTENCES, batch_size=batch_size)
        assert vectors.shape == reference.shape and vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, reference, atol=1e-5)
    graph = onnx.load(str(fp32_encoder.onnx_path)).graph
    assert not [node.name for node in graph.node if node.op_type in ("MatMulInteger", "DynamicQuantizeLinear")]
    manifest = json.loads((fp32_encoder.onnx_path.parent / manifest_file("fp32")).read_text(encoding="utf-8"))
    assert manifest["quantization"] is None and manifest["onnx_sha256"] == _sha256(fp32_encoder.onnx_path)


def test_a_valid_export_is_read_without_the_lock(
    fp32_encoder: OnnxEncoder, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container reads the export its image carries from a folder it may not write: re-use takes no lock."""

    def no_lock(export_dir: Path) -> None:
        raise AssertionError(f"took the export lock in {export_dir}")

    monkeypatch.setattr(onnx_encoder, "_exclusive", no_lock)
    assert export_onnx(model_dir, fp32_encoder.onnx_path.parent, "fp32") == fp32_encoder.onnx_path


def test_auto_backend_is_onnx_fp32_on_cpu_and_torch_on_cuda(fp32: SentenceTransformer) -> None:
    assert resolve_backend("auto", "cpu") == "onnx"
    assert resolve_backend("auto", "cuda:0") == "torch"
    for explicit in ("torch", "onnx", "onnx-int8"):
        assert resolve_backend(explicit, "cuda") == explicit  # type: ignore[arg-type]
    embedder = Embedder()  # this machine has no GPU: the default is the fp32 export
    assert (embedder.backend, embedder.device) == ("onnx", "cpu")
    texts = ["Peregrine falcons nest on the cathedral tower.", "Revenue rose eight percent in the quarter."]
    np.testing.assert_allclose(embedder.encode(texts), fp32.encode(texts, normalize_embeddings=True), atol=1e-5)
