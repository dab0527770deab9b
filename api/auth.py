"""Authentication: a Bearer credential becomes a Principal. Every failure is an AuthError (401) and yields
no principal at all.

- A JWT (HS256 with the configured secret, RS256 with the configured public key). Required claims: sub,
  tenant, groups (a list of strings, possibly empty), exp; optional `roles`, where `tessera_admin` makes
  the caller the admin of its tenant. Only the algorithms whose key is configured are accepted, so a token
  cannot choose its own verification ("none", HS/RS confusion).
- An API key (`tsk_...`, core/apikeys.py), looked up on every request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jwt

from core.access import Principal
from core.apikeys import KEY_PREFIX, ApiKeys
from core.errors import AccessError, AuthError
from core.settings import Settings

HS256 = "HS256"
RS256 = "RS256"
ADMIN_ROLE = "tessera_admin"


class Authenticator:
    """Accepts a JWT or an API key."""

    def __init__(self, settings: Settings, api_keys: ApiKeys) -> None:
        self._tokens = TokenVerifier(settings)
        self._api_keys = api_keys

    @staticmethod
    def looks_up(credential: str) -> bool:
        """Whether authenticating the credential reads the database (an API key) rather than only checking a
        signature (a JWT)."""
        return credential.startswith(KEY_PREFIX)

    def authenticate(self, credential: str) -> Principal:
        if self.looks_up(credential):
            return self._api_keys.authenticate(credential)
        return self._tokens.verify(credential)


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self._keys: dict[str, Any] = {}
        if settings.jwt_secret is not None:
            self._keys[HS256] = settings.jwt_secret.get_secret_value()
        if settings.jwt_public_key_file is not None:
            self._keys[RS256] = settings.jwt_public_key_file.read_text()
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds

    def verify(self, token: str) -> Principal:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token", reason="malformed") from exc
        key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None or not isinstance(algorithm, str):
            raise AuthError(f"unsupported token algorithm; accepted: {', '.join(sorted(self._keys))}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired", reason="expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Build the Principal, refusing anything that is missing or of the wrong shape (fail closed)."""
    for claim in ("sub", "tenant", "groups"):
        if claim not in claims:
            raise AuthError(f"token lacks the {claim!r} claim", reason="claims")
    groups = claims["groups"]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise AuthError("the 'groups' claim must be a list of strings", reason="claims")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("the 'roles' claim must be a list of strings", reason="claims")
    try:
        return Principal.of(tenant=claims["tenant"], subject=claims["sub"], groups=groups, is_admin=ADMIN_ROLE in roles)
    except AccessError as exc:
        raise AuthError(f"token claims are malformed: {exc}", reason="claims") from exc


def mint_token(
    secret: str,
    *,
    subject: str,
    tenant: str,
    groups: Sequence[str],
    admin: bool = False,
    ttl_seconds: int = 3600,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token for the configured secret (for the CLI, the demo and tests)."""
    Principal.of(tenant=tenant, subject=subject, groups=groups)  # refuse to mint what would be refused
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "tenant": tenant,
        "groups": list(groups),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if admin:
        claims["roles"] = [ADMIN_ROLE]
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=HS256)
