"""The ACL matrix: users across groups and two tenants (one in no group), documents with different ACLs.

Every query's results are checked against the ACL computed here, independently of Tessera's code: no result
a user may not read (no leak), and every chunk a user may read comes back when top_k covers the corpus
(no loss).

The whole matrix runs once per index backend, one service start each: Qdrant Edge, qdrant-client's local
mode, and a Qdrant server when TESSERA_TEST_QDRANT_URL names one (none runs on the development machine, so
that run is skipped there; the server gets a collection of its own, dropped afterwards).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from retrieval.edge_host import EdgeHost
from retrieval.factory import SERVER_ENGINE, engine_of, engines
from retrieval.qdrant_index import QdrantIndex
from tests.helpers import auth, query, settings_for, upload, wait_final
from tests.integration.conftest import Served, serve

pytestmark = pytest.mark.integration

SERVER_URL_VARIABLE = "TESSERA_TEST_QDRANT_URL"
BACKENDS = ("edge", "qdrant-local", SERVER_ENGINE)


@dataclass(frozen=True)
class User:
    name: str
    tenant: str
    groups: tuple[str, ...] = ()

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.name, self.tenant, self.groups)


@dataclass(frozen=True)
class Doc:
    name: str
    owner: User
    text: str
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def readable_by(self, user: User) -> bool:
        return user.tenant == self.owner.tenant and (
            user.name == self.owner.name or user.name in self.users or bool(set(user.groups) & set(self.groups))
        )


ALICE = User("alice", "acme", ("eng",))
BOB = User("bob", "acme", ("sales",))
CAROL = User("carol", "acme")  # in no group
ERIN = User("erin", "acme", ("eng", "sales"))
MALLORY = User("mallory", "acme", ("Eng", "sales ", "eng2"))  # near misses of real group names
DAVE = User("dave", "globex", ("eng",))  # same group name, other tenant
FRANK = User("frank", "initech", ("eng",))  # a tenant with no documents
ALICE_GLOBEX = User("alice", "globex", ("eng",))  # same subject, other tenant
USERS = (ALICE, BOB, CAROL, ERIN, MALLORY, DAVE, FRANK, ALICE_GLOBEX)

DOCS = (
    Doc(
        "eng-roadmap.txt",
        ALICE,
        "The engineering roadmap: migrate the payment service to Rust by autumn.",
        groups=("eng",),
    ),
    Doc(
        "sales-forecast.txt",
        BOB,
        "Sales forecast: the northern region expects strong growth in kayak rentals.",
        groups=("sales",),
    ),
    Doc("alice-notes.txt", ALICE, "Private notes: my salary negotiation target is a raise of twelve percent."),
    Doc(
        "for-carol.txt",
        BOB,
        "A personal message for Carol: the surprise party is on Friday at the lighthouse.",
        users=("carol",),
    ),
    Doc(
        "globex-secret.txt",
        DAVE,
        "Globex engineering secret: the flux capacitor prototype failed its test.",
        groups=("eng",),
    ),
    Doc(
        "acme-picnic.txt",
        ERIN,
        "Company picnic announcement: the picnic moves to the botanical garden.",
        groups=("eng", "sales"),
    ),
)
QUERIES = (
    "What is the engineering roadmap?",
    "sales forecast kayak rentals",
    "salary negotiation",
    "surprise party at the lighthouse",
    "flux capacitor prototype",
    "company picnic",
    "Tell me everything.",
)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def service(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One running service per backend, shared by every test of the module on that backend."""
    data_dir = tmp_path_factory.mktemp(f"tessera-{backend}")
    if backend != SERVER_ENGINE:
        # qdrant_url=None: a TESSERA_QDRANT_URL in the environment would otherwise win over the engine.
        yield from serve(data_dir, embedded_engine=backend, qdrant_url=None)
        return
    url = os.environ.get(SERVER_URL_VARIABLE)
    if not url:
        pytest.skip(f"{SERVER_URL_VARIABLE} is unset: no Qdrant server to run the matrix against")
    collection = f"tessera_acl_matrix_{uuid.uuid4().hex[:12]}"
    yield from serve(data_dir, qdrant_url=url, collection=collection)
    _drop_collection(data_dir, url, collection)  # after the service stopped; a failed start leaves nothing to drop


def _drop_collection(data_dir: Path, url: str, collection: str) -> None:
    settings = settings_for(data_dir, qdrant_url=url, collection=collection)
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    client = QdrantClient(url=url, api_key=api_key, timeout=10)
    try:
        client.delete_collection(collection)
    finally:
        client.close()


def test_the_matrix_covers_every_engine_the_factory_builds() -> None:
    # engines(): every value Settings.embedded_engine admits, plus the server; a new engine joins the matrix.
    assert set(BACKENDS) == engines()


def test_the_service_runs_on_the_backend_it_is_named_for(service: Served, backend: str) -> None:
    assert engine_of(service.runtime.settings) == backend
    index = service.runtime.index
    if backend == "edge":
        assert isinstance(index, EdgeHost)  # Qdrant Edge, hosted in a child process
    else:
        assert isinstance(index, QdrantIndex) and index.embedded is (backend == "qdrant-local")


@pytest.fixture(scope="module")
def ids(service: Served) -> dict[str, str]:
    result = {}
    for doc in DOCS:
        response = upload(
            service.client, doc.owner.headers, doc.name, doc.text.encode(), users=doc.users, groups=doc.groups
        )
        assert response.status_code == 202, response.text
        result[doc.name] = response.json()["id"]
    for doc in DOCS:
        assert wait_final(service.client, doc.owner.headers, result[doc.name])["status"] == "ready"
    return result


@pytest.mark.parametrize("user", USERS, ids=lambda u: f"{u.name}@{u.tenant}")
def test_every_result_is_readable_and_nothing_readable_is_lost(
    service: Served, ids: dict[str, str], user: User
) -> None:
    allowed = {ids[d.name] for d in DOCS if d.readable_by(user)}
    for text in QUERIES:
        results = query(service.client, user.headers, text, top_k=50)["results"]
        returned = {r["document_id"] for r in results}
        assert returned <= allowed, f"LEAK to {user}: {returned - allowed} for {text!r}"
        assert returned == allowed, f"{user} lost {allowed - returned} for {text!r}"


@pytest.mark.parametrize("user", USERS, ids=lambda u: f"{u.name}@{u.tenant}")
def test_each_user_finds_what_it_may_read_first(service: Served, ids: dict[str, str], user: User) -> None:
    for doc in DOCS:
        if doc.readable_by(user):
            top = query(service.client, user.headers, doc.text, top_k=1)["results"]
            assert [r["document_id"] for r in top] == [ids[doc.name]]


@pytest.mark.parametrize("user", USERS, ids=lambda u: f"{u.name}@{u.tenant}")
def test_document_status_is_404_unless_readable(service: Served, ids: dict[str, str], user: User) -> None:
    for doc in DOCS:
        response = service.client.get(f"/v1/documents/{ids[doc.name]}", headers=user.headers)
        assert response.status_code == (200 if doc.readable_by(user) else 404), (user, doc.name)


def test_matrix_is_not_trivial() -> None:
    readable = {u: sum(d.readable_by(u) for d in DOCS) for u in USERS}
    assert readable[FRANK] == 0 and readable[MALLORY] == 0 and readable[ALICE_GLOBEX] == 1
    assert readable[CAROL] == 1 and readable[ERIN] == 3 and readable[ALICE] == 3


def test_a_user_no_document_admits_gets_zero_results_not_an_error(service: Served, ids: dict[str, str]) -> None:
    answer = query(service.client, FRANK.headers, "engineering roadmap")
    assert answer["results"] == [] and "no context blocks" in answer["prompt"]


def test_the_prompt_holds_only_readable_text_and_no_acl_fields(service: Served, ids: dict[str, str]) -> None:
    prompt = query(service.client, BOB.headers, "Tell me everything.", top_k=50)["prompt"]
    for doc in DOCS:
        assert (doc.text in prompt) is doc.readable_by(BOB)
    assert "group:" not in prompt and "user:" not in prompt and "tenant" not in prompt


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer not.a.token"},
        {"Authorization": auth("alice", "acme", ["eng"])["Authorization"] + "x"},  # bad signature
    ],
)
def test_unauthenticated_requests_get_401_and_no_data(
    service: Served, ids: dict[str, str], headers: dict[str, str]
) -> None:
    response = service.client.post("/v1/query", headers=headers, json={"query": "engineering roadmap"})
    assert response.status_code == 401 and "results" not in response.json()
    assert service.client.get(f"/v1/documents/{ids['eng-roadmap.txt']}", headers=headers).status_code == 401


def test_stored_chunks_carry_tenant_document_chunk_text_source_and_acl(service: Served, ids: dict[str, str]) -> None:
    stored = [v for v in service.runtime.index.vectors("acme") if v.document_id == ids["for-carol.txt"]]
    assert [(v.chunk_index, v.acl_tokens, v.live) for v in stored] == [(0, ("user:bob", "user:carol"), True)]
    assert service.runtime.index.vectors("globex") and not any(
        v.document_id == ids["for-carol.txt"] for v in service.runtime.index.vectors("globex")
    )
    hit = query(service.client, CAROL.headers, DOCS[3].text, top_k=1)["results"][0]
    assert hit["document_id"] == ids["for-carol.txt"] and hit["chunk_index"] == 0 and hit["version"] == 1
    assert (hit["text"], hit["file_name"], hit["page"], hit["section"]) == (DOCS[3].text, "for-carol.txt", None, None)
