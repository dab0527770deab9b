"""The FastAPI application: one process serving the API (and, embedded, ingesting)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api import observability
from api.auth import Authenticator
from api.errors import install_error_handlers
from api.limits import JsonBodyLimit
from api.observability import RequestObserver
from api.routes import acl, admin, apikeys, audit, documents, query
from api.runtime import Runtime
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(runtime.start)
        log.info("tessera ready (queue=%s, data_dir=%s)", settings.queue, settings.data_dir)
        try:
            yield
        finally:
            await run_in_threadpool(runtime.stop)

    app = FastAPI(
        title="Tessera",
        version="0.1.0",
        summary="A RAG data layer with access control",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.authenticator = Authenticator(settings, runtime.api_keys)
    install_error_handlers(app)
    app.add_middleware(JsonBodyLimit)
    app.add_middleware(RequestObserver, metrics=runtime.metrics)
    routers = (documents, acl, query, apikeys, audit, admin, observability)
    for module in routers:
        app.include_router(module.router)
    return app
