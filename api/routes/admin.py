"""/v1/admin/check: do the registry and the vector index agree on the tenant's documents? (tenant admins)"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AdminDep, RuntimeDep
from api.schemas import ErrorOut
from core.audit import AuditAction

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class CheckIn(BaseModel):
    repair: bool = Field(default=False, description="make the index agree with the registry")


class FindingOut(BaseModel):
    document_id: str
    problem: str
    repair: str


class CheckOut(BaseModel):
    consistent: bool = Field(description="true when nothing differed")
    repaired: bool = Field(description="true when differences were found and repaired")
    documents: int
    chunks: int
    findings: list[FindingOut]


@router.post("/check", response_model=CheckOut, responses={code: {"model": ErrorOut} for code in (400, 401, 403, 503)})
def check_index(body: CheckIn, admin: AdminDep, runtime: RuntimeDep) -> CheckOut:
    """Compare every document of the caller's tenant in the registry with its chunks in the index: orphaned,
    stale or duplicated versions, ACLs that differ, missing chunks. With `repair`, fix them (the registry is
    the system of record; documents missing chunks are ingested again)."""
    report = runtime.check_consistency(repair=body.repair, tenant=admin.tenant)
    runtime.audit.by(
        admin,
        AuditAction.CHECK,
        "repaired" if report.repaired else ("consistent" if report.consistent else "inconsistent"),
        detail={"findings": len(report.findings), "documents": report.documents, "chunks": report.chunks},
    )
    return CheckOut(
        consistent=report.consistent,
        repaired=report.repaired,
        documents=report.documents,
        chunks=report.chunks,
        findings=[FindingOut(document_id=f.document_id, problem=f.problem, repair=f.repair) for f in report.findings],
    )
