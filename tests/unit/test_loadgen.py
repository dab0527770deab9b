"""The query load generator's HTTP client: what it sends, what it records, and how it counts failures, against a
small HTTP server of the standard library (the real API is driven through it in test_bench and test_load)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from evals.bench.loadgen import LoadSpec, run_load
from evals.bench.server import free_port


class _Recorded:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # path, authorization, body


def _handler(recorded: _Recorded) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn answers

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with recorded.lock:
                recorded.requests.append((self.path, self.headers.get("Authorization", ""), body))
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if token == "refused":
                status, answer = 401, {"detail": "bad token"}
            elif token == "garbled":
                status, answer = 200, {"unexpected": True}
            else:
                status, answer = 200, {"results": [{"document_id": f"{token}-{body['query']}"}]}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, _Recorded]]:
    recorded = _Recorded()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorded))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/prefix", recorded
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_every_request_is_sent_with_its_token_query_and_options_and_recorded(server: tuple[str, _Recorded]) -> None:
    url, recorded = server
    spec = LoadSpec(
        url=url,
        tokens=["t0", "t1"],
        queries=["q0", "q1", "q2"],
        concurrency=3,
        requests=12,
        duration_s=30.0,
        warmup=1,
        top_k=5,
        mode="hybrid",
        record=True,
    )
    result = run_load(spec)
    assert result["requests"] == 12 and result["errors"] == {} and result["warmup_failures"] == 0
    assert all(status == 200 for _, _, status in result["samples"])
    assert len(recorded.requests) == 12 + 3  # and one warm-up request per client
    assert {path for path, _, _ in recorded.requests} == {"/prefix/v1/query"}
    assert all(body["top_k"] == 5 and body["mode"] == "hybrid" for _, _, body in recorded.requests)
    measured = [record for record in result["records"] if not record[4]]
    assert len(measured) == 12
    for principal, status, _, _, _, documents in measured:
        assert status == 200 and documents is not None and documents[0].startswith(f"t{principal}-q")


def test_refusals_and_garbled_answers_are_counted_not_raised(server: tuple[str, _Recorded]) -> None:
    url, _ = server
    spec = LoadSpec(
        url=url,
        tokens=["ok", "refused", "garbled"],
        queries=["q"],
        concurrency=2,
        requests=9,
        duration_s=30.0,
        warmup=0,
        record=True,
    )
    result = run_load(spec)
    statuses = sorted(status for _, _, status in result["samples"])
    assert statuses.count(401) == 3
    by_principal = {record[0]: record[1] for record in result["records"]}
    assert by_principal == {0: 200, 1: 401, 2: -1}
    assert sum(result["errors"].values()) == 6
    assert any(message.startswith("HTTP 401: ") and "bad token" in message for message in result["errors"])
    assert any(message.startswith("not a query answer") for message in result["errors"])


def test_no_server_gives_status_zero_for_every_request() -> None:
    spec = LoadSpec(
        url=f"http://127.0.0.1:{free_port()}",
        tokens=["t"],
        queries=["q"],
        concurrency=2,
        requests=4,
        duration_s=30.0,
        warmup=0,
    )
    result = run_load(spec)
    assert [status for _, _, status in result["samples"]] == [0, 0, 0, 0]
    assert sum(result["errors"].values()) == 4
    assert all(message.startswith("ConnectionRefusedError") for message in result["errors"])
