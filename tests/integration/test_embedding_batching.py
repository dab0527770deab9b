"""The Embedder coalesces concurrent callers into shared model calls: each caller still gets exactly its own
vectors, in its own order, and an error reaches every caller of the failed batch (none hangs)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from core.embedding import Embedder

pytestmark = pytest.mark.integration

TEXTS = [
    "The cathedral's north tower houses a pair of peregrine falcons.",
    "Quarterly revenue rose eight percent on higher subscription sales.",
    "Norwich City signed the striker from Leicester in 1993.",
    "Trustees must keep accurate accounts of the charity's funds.",
    "Bottles of water and blankets were delivered to the shelter.",
    "Photosynthesis converts light energy into chemical energy.",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    embedder = Embedder(batch_size=8)
    embedder.warm_up()
    return embedder


def _run_concurrently(embedder: Embedder, requests: Sequence[list[str]]) -> list[np.ndarray | BaseException]:
    results: list[np.ndarray | BaseException] = [np.zeros(0)] * len(requests)
    start = threading.Barrier(len(requests))

    def call(position: int) -> None:
        start.wait()
        try:
            results[position] = embedder.encode(requests[position])
        except BaseException as exc:
            results[position] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "an embedding caller hung"
    return results


def test_concurrent_callers_share_model_calls_and_each_gets_its_own_vectors(embedder: Embedder) -> None:
    alone = {text: embedder.encode([text])[0] for text in TEXTS}
    requests = [[TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 3)] for i in range(24)]
    calls_before = embedder.model_calls
    results = _run_concurrently(embedder, requests)
    for request, vectors in zip(requests, results, strict=True):
        assert isinstance(vectors, np.ndarray) and vectors.shape == (len(request), 384)
        for text, vector in zip(request, vectors, strict=True):
            assert float(np.dot(vector, alone[text])) > 0.999  # the same vector (up to padding noise)
    calls = embedder.model_calls - calls_before
    assert calls < len(requests), f"{calls} model calls for {len(requests)} concurrent requests: nothing coalesced"


class _FailingModel:
    dimension = 384

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        raise RuntimeError("model exploded")

    def token_count(self, text: str) -> int:
        return 0


def test_a_failed_model_call_raises_in_every_caller_of_its_batch() -> None:
    embedder = Embedder()
    embedder._model = _FailingModel()  # a stand-in: making the real model fail on demand is not possible
    results = _run_concurrently(embedder, [[text] for text in TEXTS])
    assert all(isinstance(result, RuntimeError) and "exploded" in str(result) for result in results)
    assert embedder.encode([]).shape == (0, 384)


def test_awaiting_and_blocked_callers_share_model_calls_and_each_gets_its_own_vectors(embedder: Embedder) -> None:
    """The API's queries await the model on the event loop (encode_async) while ingestion threads block in
    encode: both kinds join the same calls, and each gets its own text's vector."""
    alone = {text: embedder.encode([text])[0] for text in TEXTS}
    awaited_texts = [TEXTS[i % len(TEXTS)] for i in range(24)]
    blocked_requests = [[TEXTS[(i + 1) % len(TEXTS)]] for i in range(12)]
    blocked_results: list[np.ndarray | BaseException] = []
    calls_before = embedder.model_calls

    async def awaiting() -> list[np.ndarray]:
        return list(await asyncio.gather(*(embedder.encode_async([text]) for text in awaited_texts)))

    blocked = threading.Thread(target=lambda: blocked_results.extend(_run_concurrently(embedder, blocked_requests)))
    blocked.start()
    awaited = asyncio.run(asyncio.wait_for(awaiting(), 60))
    blocked.join(60)
    assert not blocked.is_alive(), "a blocked caller hung"
    for text, vectors in zip(awaited_texts, awaited, strict=True):
        assert vectors.shape == (1, 384) and float(np.dot(vectors[0], alone[text])) > 0.999
    for request, vectors in zip(blocked_requests, blocked_results, strict=True):
        assert isinstance(vectors, np.ndarray) and float(np.dot(vectors[0], alone[request[0]])) > 0.999
    callers = len(awaited_texts) + len(blocked_requests)
    calls = embedder.model_calls - calls_before
    assert calls < callers, f"{calls} model calls for {callers} concurrent callers: nothing coalesced"
