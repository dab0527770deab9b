"""The one filter builder. It takes the authenticated Principal and nothing else.

Semantics (the rule, written next to the code):
- must: payload `tenant` == principal.tenant
- must: payload `acl` contains at least one of principal.acl_tokens()  (user:<sub>, group:<g>...)
- must: payload `live` == 1 (a version still being written, 0, is seen by nobody). An integer, not a
  boolean: Qdrant Edge's Python binding turns MatchValue(True) into MatchValue(1), which no bool matches.
All clauses are always present; there is no caller-supplied filter to merge, and no way to ask for an
unfiltered search. A principal that fails validation raises AccessError before any search runs. A principal
no document admits simply matches nothing: zero results, not an error. Being a tenant admin changes nothing.
"""

from __future__ import annotations

from qdrant_client import models

from core.access import Principal, check_identifier
from core.errors import AccessError

TENANT_FIELD = "tenant"
ACL_FIELD = "acl"
LIVE_FIELD = "live"
DOCUMENT_FIELD = "document_id"
VERSION_FIELD = "version"
CHUNK_INDEX_FIELD = "chunk_index"
LIVE = 1
PENDING = 0


def acl_filter(principal: Principal) -> models.Filter:
    if not isinstance(principal, Principal):
        raise AccessError("a search needs an authenticated principal")
    tokens = principal.acl_tokens()  # validates the subject and the groups again
    check_identifier(principal.tenant, "tenant")  # and the tenant: a forged principal is an error, not []
    if not tokens:
        raise AccessError("the principal has no ACL tokens")
    return models.Filter(
        must=[
            models.FieldCondition(key=TENANT_FIELD, match=models.MatchValue(value=principal.tenant)),
            models.FieldCondition(key=ACL_FIELD, match=models.MatchAny(any=tokens)),
            models.FieldCondition(key=LIVE_FIELD, match=models.MatchValue(value=LIVE)),
        ]
    )


def document_filter(
    tenant: str, document_id: str, *, version: int | None = None, from_chunk: int = 0, older_than: int | None = None
) -> models.Filter:
    """Select a document's chunks (for maintenance: publish, ACL change, delete, count), never for reading."""
    conditions: list[models.Condition] = [
        models.FieldCondition(key=TENANT_FIELD, match=models.MatchValue(value=tenant)),
        models.FieldCondition(key=DOCUMENT_FIELD, match=models.MatchValue(value=document_id)),
    ]
    if version is not None:
        conditions.append(models.FieldCondition(key=VERSION_FIELD, match=models.MatchValue(value=version)))
    if older_than is not None:
        conditions.append(models.FieldCondition(key=VERSION_FIELD, range=models.Range(lt=older_than)))
    if from_chunk > 0:
        conditions.append(models.FieldCondition(key=CHUNK_INDEX_FIELD, range=models.Range(gte=from_chunk)))
    return models.Filter(must=conditions)
