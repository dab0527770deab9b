"""FastAPI dependencies: the process runtime, the authenticated principal, and the permission checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Authenticator
from api.runtime import Runtime
from core.access import Principal
from core.audit import AuditAction
from core.errors import AuthError, Forbidden, NotFound
from core.records import DocumentRecord, DocumentStatus, is_document_id

_bearer = HTTPBearer(auto_error=False, description="a JWT (claims sub, tenant, groups, exp) or an API key")


# The two dependencies every request resolves are coroutines: FastAPI runs a plain function dependency on a thread
# of the pool, and each such hop (hand-off, GIL, result back to the loop) cost as much as the query's own Python.


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """A JWT is verified on the event loop (a signature check, microseconds); an API key is looked up in the
    registry, on a thread of the pool, so that the database never blocks the loop."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise AuthError("missing bearer token", reason="missing")
    authenticator: Authenticator = request.app.state.authenticator
    if authenticator.looks_up(credentials.credentials):
        principal: Principal = await run_in_threadpool(authenticator.authenticate, credentials.credentials)
        return principal
    return authenticator.authenticate(credentials.credentials)


def requires_principal(route: object) -> bool:
    """Whether a matched route authenticates its caller (depends on get_principal, directly or not)."""
    dependant = getattr(route, "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        current = pending.pop()
        if current.call is get_principal:
            return True
        pending.extend(current.dependencies)
    return False


async def authenticate_request(request: Request) -> Principal:
    """get_principal, for code that runs outside dependency injection (the error handlers)."""
    return await get_principal(request, await _bearer(request))


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this needs the tessera_admin role")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]


def _existing_document(runtime: Runtime, document_id: str) -> DocumentRecord:
    """The registry's record of a document that is not deleted; NotFound otherwise."""
    missing = NotFound(f"document {document_id} not found")
    if not is_document_id(document_id):
        raise missing
    try:
        record = runtime.registry.get(document_id)
    except NotFound:
        raise missing from None
    if record.status is DocumentStatus.DELETED:
        raise missing
    return record


def managed_document(runtime: Runtime, principal: Principal, document_id: str, action: AuditAction) -> DocumentRecord:
    """The document if the principal may change it (its owner, or an admin of its tenant).

    404 when the principal may not even know it exists; 403 (and an audit record) when it may read it but
    not change it.
    """
    record = _existing_document(runtime, document_id)
    if principal.may_manage(record.tenant, record.owner):
        return record
    runtime.metrics.acl_denied.labels(action=action.value).inc()
    if not principal.may_read(record.tenant, record.acl_tokens):
        raise NotFound(f"document {document_id} not found")
    runtime.audit.by(principal, action, "denied", target=document_id)
    raise Forbidden("only the document's owner or a tenant admin may do this")


def visible_document(runtime: Runtime, principal: Principal, document_id: str) -> DocumentRecord:
    """The document if the principal may read it; 404 otherwise, whether it is missing or denied (a denial
    is counted, not revealed)."""
    record = _existing_document(runtime, document_id)
    if not principal.may_read(record.tenant, record.acl_tokens):  # another tenant's documents included
        runtime.metrics.acl_denied.labels(action="document.read").inc()
        raise NotFound(f"document {document_id} not found")
    return record
