"""/v1/documents: upload (202, ingested by a Celery task), list, status, replace, delete, retry."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from api.deps import PrincipalDep, RuntimeDep, managed_document, visible_document
from api.runtime import Runtime
from api.schemas import DocumentOut, DocumentPage, ErrorOut
from api.upload import Upload, multipart_body, read_upload
from core.access import Principal
from core.audit import AuditAction
from core.errors import Conflict, Unavailable
from core.records import DocumentStatus
from ingest.parse import detect_type

router = APIRouter(prefix="/v1/documents", tags=["documents"])

_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, invalid or expired credentials"},
    404: {"model": ErrorOut, "description": "no such document, or not visible to the caller"},
    503: {"model": ErrorOut, "description": "the registry is unavailable; retry later"},
}
_LIST_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _READ_ERRORS[401],
    400: {"model": ErrorOut, "description": "`cursor` is not one this API issued"},
    503: _READ_ERRORS[503],
}
_CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_READ_ERRORS,
    403: {"model": ErrorOut, "description": "readable, but only its owner or a tenant admin may change it"},
    409: {"model": ErrorOut},
    503: {"model": ErrorOut},
}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **_CHANGE_ERRORS,
    400: {"model": ErrorOut},
    413: {"model": ErrorOut},
    415: {"model": ErrorOut},
}


def _submit(runtime: Runtime, document_id: str) -> None:
    try:
        runtime.submit(document_id)
    except Unavailable as exc:
        runtime.registry.mark_failed(document_id, f"not queued: {exc}")
        raise


def _accept(runtime: Runtime, principal: Principal, upload: Upload) -> tuple[DocumentOut, bool]:
    file_type = detect_type(upload.file.file, upload.file_name)
    document_id = uuid.uuid4().hex
    blob = runtime.blobs.save(document_id, 1, upload.file.file, runtime.settings.max_upload_bytes)
    # Same bytes in the same tenant: answer with the existing document rather than embed it twice, but
    # only one the uploader may read, so that an upload never reveals someone else's document, and not a
    # failed one (it may have failed for a reason that has passed, such as the queue being down).
    for existing in runtime.registry.find_same_content(principal.tenant, blob.sha256):
        if existing.status is not DocumentStatus.FAILED and principal.may_read(existing.tenant, existing.acl_tokens):
            runtime.blobs.delete(document_id)
            runtime.audit.by(principal, AuditAction.UPLOAD, "duplicate", target=existing.id)
            return DocumentOut.of(existing, duplicate=True), False
    record = runtime.registry.add(
        document_id=document_id,
        tenant=principal.tenant,
        owner=principal.subject,
        file_name=upload.file_name,
        file_type=file_type.name,
        sha256=blob.sha256,
        size_bytes=blob.size_bytes,
        acl_tokens=upload.acl.tokens(owner=principal.subject),
    )
    runtime.audit.by(principal, AuditAction.UPLOAD, "accepted", target=document_id)
    _submit(runtime, document_id)
    return DocumentOut.of(record), True


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DocumentOut,
    openapi_extra=multipart_body(with_acl=True),
    responses={**_UPLOAD_ERRORS, 200: {"model": DocumentOut, "description": "the same bytes already exist"}},
)
async def upload_document(
    request: Request, response: Response, principal: PrincipalDep, runtime: RuntimeDep
) -> DocumentOut:
    """Upload a file for ingestion: 202 with status `queued`, or 200 with the existing document
    (`duplicate: true`) when the caller can already read one with the same bytes."""
    async with read_upload(request, runtime.settings.max_upload_bytes) as upload:
        document, queued = await run_in_threadpool(_accept, runtime, principal, upload)
    if not queued:
        response.status_code = status.HTTP_200_OK
    return document


@router.get("", response_model=DocumentPage, responses=_LIST_ERRORS)
def list_documents(
    principal: PrincipalDep,
    runtime: RuntimeDep,
    status: DocumentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DocumentPage:
    """The documents the caller may read, newest first, a page at a time."""
    records, next_cursor = runtime.registry.list_visible(principal, status=status, limit=limit, cursor=cursor)
    return DocumentPage(documents=[DocumentOut.of(r) for r in records], next_cursor=next_cursor)


@router.get("/{document_id}", response_model=DocumentOut, responses=_READ_ERRORS)
def get_document(document_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> DocumentOut:
    """The document's registry entry, to anyone who may read it; 404 to everyone else."""
    return DocumentOut.of(visible_document(runtime, principal, document_id))


def _replace(runtime: Runtime, principal: Principal, document_id: str, upload: Upload) -> tuple[DocumentOut, bool]:
    record = managed_document(runtime, principal, document_id, AuditAction.REPLACE)
    file_type = detect_type(upload.file.file, upload.file_name)
    version = record.version + 1
    blob = runtime.blobs.save(document_id, version, upload.file.file, runtime.settings.max_upload_bytes)
    if blob.sha256 == record.sha256:
        runtime.blobs.delete(document_id, version)
        return DocumentOut.of(record, duplicate=True), False
    updated = runtime.registry.new_version(
        document_id, sha256=blob.sha256, size_bytes=blob.size_bytes, file_type=file_type.name
    )
    if updated.version != version:  # another replacement got there first
        runtime.blobs.delete(document_id, version)
        raise Conflict("another replacement of this document is in progress; try again")
    runtime.audit.by(principal, AuditAction.REPLACE, "accepted", target=document_id, detail={"version": version})
    _submit(runtime, document_id)
    return DocumentOut.of(updated), True


@router.put(
    "/{document_id}/content",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DocumentOut,
    openapi_extra=multipart_body(with_acl=False),
    responses={**_UPLOAD_ERRORS, 200: {"model": DocumentOut, "description": "the content is unchanged"}},
)
async def replace_content(
    document_id: str, request: Request, response: Response, principal: PrincipalDep, runtime: RuntimeDep
) -> DocumentOut:
    """A new version of the document. Queries keep seeing the old chunks until the new ones are in."""
    async with read_upload(request, runtime.settings.max_upload_bytes) as upload:
        document, queued = await run_in_threadpool(_replace, runtime, principal, document_id, upload)
    if not queued:
        response.status_code = status.HTTP_200_OK
    return document


@router.delete("/{document_id}", response_model=DocumentOut, responses=_CHANGE_ERRORS)
def delete_document(document_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> DocumentOut:
    """Delete the document: once this answers, no query returns any of its chunks."""
    record = managed_document(runtime, principal, document_id, AuditAction.DELETE)
    runtime.registry.mark_deleted(document_id)  # first: an ingestion in flight sees it and stops
    runtime.index.delete_document(record.tenant, document_id)
    runtime.blobs.delete(document_id)
    runtime.audit.by(principal, AuditAction.DELETE, "deleted", target=document_id)
    return DocumentOut.of(runtime.registry.get(document_id))


@router.post("/{document_id}/retry", status_code=202, response_model=DocumentOut, responses=_CHANGE_ERRORS)
def retry_document(document_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> DocumentOut:
    """Run a failed document's ingestion again."""
    record = managed_document(runtime, principal, document_id, AuditAction.RETRY)
    if record.status is not DocumentStatus.FAILED:
        raise Conflict(f"only a failed document can be retried; this one is {record.status.value}")
    queued = runtime.registry.mark_queued(document_id)
    runtime.audit.by(principal, AuditAction.RETRY, "accepted", target=document_id)
    _submit(runtime, document_id)
    return DocumentOut.of(queued)
