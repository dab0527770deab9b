"""The query load generator: C concurrent clients sending POST /v1/query to a running server, in a process of
its own (so that the clients' own CPU and GIL are not the server's), run as

    python -m evals.bench.loadgen SPEC.json [--out RESULT.json]

SPEC.json (written by evals/bench/query.py, readable by its owner only: it holds bearer tokens) gives the URL,
the tokens of the principals, the queries, the concurrency, the request bound and the time bound.

Each client is a thread with its own keep-alive connection (the standard library's http.client: with httpx the
load generator took 0.14-0.15 cores at 16 clients against 0.04-0.05, on a 2-core machine taken from the server
being measured). Every client first sends
`warmup` untimed requests; then all start together, and request i (one shared counter) is sent by whichever
client is free, with query i // len(tokens) and token i % len(tokens), until `requests` were sent or `duration_s`
passed. Per request: its start (seconds after the common start), its latency in milliseconds (perf_counter
around the whole request, the body read included) and its HTTP status (0: no response). Only the raw samples
are written; the parent process computes the percentiles.

Two options serve the load test (evals/bench/load.py), which checks every answer against its principal's ACL:
- `record`: every response, warm-up ones included, is also kept as
  [principal index, status, latency ms, seconds since the common start (negative: warm-up), warm-up?, document ids]
  with the `document_id` of each result in order (None when there was no 200 answer). Status -1 is a 200 whose body
  is not a query answer. The principal index is the index of the token the request was sent with;
- `started_file`: a file created when the measured requests start (the barrier), so that another process can
  begin its own work (uploads) at that moment; the result also gives `started_at`, that moment as Unix time;
- `stop_file`: once it exists, and at least `min_requests` were sent, no further request is sent (the other
  process's work is done). The request and time bounds hold as always.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core import offline

_TIMEOUT_S = 60.0


def _excerpt(body: bytes) -> str:
    """The start of a response body, for an error message."""
    return body[:200].decode(errors="replace")


@dataclass(frozen=True)
class LoadSpec:
    url: str
    tokens: list[str]
    queries: list[str]
    concurrency: int
    requests: int
    duration_s: float
    warmup: int = 2
    top_k: int | None = None
    mode: str | None = None
    record: bool = False
    started_file: str | None = None
    stop_file: str | None = None
    min_requests: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadSpec:
        spec = cls(**data)
        if not spec.tokens or not spec.queries or spec.concurrency < 1 or spec.requests < 1:
            raise ValueError("a load spec needs tokens, queries, concurrency >= 1 and requests >= 1")
        return spec

    def body(self, query: str) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query}
        if self.top_k is not None:
            body["top_k"] = self.top_k
        if self.mode is not None:
            body["mode"] = self.mode
        return body


class _Run:
    """The state the client threads share."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.address = urlsplit(spec.url)
        self.path = self.address.path.rstrip("/") + "/v1/query"
        self.counter = itertools.count()
        self.lock = threading.Lock()
        self.start = 0.0
        self.deadline = 0.0
        self.barrier = threading.Barrier(spec.concurrency, action=self._go)
        self.samples: list[tuple[float, float, int]] = []
        self.records: list[list[Any]] = []
        self.errors: dict[str, int] = {}
        self.warmup_failures = 0
        self.started_at = 0.0

    def _go(self) -> None:
        self.started_at = time.time()
        self.start = time.perf_counter()
        self.deadline = self.start + self.spec.duration_s
        if self.spec.started_file is not None:
            Path(self.spec.started_file).touch()

    def next_request(self) -> int | None:
        with self.lock:
            i = next(self.counter)
        if i >= self.spec.requests or time.perf_counter() >= self.deadline:
            return None
        stop = self.spec.stop_file
        if stop is not None and i >= self.spec.min_requests and os.path.exists(stop):
            return None
        return i

    def send(self, client: http.client.HTTPConnection, i: int, *, warmup: bool = False) -> tuple[int, str | None]:
        spec = self.spec
        token = spec.tokens[i % len(spec.tokens)]
        query = spec.queries[(i // len(spec.tokens)) % len(spec.queries)]
        began = time.perf_counter()
        status, error, documents = self._post(client, token, query)
        if spec.record:
            record: list[Any] = [i % len(spec.tokens), status, round(1000 * (time.perf_counter() - began), 3)]
            record += [round(began - self.start, 6) if not warmup else -1.0, warmup, documents]
            with self.lock:
                self.records.append(record)
        return status, error

    def _post(
        self, client: http.client.HTTPConnection, token: str, query: str
    ) -> tuple[int, str | None, list[str] | None]:
        body = json.dumps(self.spec.body(query)).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            client.request("POST", self.path, body, headers)
            response = client.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            client.close()  # the next request opens a new connection
            return 0, f"{type(exc).__name__}: {exc}", None
        if response.status != 200:
            return response.status, f"HTTP {response.status}: {_excerpt(data)}", None
        if not self.spec.record:
            return 200, None, None
        try:
            documents = [str(result["document_id"]) for result in json.loads(data)["results"]]
        except (ValueError, KeyError, TypeError) as exc:
            return -1, f"not a query answer ({type(exc).__name__}): {_excerpt(data)}", None
        return 200, None, documents

    def client(self, index: int) -> None:
        address = self.address
        kind = http.client.HTTPSConnection if address.scheme == "https" else http.client.HTTPConnection
        client = kind(address.hostname or "127.0.0.1", address.port, timeout=_TIMEOUT_S)
        with closing(client):
            try:
                for w in range(self.spec.warmup):
                    status, _ = self.send(client, index + w * self.spec.concurrency, warmup=True)
                    if status != 200:
                        with self.lock:
                            self.warmup_failures += 1
            except BaseException:
                self.barrier.abort()  # the other clients stop waiting for this one
                raise
            self.barrier.wait()
            while (i := self.next_request()) is not None:
                began = time.perf_counter()
                status, error = self.send(client, i)
                ended = time.perf_counter()
                with self.lock:
                    self.samples.append((began - self.start, 1000 * (ended - began), status))
                    if error is not None:
                        self.errors[error] = self.errors.get(error, 0) + 1


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run the clients to the end; the raw samples, the errors by message and the measured window."""
    run = _Run(spec)
    threads = [
        threading.Thread(target=run.client, args=(n,), name=f"loadgen-{n}", daemon=True)
        for n in range(spec.concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ends = [start + latency / 1000 for start, latency, _ in run.samples]
    result: dict[str, Any] = {
        "concurrency": spec.concurrency,
        "requests": len(run.samples),
        "started_at": run.started_at,
        "wall_s": max(ends, default=0.0),
        "samples": [[round(s, 6), round(ms, 3), status] for s, ms, status in sorted(run.samples)],
        "errors": run.errors,
        "warmup_failures": run.warmup_failures,
    }
    if spec.record:
        result["records"] = sorted(run.records, key=lambda record: float(record[3]))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    offline.enforce()
    parser = argparse.ArgumentParser(prog="python -m evals.bench.loadgen", description=__doc__)
    parser.add_argument("spec", type=Path, help="the load spec (JSON)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the result (default: stdout)")
    args = parser.parse_args(argv)
    spec = LoadSpec.from_json(json.loads(args.spec.read_text(encoding="utf-8")))
    result = json.dumps(run_load(spec))
    if args.out is None:
        sys.stdout.write(result + "\n")
    else:
        args.out.write_text(result, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
