"""/v1/audit: the tenant's audit log, newest first (tenant admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import StringConstraints

from api.deps import AdminDep, RuntimeDep
from api.schemas import AuditOut, AuditPage, ErrorOut

router = APIRouter(prefix="/v1/audit", tags=["audit"])
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refused here (422), not by the database (500)
_MAX_ID = 2**63 - 1  # audit ids are 64-bit: a larger before_id overflows the database driver (500)


@router.get("", response_model=AuditPage, responses={code: {"model": ErrorOut} for code in (401, 403, 503)})
def read_audit(
    admin: AdminDep,
    runtime: RuntimeDep,
    subject: Annotated[str | None, Query(max_length=300, pattern=_NO_NUL)] = None,
    action: Annotated[list[Annotated[str, StringConstraints(pattern=_NO_NUL)]] | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: Annotated[int | None, Query(ge=1, le=_MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Filter by subject, action and time ([since, until)); page with `before_id`."""
    records = runtime.audit.search(
        admin.tenant,
        subject=subject,
        actions=action or (),
        since=since,
        until=until,
        before_id=before_id,
        limit=limit,
    )
    next_before = records[-1].id if len(records) == limit else None
    return AuditPage(records=[AuditOut.of(r) for r in records], next_before_id=next_before)
