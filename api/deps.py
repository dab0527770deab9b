"""FastAPI dependencies: the process runtime and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import TokenVerifier
from api.runtime import Runtime
from core.access import Principal
from core.errors import AuthError

_bearer = HTTPBearer(auto_error=False, description="a JWT with the claims sub, tenant, groups and exp")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise AuthError("missing bearer token")
    verifier: TokenVerifier = request.app.state.verifier
    return verifier.verify(credentials.credentials)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
