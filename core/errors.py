"""Tessera's error hierarchy. The API maps these to HTTP responses in one place (api/errors.py).

TesseraError
├── ConfigError            a setting is missing or wrong; raised at start
├── AssetError             a bundled model or encoding file is missing or fails its SHA-256 pin
├── AuthError              the caller could not be authenticated (401)
├── AccessError            the caller's identity or a document's ACL cannot be evaluated (fail closed)
├── NotFound               no such resource, or the caller may not know it exists (404)
├── InputError             a request the API refuses (4xx)
│   ├── UnsupportedType    415
│   └── TooLarge           413
├── DocumentRejected       a document that cannot be ingested; it ends `failed` with this reason
└── Unavailable            a backing service (queue, index, registry) is down (503); may be retried
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base class of every error Tessera raises on purpose."""


class ConfigError(TesseraError):
    """A setting is missing or invalid; the message names the setting."""


class AssetError(TesseraError):
    """A packaged model or encoding file is missing or does not match its pinned SHA-256."""


class AuthError(TesseraError):
    """The caller could not be authenticated. `reason` is a short fixed label for metrics (missing, malformed,
    expired, invalid, claims, api_key); the message says more."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class AccessError(TesseraError):
    """What the caller may see cannot be decided. Never answered with an unfiltered result."""


class NotFound(TesseraError):
    """The resource does not exist, or the caller may not see it (existence is not leaked)."""


class Forbidden(TesseraError):
    """The caller may see the resource but not do this to it."""


class Conflict(TesseraError):
    """The change does not fit the resource's current state."""


class InputError(TesseraError):
    """A request Tessera refuses with a 4xx answer."""

    status_code = 400


class UnsupportedType(InputError):
    status_code = 415


class TooLarge(InputError):
    status_code = 413


class DocumentRejected(TesseraError):
    """The document cannot be ingested (no text, encrypted, unparseable). Not retried."""


class Unavailable(TesseraError):
    """A backing service is unreachable. Transient: ingestion retries it, the API answers 503."""
