"""`tessera check`: do the registry (the system of record) and the vector index agree? And, asked to, make
the index agree with the registry.

What a crash, a kill or an index outage can leave behind, and the repair of each:
- chunks of a document the registry does not hold, or holds as deleted: deleted;
- live chunks of a version that is not the document's live one (a replacement interrupted between
  publishing and removing the old version): that version deleted;
- unpublished chunks of a version no ingestion is working on any more: deleted;
- chunks past the live version's chunk count: deleted;
- chunks whose ACL differs from the registry's (an ACL change whose index update failed): the registry's
  ACL written again. This one can be a leak, so it is checked first;
- a ready document whose live chunks are missing: queued again (its file is kept until a newer version is
  live).
Every repair re-reads the document's registry record first, and versions newer than the one read are never
touched, so a check beside running ingestion does not undo it. The registry is never changed, except to
queue a document again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.errors import NotFound
from core.index import VectorIndex
from core.records import DocumentRecord, DocumentStatus, StoredChunk
from core.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    tenant: str
    document_id: str
    problem: str
    repair: str


@dataclass
class CheckReport:
    documents: int
    chunks: int
    findings: list[Finding] = field(default_factory=list)
    repaired: bool = False

    @property
    def consistent(self) -> bool:
        return not self.findings


@dataclass(frozen=True)
class _Plan:
    """What to do about one document: findings, and the index operations that fix them."""

    findings: list[Finding]
    repairs: list[Callable[[], None]]


def check(
    registry: Registry,
    index: VectorIndex,
    *,
    repair: bool,
    requeue: Callable[[str], None],
    tenant: str | None = None,
) -> CheckReport:
    """Compare every document (of `tenant`, or all) with its chunks; with `repair`, fix what differs."""
    records = {record.id: record for record in registry.records(tenant)}
    chunks = [c for c in index.chunks() if tenant is None or c.tenant == tenant]
    by_document: dict[tuple[str, str], list[StoredChunk]] = defaultdict(list)
    for chunk in chunks:
        by_document[(chunk.tenant, chunk.document_id)].append(chunk)
    report = CheckReport(documents=len(records), chunks=len(chunks))
    keys = set(by_document) | {(r.tenant, r.id) for r in records.values()}
    for doc_tenant, document_id in sorted(keys):
        plan = _plan(doc_tenant, document_id, records.get(document_id), by_document[(doc_tenant, document_id)], index)
        if not plan.findings:
            continue
        if repair:  # from a fresh read of the registry: it may have moved on since the first
            fresh = _fresh(registry, document_id)
            plan = _plan(doc_tenant, document_id, fresh, by_document[(doc_tenant, document_id)], index, requeue)
            for operation in plan.repairs:
                operation()
        report.findings.extend(plan.findings)
    report.repaired = repair and bool(report.findings)
    for finding in report.findings:
        log.warning("check: %s %s: %s (%s)", finding.tenant, finding.document_id, finding.problem, finding.repair)
    return report


def _fresh(registry: Registry, document_id: str) -> DocumentRecord | None:
    try:
        return registry.get(document_id)
    except NotFound:
        return None


def _plan(
    tenant: str,
    document_id: str,
    record: DocumentRecord | None,
    chunks: Sequence[StoredChunk],
    index: VectorIndex,
    requeue: Callable[[str], None] | None = None,
) -> _Plan:
    findings: list[Finding] = []
    repairs: list[Callable[[], None]] = []

    def found(problem: str, fix: str, operation: Callable[[], None]) -> None:
        findings.append(Finding(tenant, document_id, problem, fix))
        repairs.append(operation)

    if record is None or record.tenant != tenant or record.status is DocumentStatus.DELETED:
        if chunks:
            what = "not in the registry" if record is None or record.tenant != tenant else "deleted"
            found(f"{len(chunks)} chunks of a document {what}", "delete them", _delete(index, tenant, document_id))
        return _Plan(findings, repairs)

    wanted_acl = set(record.acl_tokens)
    if any(set(chunk.acl_tokens) != wanted_acl for chunk in chunks):
        stale = sum(set(chunk.acl_tokens) != wanted_acl for chunk in chunks)
        found(
            f"{stale} chunks carry an ACL that differs from the registry's",
            "write the registry's ACL",
            lambda: index.set_acl(tenant, document_id, record.acl_tokens),
        )

    versions: dict[int, list[StoredChunk]] = defaultdict(list)
    for chunk in chunks:
        versions[chunk.version].append(chunk)
    in_progress = None if record.status.is_final else record.version
    for version, of_version in sorted(versions.items()):
        if version > record.version:
            continue  # newer than the record read: an ingestion this check must not undo
        live = [c for c in of_version if c.live]
        if version == record.live_version:
            extra = [c for c in of_version if c.chunk_index >= record.chunk_count]
            if extra and record.status is DocumentStatus.READY:
                found(
                    f"{len(extra)} chunks past the {record.chunk_count} of live version {version}",
                    "delete them",
                    _delete(index, tenant, document_id, version, record.chunk_count),
                )
            continue
        if live:
            found(
                f"{len(live)} live chunks of version {version}, which is not the live one ({record.live_version})",
                "delete that version",
                _delete(index, tenant, document_id, version),
            )
        elif version != in_progress:
            found(
                f"{len(of_version)} unpublished chunks of version {version}, left by an interrupted ingestion",
                "delete that version",
                _delete(index, tenant, document_id, version),
            )

    if record.status is DocumentStatus.READY and record.live_version is not None:
        present = {c.chunk_index for c in versions.get(record.live_version, []) if c.live}
        missing = record.chunk_count - len(present & set(range(record.chunk_count)))
        if missing:
            found(
                f"{missing} of the {record.chunk_count} live chunks are missing",
                "ingest the document again",
                (lambda: requeue(document_id)) if requeue else (lambda: None),
            )
    return _Plan(findings, repairs)


def _delete(
    index: VectorIndex, tenant: str, document_id: str, version: int | None = None, from_chunk: int = 0
) -> Callable[[], None]:
    if version is None:
        return lambda: index.delete_document(tenant, document_id)
    return lambda: index.delete_version(tenant, document_id, version, from_chunk)
