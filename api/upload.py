"""Reading an upload: a multipart body with a `file` part (and optionally an `acl` JSON field), bounded
while it streams in, with the file's type detected from its bytes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from api.schemas import AclIn
from core.access import DocumentAcl
from core.errors import AccessError, InputError, TooLarge
from ingest.parse import SUPPORTED_NAMES

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries, headers and the acl field
MAX_ACL_FIELD_BYTES = 64 * 1024
MAX_FILE_NAME_CHARS = 255
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def multipart_body(with_acl: bool) -> dict[str, Any]:
    """The OpenAPI description of the body (the route reads it itself, to bound it while streaming)."""
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": f"one of: {SUPPORTED_NAMES}"}
    }
    if with_acl:
        properties["acl"] = {
            "type": "string",
            "description": 'JSON {"users": [...], "groups": [...]}; the uploader is always allowed',
        }
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


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


def display_name(raw: str | None) -> str:
    """The file name as shown and cited; never used as a path (blobs are stored by document id)."""
    name = _UNSAFE_NAME_CHARS.sub("", (raw or "").replace("\\", "/")).rsplit("/", 1)[-1].strip()
    if not name or name in {".", ".."}:
        raise InputError("the file part needs a file name")
    return name[:MAX_FILE_NAME_CHARS]


def parse_acl(raw: object) -> DocumentAcl:
    if raw is None or raw == "":
        return DocumentAcl()
    if not isinstance(raw, str):
        raise InputError("the acl field must be a JSON text, not a file")
    try:
        acl = AclIn.model_validate(json.loads(raw))
        return DocumentAcl(users=tuple(acl.users), groups=tuple(acl.groups))
    except (ValueError, ValidationError, AccessError) as exc:
        raise InputError(f'invalid acl (expected JSON {{"users": [...], "groups": [...]}}): {exc}') from exc


@dataclass(frozen=True)
class Upload:
    file: UploadFile
    file_name: str
    acl: DocumentAcl


@asynccontextmanager
async def read_upload(request: Request, max_bytes: int) -> AsyncIterator[Upload]:
    """The parsed multipart body; its spooled file is removed when the block ends."""
    limit = max_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the upload is larger than the limit of {max_bytes // (1024 * 1024)} MB")
    limited = Request(request.scope, receive=_BodyLimit(request.receive, limit))
    form = await limited.form(max_files=1, max_fields=1, max_part_size=MAX_ACL_FIELD_BYTES)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("the request needs a multipart `file` part")
        yield Upload(file=upload, file_name=display_name(upload.filename), acl=parse_acl(form.get("acl")))
    finally:
        await form.close()
