"""/v1/query: ACL-filtered retrieval and a token-budgeted augmented prompt."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import PrincipalDep, RuntimeDep
from api.schemas import ChunkOut, ErrorOut, QueryIn, QueryOut
from core.audit import AuditAction
from core.index import SearchMode

router = APIRouter(prefix="/v1", tags=["query"])


@router.post(
    "/query",
    response_model=QueryOut,
    responses={401: {"model": ErrorOut}, 400: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
async def query(body: QueryIn, principal: PrincipalDep, runtime: RuntimeDep) -> QueryOut:
    """The chunks the caller may read that best match the query, and a prompt built from them."""
    # A coroutine: the model call and the audit commit are awaited, not waited for on a thread of the pool.
    settings = runtime.settings
    top_k = min(body.top_k or settings.default_top_k, settings.max_top_k)
    budget = body.max_context_tokens or settings.default_max_context_tokens
    mode = body.mode or SearchMode(settings.default_search_mode)
    result = await runtime.retriever.answer(principal, body.query, top_k, budget, mode)
    runtime.metrics.query_results.labels(mode=mode.value).observe(len(result.hits))
    # Written before answering: a query that cannot be audited is not answered.
    await runtime.audit.by_async(
        principal,
        AuditAction.QUERY,
        "answered",
        detail={
            "top_k": top_k,
            "mode": mode.value,
            "chunks": [f"{hit.document_id}:{hit.version}:{hit.chunk_index}" for hit in result.hits],
        },
    )
    return QueryOut(
        query=body.query,
        mode=mode,
        results=[
            ChunkOut(
                document_id=hit.document_id,
                version=hit.version,
                chunk_index=hit.chunk_index,
                text=hit.text,
                score=hit.score,
                file_name=hit.file_name,
                page=hit.page,
                section=hit.section,
                citation=result.prompt.citations.get(position),
            )
            for position, hit in enumerate(result.hits)
        ],
        prompt=result.prompt.text,
        prompt_tokens=result.prompt.token_count,
    )
