"""A bound on request bodies that are not uploads: FastAPI reads a JSON body whole, before authentication,
so without one any caller could make the API hold an arbitrarily large body. Uploads (multipart) carry their
own bound, TESSERA_MAX_UPLOAD_MB, enforced while they stream (api/upload.py)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_JSON_BODY_BYTES = 1024 * 1024  # a query or an ACL is a few KiB; an ACL of 1,024 long names about 300 KiB


class _TooLarge(Exception):
    pass


class JsonBodyLimit:
    """413 for a non-multipart body past the limit: at once by its Content-Length, or as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or headers.get("content-type", "").startswith("multipart/form-data"):
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        tripped = refused = False

        async def bounded() -> Message:
            nonlocal seen, tripped
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    tripped = True
                    raise _TooLarge
            return message

        async def send_or_refuse(message: Message) -> None:
            # FastAPI turns an error while reading the body into its own 400: answer 413 instead.
            nonlocal refused
            if not tripped:
                await send(message)
            elif not refused:
                refused = True
                await self._refuse(scope, receive, send)

        try:
            await self.app(scope, bounded, send_or_refuse)
        except _TooLarge:
            if not refused:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is larger than the limit of {self.max_bytes // 1024} KiB"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
