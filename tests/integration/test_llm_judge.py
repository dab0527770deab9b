"""The LLM-judged metrics path, against a stand-in for an OpenAI-compatible endpoint.

No LLM can run here, so the endpoint is a small local HTTP server (mocked, and said so): it answers chat
completions with the first sentence of the first context block, and structured requests with an instance
of the JSON schema Ragas asks for (every verdict 1). The test checks the wiring (the answer comes from
Tessera's prompt, each Ragas metric asks the endpoint and yields a score); not the quality of any judge.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from core.embedding import Embedder
from evals.datasets import load_beir
from evals.llm_judge import SKIPPED_REASON, LlmJudgeSettings, judge

pytestmark = pytest.mark.integration

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _instance(schema: dict[str, Any], defs: dict[str, Any], name: str = "") -> Any:
    if "$ref" in schema:
        return _instance(defs[schema["$ref"].split("/")[-1]], defs, name)
    if "anyOf" in schema:
        return _instance(next(s for s in schema["anyOf"] if s.get("type") != "null"), defs, name)
    kind = schema.get("type")
    if kind == "object":
        return {key: _instance(sub, defs, key) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [_instance(schema.get("items", {}), defs, name)]
    if kind == "integer":
        return 0 if name == "noncommittal" else 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    return "What is this passage about?" if name == "question" else f"stub {name}"


class _Endpoint(BaseHTTPRequestHandler):
    calls: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = "\n".join(str(m.get("content", "")) for m in body["messages"])
        if "json_schema:" in text:
            start = text.index("{", text.index("json_schema:"))
            schema, _ = json.JSONDecoder().raw_decode(text[start:])
            content = json.dumps(_instance(schema, schema.get("$defs", {})))
            self.calls.append(schema.get("title", "structured"))
        else:
            block = re.search(r"<<BEGIN CONTEXT \[1\][^\n]*\n(.+?)(?:\.|\n)", text)
            content = (block.group(1) if block else "I do not know") + "."
            self.calls.append("answer")
        reply = {
            "id": "stub",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    _Endpoint.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_without_an_endpoint_the_metrics_are_skipped_with_the_reason() -> None:
    dataset = load_beir(DATASETS / "business-reports", max_queries=1, extra_passages=0)
    result = judge(None, dataset, [], lambda text: np.zeros(3))
    assert result == {"status": "skipped", "reason": SKIPPED_REASON}


def test_with_an_endpoint_each_ragas_metric_is_computed_by_it(endpoint: str) -> None:
    dataset = load_beir(DATASETS / "business-reports", max_queries=2, extra_passages=0)
    rows = []
    for query_id, text in dataset.queries.items():
        relevant = dataset.qrels[query_id]
        rows.append({"query_id": query_id, "text": text, "retrieved": list(relevant)[:5], "relevant": relevant})
    embedder = Embedder()
    settings = LlmJudgeSettings(base_url=endpoint, model="stub-model", api_key="not-a-real-key", sample=2)
    result = judge(settings, dataset, rows, lambda text: embedder.encode([text])[0])
    assert result["status"] == "ok", result
    assert result["sample"] == 2 and result["model"] == "stub-model"
    # Every verdict of the stand-in is 1: precision and faithfulness are then 1 by Ragas' definitions.
    assert result["context_precision_with_reference"] == pytest.approx(1.0)
    assert result["faithfulness"] == pytest.approx(1.0)
    # Answer relevancy is Ragas' cosine between the question and the questions the judge wrote back.
    assert result["answer_relevancy"] is not None and -1.0 <= result["answer_relevancy"] <= 1.0
    assert _Endpoint.calls.count("answer") == 2
    assert len(_Endpoint.calls) > 2 + 2 * 3  # answers, then the metrics' own structured requests
    first = result["per_query"][0]
    assert first["answer"] and first["answer"] != "I do not know."  # the answer came from Tessera's prompt


def test_an_unreachable_endpoint_is_an_error_not_a_score() -> None:
    dataset = load_beir(DATASETS / "business-reports", max_queries=1, extra_passages=0)
    query_id, text = next(iter(dataset.queries.items()))
    relevant = dataset.qrels[query_id]
    rows = [{"query_id": query_id, "text": text, "retrieved": list(relevant)[:3], "relevant": relevant}]
    settings = LlmJudgeSettings(base_url="http://127.0.0.1:9/v1", model="m", api_key="k", sample=1)
    result = judge(settings, dataset, rows, lambda text: np.ones(384, dtype=np.float32))
    assert result["status"] == "error" and "Connection" in result["reason"]
    assert "faithfulness" not in result
