"""Nothing that carries results is shared between principals. Tessera keeps no query or result cache; the
one thing concurrent queries share is the embedding model's batch (core/embedding.py merges concurrent
callers into one model call), which carries vectors of the query text only. Here many principals send the
same query at the same moment, so their embeddings share batches, and each answer is checked against its
own principal's ACL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import auth, query, upload, wait_final
from tests.integration.conftest import Served

pytestmark = pytest.mark.integration

PRINCIPALS = {
    "alice": ("acme", ("eng",)),
    "bob": ("acme", ("sales",)),
    "carol": ("acme", ()),
    "erin": ("acme", ("eng", "sales")),
    "dave": ("globex", ("eng",)),
}


def test_identical_concurrent_queries_get_each_principal_its_own_results(embedded: Served) -> None:
    docs = {
        "eng": upload(
            embedded.client, auth("alice", groups=["eng"]), "e.txt", b"Lighthouse plan for eng.", groups=["eng"]
        ),
        "sales": upload(
            embedded.client, auth("bob", groups=["sales"]), "s.txt", b"Lighthouse plan for sales.", groups=["sales"]
        ),
        "globex": upload(
            embedded.client, auth("dave", "globex", ["eng"]), "g.txt", b"Lighthouse plan, globex.", groups=["eng"]
        ),
    }
    ids = {name: response.json()["id"] for name, response in docs.items()}
    owners = {
        "eng": auth("alice", groups=["eng"]),
        "sales": auth("bob", groups=["sales"]),
        "globex": auth("dave", "globex", ["eng"]),
    }
    for name, document_id in ids.items():
        assert wait_final(embedded.client, owners[name], document_id)["status"] == "ready"
    allowed = {
        "alice": {ids["eng"]},
        "bob": {ids["sales"]},
        "carol": set(),
        "erin": {ids["eng"], ids["sales"]},
        "dave": {ids["globex"]},
    }
    calls_before = embedded.runtime.embedder.model_calls
    requests = [name for name in PRINCIPALS for _ in range(8)]

    def ask(name: str) -> tuple[str, set[str]]:
        tenant, groups = PRINCIPALS[name]
        results = query(embedded.client, auth(name, tenant, groups), "lighthouse plan", top_k=50)["results"]
        return name, {r["document_id"] for r in results}

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(ask, requests))
    for name, seen in answers:
        assert seen == allowed[name], name
    calls = embedded.runtime.embedder.model_calls - calls_before
    print(f"\n{len(requests)} identical queries from {len(PRINCIPALS)} principals took {calls} model calls")
    assert calls < len(requests), "the queries' embeddings were batched together (the path this test is about)"
