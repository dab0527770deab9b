"""/v1/documents/{id}/acl: change who may read a document, enforced on every chunk without re-embedding."""

from __future__ import annotations

import time

from fastapi import APIRouter

from api.deps import PrincipalDep, RuntimeDep, managed_document
from api.schemas import AclIn, DocumentOut, ErrorOut
from core.access import DocumentAcl
from core.audit import AuditAction
from core.errors import AccessError, InputError

router = APIRouter(prefix="/v1/documents", tags=["documents"])


@router.put(
    "/{document_id}/acl",
    response_model=DocumentOut,
    responses={code: {"model": ErrorOut} for code in (400, 401, 403, 404, 503)},
)
def set_acl(document_id: str, body: AclIn, principal: PrincipalDep, runtime: RuntimeDep) -> DocumentOut:
    """Replace the document's ACL (its owner stays allowed). Enforced on every chunk when this answers."""
    record = managed_document(runtime, principal, document_id, AuditAction.ACL_CHANGE)
    try:
        tokens = DocumentAcl(users=tuple(body.users), groups=tuple(body.groups)).tokens(owner=record.owner)
    except AccessError as exc:
        raise InputError(f"invalid acl: {exc}") from exc
    started = time.perf_counter()
    # Registry first: an ingestion in flight re-reads it after writing its chunks and applies the change.
    updated = runtime.registry.set_acl(document_id, tokens)
    runtime.index.set_acl(record.tenant, document_id, tokens)
    seconds = time.perf_counter() - started
    runtime.audit.by(
        principal,
        AuditAction.ACL_CHANGE,
        "changed",
        target=document_id,
        detail={"users": body.users, "groups": body.groups, "seconds": round(seconds, 4)},
    )
    return DocumentOut.of(updated)
