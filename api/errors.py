"""Maps Tessera's errors (core/errors.py) to HTTP responses, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TesseraError, _handle)
