"""The embedding model, loaded once per process from the verified package files.

Both ingestion (chunks) and retrieval (queries) embed with the same model and normalisation, so the
vectors are comparable by cosine similarity.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from core.assets import embedding_model_dir

# all-MiniLM-L6-v2 reads at most 256 word pieces; longer input is truncated by the model.
MODEL_MAX_WORD_PIECES = 256


class Embedder:
    """Encodes texts into unit-length float32 vectors. Thread-safe; loads the model on first use."""

    def __init__(self, batch_size: int = 32, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.device = device
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        self._get_model()

    def _get_model(self) -> SentenceTransformer:
        if self._model is None:
            torch.set_num_threads(max(1, os.cpu_count() or 1))
            self._model = SentenceTransformer(str(embedding_model_dir()), device=self.device, local_files_only=True)
        return self._model

    @property
    def dimension(self) -> int:
        with self._lock:
            dimension = self._get_model().get_embedding_dimension()
        if dimension is None:
            raise RuntimeError("the embedding model does not report its dimension")
        return int(dimension)

    def tokenizer_length(self, text: str) -> int:
        """How many word pieces the model's own tokenizer makes of `text` (to check chunk sizing)."""
        with self._lock:
            return len(self._get_model().tokenizer.tokenize(text))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` in batches; returns an array of shape (len(texts), dimension)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self._get_model().encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)
