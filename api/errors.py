"""Maps Tessera's errors (core/errors.py) to HTTP responses, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from api.deps import authenticate_request, requires_principal
from core.errors import (
    AccessError,
    AuthError,
    Conflict,
    Forbidden,
    InputError,
    NotFound,
    TesseraError,
    Unavailable,
)

log = logging.getLogger(__name__)


def _response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, AuthError):
        request.app.state.runtime.metrics.auth_failures.labels(reason=exc.reason).inc()
        return _response(401, str(exc), {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, NotFound):
        return _response(404, str(exc))
    if isinstance(exc, Forbidden):
        return _response(403, str(exc))
    if isinstance(exc, Conflict):
        return _response(409, str(exc))
    if isinstance(exc, InputError):
        return _response(exc.status_code, str(exc))
    if isinstance(exc, AccessError):
        # Fail closed: what the caller may see could not be decided, so nothing is shown.
        log.warning("access could not be evaluated on %s: %s", request.url.path, exc)
        return _response(403, f"access could not be evaluated: {exc}")
    if isinstance(exc, Unavailable):
        return _response(503, str(exc), {"Retry-After": "5"})
    log.error("unhandled Tessera error on %s: %r", request.url.path, exc)
    return _response(500, "internal error")


async def _refuse_unauthenticated(request: Request) -> JSONResponse | None:
    """FastAPI reads and validates a JSON body before it resolves any dependency, authentication included, so a
    caller without valid credentials would get 400 or 422 (and learn what its input lacks) instead of 401. On a
    route that needs credentials, such an error goes only to a caller who has valid ones."""
    if not requires_principal(request.scope.get("route")):
        return None
    try:
        await authenticate_request(request)
    except TesseraError as exc:  # AuthError: 401; Unavailable (looking up an API key): 503
        return await _handle(request, exc)
    return None


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return await _refuse_unauthenticated(request) or await request_validation_exception_handler(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return await _refuse_unauthenticated(request) or await http_exception_handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TesseraError, _handle)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
