"""Logging for Tessera's processes: plain text for a terminal, or one JSON object per line for a log
pipeline, each record carrying the request id (and document id) of the work it belongs to.

The request id is set by the API for each request (from a valid X-Request-ID header, or new), travels with
an upload's ingestion task, and is set again around the task in the worker, so one id follows a document
from its upload to its last ingestion log line and its audit records.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_request_id: ContextVar[str | None] = ContextVar("tessera_request_id", default=None)
_document_id: ContextVar[str | None] = ContextVar("tessera_document_id", default=None)
# Libraries that log every step at INFO; their warnings still show.
_QUIET_LOGGERS = ("alembic", "httpx", "sentence_transformers", "celery.worker.strategy", "celery.app.trace")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def current_request_id() -> str | None:
    return _request_id.get()


def request_id_from(header: str | None) -> str:
    """The caller's id when it is a plain token (it ends up in logs), else a new one."""
    if header and _REQUEST_ID_SHAPE.fullmatch(header):
        return header
    return uuid.uuid4().hex


@contextmanager
def log_context(*, request_id: str | None = None, document_id: str | None = None) -> Iterator[None]:
    """Records logged inside the block carry these ids (those not given keep their outer value)."""
    tokens = []
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    if document_id is not None:
        tokens.append((_document_id, _document_id.set(document_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class _ContextFilter(logging.Filter):
    """Adds request_id and document_id to every record (None outside a request or a task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        record.document_id = _document_id.get()
        return True


# A record's own attributes, and uvicorn's copy of its message with terminal colours: not `extra=` fields.
_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the ids, any `extra=` fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and value is not None and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if entry.get("request_id") == "-":
            del entry["request_id"]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str, level: str) -> None:
    """Replace the root logger's handlers with one on stderr in the chosen format."""
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
