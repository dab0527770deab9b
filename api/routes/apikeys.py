"""/v1/apikeys: service-account keys of the caller's tenant (tenant admins only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from api.deps import AdminDep, RuntimeDep
from api.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, ErrorOut
from core.audit import AuditAction

router = APIRouter(prefix="/v1/apikeys", tags=["api keys"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 503)}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated, responses=_ERRORS)
def create_key(body: ApiKeyIn, admin: AdminDep, runtime: RuntimeDep) -> ApiKeyCreated:
    """Issue a key; the response holds it once, only its hash is stored."""
    record, key = runtime.api_keys.create(
        tenant=admin.tenant, name=body.name, groups=body.groups, created_by=admin.subject
    )
    runtime.audit.by(admin, AuditAction.APIKEY_CREATE, "created", target=record.id, detail={"name": record.name})
    return ApiKeyCreated(**ApiKeyOut.of(record).model_dump(), key=key)


@router.get("", response_model=list[ApiKeyOut], responses=_ERRORS)
def list_keys(admin: AdminDep, runtime: RuntimeDep) -> list[ApiKeyOut]:
    return [ApiKeyOut.of(record) for record in runtime.api_keys.list(admin.tenant)]


@router.delete("/{key_id}", response_model=ApiKeyOut, responses=_ERRORS)
def revoke_key(key_id: str, admin: AdminDep, runtime: RuntimeDep) -> ApiKeyOut:
    """Revoke a key: requests with it are refused from now on."""
    record = runtime.api_keys.revoke(admin.tenant, key_id)
    runtime.audit.by(admin, AuditAction.APIKEY_REVOKE, "revoked", target=key_id)
    return ApiKeyOut.of(record)
