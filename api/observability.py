"""What operators watch: the request-id and latency middleware, and the unauthenticated probes
/healthz (alive), /readyz (every dependency usable) and /metrics (Prometheus)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.runtime import Runtime
from api.schemas import ReadinessOut
from core.logs import REQUEST_ID_HEADER, log_context, request_id_from
from core.metrics import METRICS_CONTENT_TYPE, Metrics

log = logging.getLogger("tessera.http")
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED_ROUTE = "unmatched"  # one label for every path no route serves (no unbounded label values)

router = APIRouter(tags=["health"])


class RequestObserver:
    """Gives each request an id (the caller's X-Request-ID when it is a plain token, else a new one), sets it
    for the logs of everything the request does, returns it as a header, and records the request's latency
    by route template and status. One access-log line per request; probes log at DEBUG."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))
        status = 500  # unless a response starts: an exception escaped the app

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
                method = scope["method"]
                self.metrics.http_request_duration.labels(method=method, route=route, status=str(status)).observe(
                    seconds
                )
                log.log(
                    logging.DEBUG if route in PROBE_ROUTES else logging.INFO,
                    "%s %s %d %.1fms",
                    method,
                    scope["path"],
                    status,
                    seconds * 1000,
                    extra={"method": method, "route": route, "status": status, "duration_ms": round(seconds * 1000, 2)},
                )


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"model": ReadinessOut, "description": "every dependency is usable"},
        503: {"model": ReadinessOut, "description": "a dependency is unavailable; `checks` says which"},
    },
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the registry, the vector index, the ingestion queue and the model are each usable now."""
    checks = await run_in_threadpool(_runtime(request).readiness)
    ready = all(result == "ok" for result in checks.values())
    return JSONResponse(
        status_code=200 if ready else 503, content={"status": "ready" if ready else "unavailable", "checks": checks}
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process (the text exposition format)."""
    body = await run_in_threadpool(_runtime(request).metrics.exposition)
    return Response(content=body, media_type=METRICS_CONTENT_TYPE)
