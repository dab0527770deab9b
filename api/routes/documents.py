"""/v1/documents: upload (202, ingested by a Celery task) and status."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from api.deps import PrincipalDep, RuntimeDep
from api.runtime import Runtime
from api.schemas import AclIn, DocumentOut, ErrorOut
from core.access import DocumentAcl, Principal
from core.errors import AccessError, InputError, NotFound, TooLarge, Unavailable
from ingest.parse import SUPPORTED_NAMES, detect_type

router = APIRouter(prefix="/v1/documents", tags=["documents"])

_FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries, headers and the acl field
_MAX_ACL_FIELD_BYTES = 64 * 1024
_MAX_FILE_NAME_CHARS = 255
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_DOCUMENT_ID = re.compile(r"^[0-9a-f]{32}$")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, invalid or expired token"},
    404: {"model": ErrorOut, "description": "no such document, or not visible to the caller"},
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": f"one of: {SUPPORTED_NAMES}"},
                        "acl": {
                            "type": "string",
                            "description": 'JSON {"users": [...], "groups": [...]}; the uploader is always allowed',
                        },
                    },
                }
            }
        },
    }
}


class _BodyLimit:
    """Wraps an ASGI receive and stops reading once the body passes `limit` bytes (413, not a full read)."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise TooLarge(f"the upload is larger than the limit of {self._limit // (1024 * 1024)} MB")
        return message


def _display_name(raw: str | None) -> str:
    """The file name as shown and cited; never used as a path (blobs are stored by document id)."""
    name = _UNSAFE_NAME_CHARS.sub("", (raw or "").replace("\\", "/")).rsplit("/", 1)[-1].strip()
    if not name or name in {".", ".."}:
        raise InputError("the file part needs a file name")
    return name[:_MAX_FILE_NAME_CHARS]


def _parse_acl(raw: object) -> DocumentAcl:
    if raw is None or raw == "":
        return DocumentAcl()
    if not isinstance(raw, str):
        raise InputError("the acl field must be a JSON text, not a file")
    try:
        acl = AclIn.model_validate(json.loads(raw))
        return DocumentAcl(users=tuple(acl.users), groups=tuple(acl.groups))
    except (ValueError, ValidationError, AccessError) as exc:
        raise InputError(f'invalid acl (expected JSON {{"users": [...], "groups": [...]}}): {exc}') from exc


def _accept(runtime: Runtime, principal: Principal, upload: UploadFile, acl: DocumentAcl) -> DocumentOut:
    file_name = _display_name(upload.filename)
    file_type = detect_type(upload.file, file_name)
    document_id = uuid.uuid4().hex
    blob = runtime.blobs.save(document_id, upload.file, runtime.settings.max_upload_bytes)
    record = runtime.registry.add(
        document_id=document_id,
        tenant=principal.tenant,
        owner=principal.subject,
        file_name=file_name,
        file_type=file_type.name,
        sha256=blob.sha256,
        size_bytes=blob.size_bytes,
        acl_tokens=acl.tokens(owner=principal.subject),
    )
    try:
        runtime.submit(document_id)
    except Unavailable as exc:
        runtime.registry.mark_failed(document_id, f"not queued: {exc}")
        raise
    return DocumentOut.of(record)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DocumentOut,
    openapi_extra=_UPLOAD_BODY,
    responses={
        **_ERRORS,
        400: {"model": ErrorOut},
        413: {"model": ErrorOut},
        415: {"model": ErrorOut},
        503: {"model": ErrorOut},
    },
)
async def upload_document(request: Request, principal: PrincipalDep, runtime: RuntimeDep) -> DocumentOut:
    """Upload a file for ingestion; answers 202 with status `queued`."""
    limit = runtime.settings.max_upload_bytes + _FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the upload is larger than the limit of {runtime.settings.max_upload_mb} MB")
    limited = Request(request.scope, receive=_BodyLimit(request.receive, limit))
    form = await limited.form(max_files=1, max_fields=1, max_part_size=_MAX_ACL_FIELD_BYTES)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("the request needs a multipart `file` part")
        acl = _parse_acl(form.get("acl"))
        return await run_in_threadpool(_accept, runtime, principal, upload, acl)
    finally:
        await form.close()


@router.get("/{document_id}", response_model=DocumentOut, responses=_ERRORS)
def get_document(document_id: str, principal: PrincipalDep, runtime: RuntimeDep) -> DocumentOut:
    """The document's registry entry, to anyone who may read it; 404 to everyone else."""
    if not _DOCUMENT_ID.match(document_id):
        raise NotFound(f"document {document_id} not found")
    return DocumentOut.of(runtime.registry.get_visible(principal, document_id))
