"""The embedding model, loaded once per process from the verified package files.

Both ingestion (chunks) and retrieval (queries) embed with the same model and normalisation, so the
vectors are comparable by cosine similarity.

Concurrent callers share model calls (core/coalesce.py): while the model encodes one batch, the requests that
arrive wait, and the next batch takes all of them at once (up to `max_batch_texts`). A caller alone is encoded at once,
with no waiting window; under load, queries from many clients and chunks from many documents are embedded
together, which is what makes a CPU model fast (one query alone: ~7 ms; in a batch of 32: ~2 ms each).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio.to_thread
import numpy as np

from core.assets import default_model_cache_dir, embedding_model_dir
from core.coalesce import Coalescer

# all-MiniLM-L6-v2 reads at most 256 word pieces; longer input is truncated by the model.
MODEL_MAX_WORD_PIECES = 256
DEFAULT_MAX_BATCH_TEXTS = 256
# On a GPU the model is cheap per text and expensive per call: large batches (each call's texts are sorted by
# length, so they pad little). Not measured here: no GPU was lent to this project yet.
GPU_BATCH_SIZE = 1024
# The model's inputs by name, and the tokenizers.Encoding attribute each comes from.
_FEATURE_FIELDS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))

# "auto": torch (fp16) where CUDA is present, else "onnx" (fp32, the same vectors, faster on CPU; see
# core/onnx_encoder.py). "onnx-int8" is opt-in: faster still, vectors close to but not equal to fp32's.
Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
ResolvedBackend = Literal["torch", "onnx", "onnx-int8"]


class EncoderModel(Protocol):
    """What a model backend provides; `encode` returns unit-length float32 vectors."""

    @property
    def dimension(self) -> int: ...

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray: ...

    def token_count(self, text: str) -> int: ...


class TorchEncoder:
    """sentence-transformers in fp32 on the CPU (or fp16 on CUDA where present).

    On CUDA the texts are tokenized ahead of the GPU on a pool of threads (`pipelined`): sentence-transformers'
    own loop tokenizes each batch on the calling thread, then waits for the GPU, and one CPU thread tokenizes
    3,400-4,000 dbpedia passages/s here (batches of 1,024, AMD EPYC), below the GPU target before the model runs
    at all (the issue's anchor: 3,316 passages/s on an H200 with that loop). The Rust tokenizer releases the GIL,
    so its threads scale with the cores (6,800-7,900 passages/s on this machine's two) and the GPU runs batch i
    while later batches are tokenized. Not yet measured on a GPU: scripts/gpu_check.py compares the two loops."""

    def __init__(self, device: str, model_dir: Path | None = None, pipelined: bool | None = None) -> None:
        """`model_dir`: the bundled model (verified) unless given; scripts/gpu_check.py passes a verified copy.
        `pipelined`: the thread-pool tokenization, by default on CUDA only."""
        import torch  # here, not at the top: the ONNX backends start without torch
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        directory = model_dir or embedding_model_dir()
        self._model = SentenceTransformer(str(directory), device=device, local_files_only=True)
        if device.startswith("cuda"):
            self._model.half()
        else:
            self._model.float()  # whatever dtype the weights were stored in: CPUs run fp16 slowly
        self.pipelined = device.startswith("cuda") if pipelined is None else pipelined
        # Configured once and only read afterwards, so that threads may share it (the transformers tokenizer
        # re-applies its padding and truncation settings on each call). tokenizer.json pads and truncates at 128.
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self._model.max_seq_length or MODEL_MAX_WORD_PIECES)
        self._tokenizer.enable_padding(pad_id=self._tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        self._tokenizer_pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="tokenize")

    @property
    def dimension(self) -> int:
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise RuntimeError("the embedding model does not report its dimension")
        return int(dimension)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        if self.pipelined:
            return self._encode_pipelined(texts, batch_size)
        # sentence-transformers sorts by length inside encode, so batches pad little.
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _features(self, texts: list[str]) -> dict[str, Any]:
        """One batch's model inputs, padded to its longest text (on a pool thread)."""
        import torch

        encodings = self._tokenizer.encode_batch(texts)
        return {
            name: torch.from_numpy(np.array([getattr(encoding, field) for encoding in encodings], dtype=np.int64))
            for name, field in _FEATURE_FIELDS
        }

    def _encode_pipelined(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Batches of similar length (longest first), tokenized on the pool while the model runs earlier ones."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = [[texts[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]
        outputs = []
        with torch.inference_mode():
            for features in self._tokenizer_pool.map(self._features, batches):  # all submitted at once, in order
                inputs = {name: tensor.to(self._model.device, non_blocking=True) for name, tensor in features.items()}
                embeddings = self._model(inputs)["sentence_embedding"].float()
                outputs.append(torch.nn.functional.normalize(embeddings, p=2, dim=1))
            in_length_order = torch.cat(outputs).cpu().numpy() if outputs else np.zeros((0, self.dimension))
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        vectors[order] = in_length_order
        return vectors

    def token_count(self, text: str) -> int:
        return len(self._model.tokenizer.tokenize(text))


def cuda_present() -> bool:
    """Whether a CUDA device can run the model. Without an NVIDIA device node this answers without importing
    torch, which costs seconds of start-up."""
    if not Path("/dev/nvidiactl").exists():
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_backend(backend: Backend, device: str | None = None) -> ResolvedBackend:
    """The backend "auto" stands for: torch on CUDA (fp16, large batches), the fp32 ONNX export on CPU."""
    if backend != "auto":
        return backend
    if device is not None:
        return "torch" if device.startswith("cuda") else "onnx"
    return "torch" if cuda_present() else "onnx"


def default_device(backend: ResolvedBackend) -> str:
    return "cuda" if backend == "torch" and cuda_present() else "cpu"


class Embedder:
    """Encodes texts into unit-length float32 vectors. Thread-safe; loads the model on first use; concurrent
    calls are coalesced into shared model calls."""

    def __init__(
        self,
        batch_size: int = 32,
        device: str | None = None,
        backend: Backend = "auto",
        max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS,
        model_cache_dir: Path | None = None,
    ) -> None:
        if batch_size < 1 or max_batch_texts < 1:
            raise ValueError("batch sizes must be at least 1")
        self.backend: ResolvedBackend = resolve_backend(backend, device)
        self.device = device or default_device(self.backend)
        on_gpu = self.device.startswith("cuda")
        self.batch_size = max(batch_size, GPU_BATCH_SIZE) if on_gpu else batch_size
        self.max_batch_texts = max(max_batch_texts, 4 * GPU_BATCH_SIZE) if on_gpu else max_batch_texts
        self.model_cache_dir = model_cache_dir or default_model_cache_dir()
        self._model: EncoderModel | None = None
        self._load_lock = threading.Lock()
        self._calls: Coalescer[list[str], np.ndarray] = Coalescer(self._encode_batch, self.max_batch_texts, len)

    def warm_up(self) -> None:
        self._get_model()

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (asking does not load it)."""
        return self._model is not None

    def _get_model(self) -> EncoderModel:
        with self._load_lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> EncoderModel:
        if self.backend == "torch":
            return TorchEncoder(self.device)
        from core.onnx_encoder import OnnxEncoder, Precision

        precision: Precision = "int8" if self.backend == "onnx-int8" else "fp32"
        encoder: EncoderModel = OnnxEncoder(embedding_model_dir(), self.model_cache_dir, precision)
        return encoder

    @property
    def dimension(self) -> int:
        return self._get_model().dimension

    def tokenizer_length(self, text: str) -> int:
        """How many word pieces the model's own tokenizer makes of `text` (to check chunk sizing)."""
        return self._get_model().token_count(text)

    @property
    def model_calls(self) -> int:
        """How many batches the model ran (to see the coalescing work)."""
        return self._calls.runs

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`; returns an array of shape (len(texts), dimension)."""
        model = self._get_model()
        if not texts:
            return np.zeros((0, model.dimension), dtype=np.float32)
        return self._calls.submit(list(texts))

    async def encode_async(self, texts: Sequence[str]) -> np.ndarray:
        """`encode` for a coroutine on the API's event loop: its texts join the same shared model calls (with
        ingestion's), and the loop awaits the result instead of a pool thread blocking for it."""
        model = self._model if self._model is not None else await anyio.to_thread.run_sync(self._get_model)
        if not texts:
            return np.zeros((0, model.dimension), dtype=np.float32)
        return await self._calls.submit_async(list(texts))

    def _encode_batch(self, requests: list[list[str]]) -> list[np.ndarray]:
        """One model call for every waiting caller's texts; each caller's rows, in its order."""
        vectors = self._get_model().encode([text for texts in requests for text in texts], self.batch_size)
        bounds = np.cumsum([0, *(len(texts) for texts in requests)])
        return [vectors[start:stop] for start, stop in itertools.pairwise(bounds)]
