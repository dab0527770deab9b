"""The eval suites' view of a running Tessera (evals.suite.EvalTarget), over the process runtime: uploads go
through the registry and the same Celery ingestion task as the upload API, queries through the Retriever."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from api.runtime import Runtime
from core.access import DocumentAcl, Principal
from core.index import SearchMode
from core.records import DocumentStatus, StoredVector
from evals.datasets import Passage
from retrieval.service import TimedSearch

LOADER = "eval-loader"


class RuntimeEvalTarget:
    def __init__(self, runtime: Runtime, tenant: str) -> None:
        self.runtime = runtime
        self.tenant = tenant

    def ingest(
        self, passages: Sequence[Passage], groups: dict[str, str], progress: Callable[[int], None]
    ) -> dict[str, str]:
        runtime = self.runtime
        documents: dict[str, str] = {}
        for passage in passages:
            document_id = uuid.uuid4().hex
            content = passage.document_text.encode()
            blob = runtime.blobs.save(document_id, 1, io.BytesIO(content), runtime.settings.max_upload_bytes)
            runtime.registry.add(
                document_id=document_id,
                tenant=self.tenant,
                owner=LOADER,
                file_name=f"{passage.id}.txt",
                file_type="TXT",
                sha256=blob.sha256,
                size_bytes=blob.size_bytes,
                acl_tokens=DocumentAcl(groups=(groups[passage.id],)).tokens(owner=LOADER),
            )
            runtime.submit(document_id)
            documents[passage.id] = document_id
        while pending := len(runtime.registry.unfinished()):
            progress(len(documents) - pending)
            time.sleep(0.5)
        progress(len(documents))
        return {
            passage_id: document_id
            for passage_id, document_id in documents.items()
            if runtime.registry.get(document_id).status is DocumentStatus.READY
        }

    def search(self, principal: Principal, question: str, top_k: int, mode: SearchMode) -> TimedSearch:
        return self.runtime.retriever.timed_search(principal, question, top_k, mode)

    def embed(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.runtime.embedder.encode([text])[0]
        return vector

    def vectors(self) -> list[StoredVector]:
        return self.runtime.index.vectors(self.tenant)

    def describe(self) -> dict[str, Any]:
        settings = self.runtime.settings
        return {
            "index": "qdrant server" if settings.qdrant_url else settings.embedded_engine,
            "queue": settings.queue,
            "chunk_tokens": settings.chunk_tokens,
            "chunk_overlap_tokens": settings.chunk_overlap_tokens,
            "embed_batch_size": settings.embed_batch_size,
            "embed_backend": settings.embed_backend,
            "model": "all-MiniLM-L6-v2",
        }
