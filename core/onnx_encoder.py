"""ONNX backends for the embedding model: the same model as sentence-transformers, run by onnxruntime on CPU.

`export_onnx` exports the transformer of the bundled sentence-transformers model to ONNX (offline, with torch's
TorchScript exporter), in one of two precisions:
- "fp32": the exported graph as it is. Its vectors equal sentence-transformers' fp32 vectors (largest difference
  per component 2e-7 over 500 DBpedia passages); it runs faster because onnxruntime has far less overhead per
  operation than eager PyTorch, and because texts are batched by exact token count (no padding). Measured on this
  machine: one short query 3.0 ms against 15.5 ms, passages about 2x as fast;
- "int8": weights quantized with onnxruntime's dynamic quantization, one scale per output channel (one per tensor
  costs too much accuracy). The feed-forward output projections of the first half of the layers stay fp32: their
  input, the GELU output, has outliers, and dynamic quantization gives the activations one scale per batch. Mean
  cosine to the fp32 vectors over 1,000 DBpedia passages: all int8 0.9947; these three in fp32 0.9970 (about 30%
  more time); all six in fp32 0.9973 (about 60% more).

Each .onnx file is written atomically with a JSON manifest holding the SHA-256 of the source weights and of the
.onnx file; a later call re-uses a matching export and exports again when the file or the weights changed.

`OnnxEncoder` runs such a file and computes what sentence-transformers computes: the model's own WordPiece
tokenizer truncating at 256 word pieces, mean pooling over the tokens, L2 normalization. Texts are batched by their
exact token count, so a batch holds no padding and the graph needs no attention mask. With int8, the activation
scales are per batch, so a text's vector depends slightly on its batch (cosine >= 0.99 between batch sizes 1 and 32).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from core.assets import file_sha256

Precision = Literal["fp32", "int8"]
# Bump when the export recipe changes in a way OPSET and the quantization do not show: an older manifest then no longer
# matches (the manifest records all three).
EXPORT_FORMAT = 1
OPSET = 17
INT8_QUANTIZATION = {
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "fp32": "feed-forward output projection of the first half of the layers",
}
# The feed-forward output projection of an encoder layer, as the exporter names it.
_FFN_OUTPUT = re.compile(r"/encoder/layer\.(\d+)/output/dense/MatMul$")

_export_lock = threading.Lock()


@contextmanager
def _exclusive(export_dir: Path) -> Iterator[None]:
    """Serialize exports across threads and processes (two workers starting at once export only once)."""
    with _export_lock, (export_dir / ".export.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def onnx_file(precision: Precision) -> str:
    """The file name of an export in `precision`; its manifest has the same name with .json."""
    return f"model-{precision}.onnx"


def manifest_file(precision: Precision) -> str:
    return f"model-{precision}.json"


def _quantization(precision: Precision) -> dict[str, object] | None:
    return INT8_QUANTIZATION if precision == "int8" else None


def _reusable(export_dir: Path, precision: Precision, source_sha256: str) -> bool:
    try:
        manifest = json.loads((export_dir / manifest_file(precision)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    onnx_path = export_dir / onnx_file(precision)
    return (
        isinstance(manifest, dict)
        and manifest.get("format") == EXPORT_FORMAT
        and manifest.get("opset") == OPSET
        and manifest.get("quantization") == _quantization(precision)
        and manifest.get("source_sha256") == source_sha256
        and onnx_path.is_file()
        and manifest.get("onnx_sha256") == file_sha256(onnx_path)
    )


def _export_fp32(model_dir: Path, target: Path) -> None:
    """The transformer alone (input_ids -> last hidden state), traced on unpadded input: no attention mask."""
    import torch
    from transformers import AutoModel

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.model(input_ids=input_ids).last_hidden_state
            return hidden

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    wrapper = LastHiddenState(model).eval()
    dummy = torch.randint(1000, 2000, (2, 16), dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(target),
            dynamo=False,  # the dynamo exporter needs onnxscript, which Tessera does not install
            input_names=["input_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "last_hidden_state": axes},
            opset_version=OPSET,
        )


def _fp32_nodes(fp32_path: Path, layers: int) -> list[str]:
    """The MatMul nodes to leave unquantized: the feed-forward output projection of layers 0 .. layers/2 - 1."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    found = {
        int(match.group(1)): node.name
        for node in graph.node
        if node.op_type == "MatMul" and (match := _FFN_OUTPUT.search(node.name))
    }
    if sorted(found) != list(range(layers)):  # named differently: fail rather than lose accuracy quietly
        raise RuntimeError(f"expected a feed-forward output MatMul in each of {layers} layers, found {sorted(found)}")
    return [found[layer] for layer in range(layers // 2)]


def export_onnx(model_dir: Path, export_dir: Path, precision: Precision) -> Path:
    """Export the model in `model_dir` into `export_dir` in `precision` (offline), or re-use a previous export
    whose manifest matches the source weights and the .onnx file. Returns the path of the .onnx file."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"unknown ONNX precision {precision!r}")
    source_sha256 = file_sha256(model_dir / "model.safetensors")
    onnx_path = export_dir / onnx_file(precision)
    if _reusable(export_dir, precision, source_sha256):  # no lock needed to read: the cache may be read-only
        return onnx_path
    export_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(export_dir):
        if _reusable(export_dir, precision, source_sha256):  # another process exported it meanwhile
            return onnx_path
        with tempfile.TemporaryDirectory(dir=export_dir, prefix=".export-") as scratch:
            fp32_path = Path(scratch) / "exported-fp32.onnx"
            _export_fp32(model_dir, fp32_path)
            made = fp32_path if precision == "fp32" else _quantize_int8(model_dir, fp32_path, Path(scratch))
            manifest = {
                "format": EXPORT_FORMAT,
                "source": str(model_dir / "model.safetensors"),
                "source_sha256": source_sha256,
                "onnx": onnx_path.name,
                "onnx_sha256": file_sha256(made),
                "opset": OPSET,
                "quantization": _quantization(precision),
                "onnxruntime": ort.__version__,
            }
            manifest_tmp = Path(scratch) / manifest_file(precision)
            manifest_tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            # The .onnx first, then the manifest: a crash in between leaves a manifest that does not match.
            os.replace(made, onnx_path)
            os.replace(manifest_tmp, export_dir / manifest_file(precision))
        return onnx_path


def _quantize_int8(model_dir: Path, fp32_path: Path, scratch: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = scratch / "quantized-int8.onnx"
    layers = int(json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])
    quantize_dynamic(
        fp32_path,
        int8_path,
        weight_type=QuantType.QInt8,
        per_channel=bool(INT8_QUANTIZATION["per_channel"]),
        reduce_range=bool(INT8_QUANTIZATION["reduce_range"]),
        nodes_to_exclude=_fp32_nodes(fp32_path, layers),
    )
    return int8_path


class OnnxEncoder:
    """Encodes texts into unit-length float32 vectors with an ONNX export in `precision`. Thread-safe."""

    def __init__(self, model_dir: Path, export_dir: Path, precision: Precision, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self.onnx_path = export_onnx(model_dir, export_dir, precision)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self._dimension = int(config["hidden_size"])
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.max_word_pieces = int(st_config["max_seq_length"])
        # Two configured copies, never changed afterwards (tokenizer.json itself pads and truncates at 128).
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_word_pieces)
        self._counter = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._counter.no_padding()
        self._counter.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning, as OpenMP's are told to (core/offline.py): the API's
        # and the worker's threads share the cores. Measured here: no loss in passages/s, lower query p95.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])

    @property
    def dimension(self) -> int:
        return self._dimension

    def token_count(self, text: str) -> int:
        """How many word pieces the model's tokenizer makes of `text`, without special tokens or truncation."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Embed `texts`; returns float32 unit vectors of shape (len(texts), dimension), in the order given.

        Runs at most `batch_size` texts at a time, each batch of texts with the same token count (longest first).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        vectors = np.zeros((len(texts), self._dimension), dtype=np.float32)
        if not texts:
            return vectors
        encodings = self._tokenizer.encode_batch(list(texts))
        by_length: dict[int, list[int]] = {}
        for index, encoding in enumerate(encodings):
            by_length.setdefault(len(encoding.ids), []).append(index)
        for length in sorted(by_length, reverse=True):
            rows = by_length[length]
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                input_ids = np.array([encodings[i].ids for i in batch], dtype=np.int64)
                hidden = np.asarray(self._session.run(None, {"input_ids": input_ids})[0], dtype=np.float32)
                pooled = hidden.mean(axis=1)  # no padding: the mean over all tokens is the masked mean
                norms = np.linalg.norm(pooled, axis=1, keepdims=True)
                vectors[batch] = pooled / np.maximum(norms, 1e-12)
        return vectors
