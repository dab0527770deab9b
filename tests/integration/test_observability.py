"""Health, readiness, Prometheus metrics and request ids, on the real embedded service (model, parser,
Qdrant Edge, in-process worker), and readiness on a service whose Redis cannot be reached."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.logs import REQUEST_ID_HEADER, JsonFormatter, _ContextFilter
from evals.bench.server import free_port
from tests.helpers import auth, query, settings_for, upload, wait_final
from tests.integration.conftest import Served

pytestmark = pytest.mark.integration

ALICE = auth("alice", groups=["eng"])
BOB = auth("bob", groups=["sales"])


def _sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text; 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics_text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def _metrics(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return response.text


@pytest.fixture(scope="module")
def json_log() -> Iterator[io.StringIO]:
    """What the root logger writes at INFO in the JSON format, as `tessera serve` configures it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def test_probes_answer_without_credentials(embedded: Served) -> None:
    assert embedded.client.get("/healthz").json() == {"status": "ok"}
    ready = embedded.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"registry": "ok", "index": "ok", "queue": "ok", "model": "ok"},
    }
    assert "tessera_documents" in _metrics(embedded.client)


def test_a_request_id_follows_an_upload_through_its_task(embedded: Served, json_log: io.StringIO) -> None:
    response = embedded.client.post(
        "/v1/documents",
        headers={**ALICE, REQUEST_ID_HEADER: "upload-7f3a"},
        files={"file": ("plan.txt", b"The launch plan for the observatory opens in spring.")},
    )
    assert response.status_code == 202 and response.headers[REQUEST_ID_HEADER] == "upload-7f3a"
    document_id = response.json()["id"]
    assert wait_final(embedded.client, ALICE, document_id)["status"] == "ready"

    records = embedded.runtime.audit.search("acme")
    mine = [r for r in records if r.target == document_id]
    assert {r.action for r in mine} >= {"document.upload", "document.ingested"}
    assert all(r.detail.get("request_id") == "upload-7f3a" for r in mine), [(r.action, r.detail) for r in mine]

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    task_lines = [line for line in lines if line.get("document_id") == document_id]
    assert any("ready with" in line["message"] for line in task_lines), task_lines
    assert {line.get("request_id") for line in task_lines} == {"upload-7f3a"}
    access = [line for line in lines if line.get("route") == "/v1/documents" and line.get("method") == "POST"]
    assert access and access[-1]["request_id"] == "upload-7f3a" and access[-1]["status"] == 202


def test_a_query_is_audited_with_its_request_id_and_the_chunks_it_returned(embedded: Served) -> None:
    """The query's record is built on the event loop and committed on the audit log's runner thread: it still
    carries the request's id, and is committed before the answer is returned."""
    document_id = upload(embedded.client, ALICE, "dome.txt", b"The observatory dome opens at dusk.").json()["id"]
    assert wait_final(embedded.client, ALICE, document_id)["status"] == "ready"
    response = embedded.client.post(
        "/v1/query", headers={**ALICE, REQUEST_ID_HEADER: "query-5c1e"}, json={"query": "observatory dome"}
    )
    assert response.status_code == 200 and response.headers[REQUEST_ID_HEADER] == "query-5c1e"
    returned = [f"{r['document_id']}:{r['version']}:{r['chunk_index']}" for r in response.json()["results"]]
    assert any(chunk.startswith(f"{document_id}:") for chunk in returned)
    records = embedded.runtime.audit.search("acme", subject="alice", actions=["query"])
    mine = [r for r in records if r.detail.get("request_id") == "query-5c1e"]
    assert len(mine) == 1 and mine[0].outcome == "answered" and mine[0].detail["chunks"] == returned


def test_a_request_id_that_is_not_a_plain_token_is_replaced(embedded: Served) -> None:
    response = embedded.client.get("/healthz", headers={REQUEST_ID_HEADER: 'id with spaces", "admin": true'})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers[REQUEST_ID_HEADER])
    first, second = (embedded.client.get("/healthz").headers[REQUEST_ID_HEADER] for _ in range(2))
    assert first != second


def test_metrics_count_what_happened(embedded: Served) -> None:
    client = embedded.client
    before = _metrics(client)
    document_id = upload(client, ALICE, "eng.txt", b"Engineering notes about the turbine.", groups=["eng"]).json()["id"]
    assert wait_final(client, ALICE, document_id)["status"] == "ready"
    answered = query(client, ALICE, "turbine", top_k=5)
    assert client.post("/v1/query", json={"query": "turbine"}).status_code == 401
    assert client.post("/v1/query", headers={"Authorization": "Bearer x.y.z"}, json={"query": "q"}).status_code == 401
    assert client.get(f"/v1/documents/{document_id}", headers=BOB).status_code == 404  # denied, not revealed
    assert client.delete(f"/v1/documents/{document_id}", headers=BOB).status_code == 404
    assert client.get("/no/such/route").status_code == 404
    after = _metrics(client)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return _sample(after, name, **labels) - _sample(before, name, **labels) == by

    assert grew("tessera_auth_failures_total", reason="missing")
    assert grew("tessera_auth_failures_total", reason="malformed")
    assert grew("tessera_acl_denied_total", action="document.read")
    assert grew("tessera_acl_denied_total", action="document.delete")
    assert grew("tessera_query_results_count", mode="dense")
    assert grew("tessera_query_results_sum", by=len(answered["results"]), mode="dense")
    for stage in ("parse", "chunk", "embed", "index"):
        assert grew("tessera_ingest_stage_duration_seconds_count", stage=stage)
    assert grew("tessera_ingest_documents_total", outcome="ready")
    assert grew("tessera_http_request_duration_seconds_count", method="POST", route="/v1/query", status="200")
    assert grew("tessera_http_request_duration_seconds_count", method="POST", route="/v1/query", status="401", by=2)
    assert grew("tessera_http_request_duration_seconds_count", method="GET", route="unmatched", status="404")
    ready = sum(1 for d in client.get("/v1/documents", headers=ALICE).json()["documents"] if d["status"] == "ready")
    assert _sample(after, "tessera_documents", status="ready") >= ready >= 1
    assert _sample(after, "tessera_ingest_queue_depth") == 0
    assert "tessera_ingest_queue_depth " in after  # present, not left out


def test_readiness_names_the_dependency_that_is_down(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, queue="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        checks = ready.json()["checks"]
        assert checks["queue"].startswith("unavailable") and checks["registry"] == checks["index"] == "ok"
        assert client.get("/healthz").status_code == 200  # alive, though not ready
        exposition = _metrics(client)
        assert 'tessera_documents{status="ready"} 0.0' in exposition
        assert "tessera_ingest_queue_depth " not in exposition  # unknown, so left out rather than 0
