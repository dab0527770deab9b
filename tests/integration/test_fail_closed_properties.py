"""Fail closed (issue 7): what a caller may read is decided from its authenticated identity alone, and when that
cannot be decided the answer is an error, never a partial or an unfiltered result.

1. At the index port, on both embedded engines (Qdrant Edge and qdrant-client's local mode): random corpora
   (tenants from a small pool, random ACL token sets including empty ones and tokens no principal can hold,
   pending, live, replaced and pending-replacement versions, ACL changes) against random principals (no
   groups, unknown tenants, hundreds of groups, near-miss group names, the same subject in two tenants). Every
   dense search equals a brute-force top-k by cosine over the live chunks the principal may read (ties within a
   tolerance); sparse and hybrid searches never return a chunk the principal may not read, and lose none when
   asked for a term every chunk holds.
2. Claims that cannot be evaluated (missing, wrong type, empty, too long, too many, control characters) are
   refused by the real HTTP API with 401/403 and no data, for queries and for document reads.
3. Caller-supplied values (ACL names that look like tokens, filters or payload keys; extra query fields) are
   refused or stored as inert data, and every principal's results stay exactly what the ACLs computed here say.
4. The registry failing while access is decided (a Postgres registry behind a loopback proxy that is shut
   down, tables renamed away, SQLite's audit table renamed away): document reads answer 5xx with no document
   data, and a query whose audit record cannot be written is not answered.

Engines and services are module-scoped; Hypothesis runs with bounded examples, no deadline and no example
database (nothing is written into the checkout).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text

from api.app import create_app
from core.access import MAX_GROUPS, Principal
from core.errors import AccessError
from core.index import SearchMode, VectorIndex
from core.records import Chunk, ChunkPoint, SearchHit
from retrieval.edge_index import EdgeIndex
from retrieval.qdrant_index import QdrantIndex
from tests.conftest import SECRET
from tests.helpers import auth, settings_for, upload, wait_final
from tests.integration.conftest import Served, serve
from tests.postgres import POSTGRES_URL, postgres_schema

pytestmark = pytest.mark.integration

# Example counts (each engine runs every property): kept so that the whole module stays well under 90 s on
# the 2-core machine.
INDEX_EXAMPLES = 60
CLAIM_EXAMPLES = 60
ACL_EXAMPLES = 15
PROPERTY = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------------------------
# 1. The index port against a brute-force reference
# ---------------------------------------------------------------------------------------------------------------

DIM = 8
SCORE_TOLERANCE = 1e-4  # float32 cosine inside the engines; scores closer than this count as ties
CORPUS_TENANTS = ("acme", "globex")
PRINCIPAL_TENANTS = (*CORPUS_TENANTS, "initech", "ACME", "acme ")  # an unknown tenant and near misses
SUBJECTS = ("alice", "bob", "carol", "group:eng", "*", "user:alice")
GROUPS = ("eng", "sales", "Eng", "eng ", " eng", "eng2", "user:alice", "group:eng", "*")
# Tokens a chunk may carry: every real token of the pools, and raw strings no principal's token can equal
# (no prefix, an empty name, a different case of the prefix).
TOKENS = (
    *(f"user:{s}" for s in SUBJECTS),
    *(f"group:{g}" for g in GROUPS),
    "",
    "*",
    "alice",
    "eng",
    "user:",
    "group:",
    "USER:alice",
    "Group:eng",
)
_HOLDABLE = frozenset(TOKENS[: len(SUBJECTS) + len(GROUPS)])  # the tokens some principal of the pools can hold
WORDS = ("kayak", "salary", "roadmap", "picnic", "flux", "lighthouse")
# A document's versions: never published; published; published with a replacement written but not published;
# replaced (the second version published, which removes the first).
STATES = ("pending", "live", "live+pending", "replaced")

Key = tuple[str, int, int]  # (document id, version, chunk index)


@dataclass(frozen=True)
class DocSpec:
    tenant: str
    acl: tuple[str, ...]
    state: str
    v1: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...]  # per chunk: vector, extra words
    v2: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...]
    new_acl: tuple[str, ...] | None  # an ACL change after the writes (possibly to an empty list)

    def live_version(self) -> int | None:
        return {"pending": None, "live": 1, "live+pending": 1, "replaced": 2}[self.state]

    def readable_acl(self) -> tuple[str, ...]:
        return self.acl if self.new_acl is None else self.new_acl


# Small integer vectors: exact ties happen (and are allowed for); never the zero vector, which has no cosine.
_vector = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM).map(lambda v: tuple(v) if any(v) else (1, *v[1:]))
_chunk = st.tuples(_vector, st.lists(st.sampled_from(WORDS), max_size=3).map(tuple))
_nonempty_acl = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4, unique=True).map(tuple)
_acl = st.one_of(_nonempty_acl, _nonempty_acl, _nonempty_acl, st.just(()))  # a quarter empty
_doc = st.builds(
    DocSpec,
    tenant=st.sampled_from(CORPUS_TENANTS),
    acl=_acl,
    state=st.sampled_from(STATES),
    v1=st.lists(_chunk, min_size=1, max_size=4).map(tuple),
    v2=st.lists(_chunk, min_size=1, max_size=4).map(tuple),
    new_acl=st.none() | _acl,
)
# One document of every corpus is live and carries tokens the pools' principals can hold, so that most examples
# have readers (and the rest of the corpus something to leak).
_readable_doc = st.builds(
    DocSpec,
    tenant=st.sampled_from(CORPUS_TENANTS),
    acl=st.lists(st.sampled_from(sorted(_HOLDABLE)), min_size=1, max_size=4, unique=True).map(tuple),
    state=st.sampled_from(STATES[1:]),
    v1=st.lists(_chunk, min_size=1, max_size=4).map(tuple),
    v2=st.lists(_chunk, min_size=1, max_size=4).map(tuple),
    new_acl=st.none(),
)


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[list[DocSpec], list[Principal]]:
    """A corpus and 1-3 principals, each with its twin (the same subject and groups) in another tenant. Most
    principals are aimed at one document (its tenant and one of its tokens), so that many read something; the
    others are drawn from the pools (unknown tenants, near-miss names)."""
    corpus = [draw(_readable_doc), *draw(st.lists(_doc, max_size=7))]
    found: list[Principal] = []
    for _ in range(draw(st.integers(1, 3))):
        tenant = draw(st.sampled_from(PRINCIPAL_TENANTS))
        subject = draw(st.sampled_from(SUBJECTS))
        groups = set(draw(st.lists(st.sampled_from(GROUPS), max_size=4, unique=True)))
        targets = [(d.tenant, t) for d in corpus if d.live_version() for t in d.readable_acl() if t in _HOLDABLE]
        if targets and draw(st.integers(0, 3)) > 0:
            tenant, token = draw(st.sampled_from(targets))
            if token.startswith("user:"):
                subject = token.removeprefix("user:")
            else:
                groups.add(token.removeprefix("group:"))
        filler = draw(st.sampled_from((0, 0, 0, 40, 300)))  # up to hundreds of groups
        groups |= {f"team-{i:04d}" for i in range(filler)}
        twin_tenant = draw(st.sampled_from([t for t in PRINCIPAL_TENANTS if t != tenant]))
        found += [Principal.of(tenant, subject, groups), Principal.of(twin_tenant, subject, groups)]
    return corpus, found


def _reads(principal: Principal, tenant: str, acl: Sequence[str]) -> bool:
    """The rule, computed here independently of core.access, and checked against Principal.may_read."""
    mine = {f"user:{principal.subject}", *(f"group:{g}" for g in principal.groups)}
    independent = tenant == principal.tenant and bool(mine & set(acl))
    assert principal.may_read(tenant, acl) is independent, (_who(principal), tenant, acl)
    return independent


def _who(principal: Principal) -> str:
    """A principal in a failure message: its tenant, subject and pool groups, and how many groups in all."""
    pool = sorted(principal.groups & set(GROUPS))
    return f"{principal.subject!r}@{principal.tenant!r} groups {pool} ({len(principal.groups)} in all)"


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def _points(doc_id: str, doc: DocSpec, version: int) -> list[ChunkPoint]:
    chunks = doc.v1 if version == 1 else doc.v2
    return [
        ChunkPoint(
            doc.tenant,
            doc_id,
            version,
            f"{doc_id}.txt",
            doc.acl,
            Chunk(i, " ".join(("chunk", *words)), None, None, 1 + len(words)),
            tuple(float(x) for x in vector),
        )
        for i, (vector, words) in enumerate(chunks)
    ]


def _write(index: VectorIndex, doc_id: str, doc: DocSpec) -> None:
    index.upsert(_points(doc_id, doc, 1))
    if doc.state != "pending":
        index.publish(doc.tenant, doc_id, 1, len(doc.v1))
    if doc.state in ("live+pending", "replaced"):
        index.upsert(_points(doc_id, doc, 2))
    if doc.new_acl is not None:
        index.set_acl(doc.tenant, doc_id, doc.new_acl)  # every version, the pending one included
    if doc.state == "replaced":
        index.publish(doc.tenant, doc_id, 2, len(doc.v2))


def _allowed(principal: Principal, corpus: dict[str, DocSpec]) -> dict[Key, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Every live chunk the principal may read, with its vector and words."""
    allowed = {}
    for doc_id, doc in corpus.items():
        version = doc.live_version()
        if version is None or not _reads(principal, doc.tenant, doc.readable_acl()):
            continue
        for i, chunk in enumerate(doc.v1 if version == 1 else doc.v2):
            allowed[(doc_id, version, i)] = chunk
    return allowed


def _keys(hits: Sequence[SearchHit]) -> list[Key]:
    keys = [(h.document_id, h.version, h.chunk_index) for h in hits]
    assert len(keys) == len(set(keys)), f"a chunk returned twice: {keys}"
    return keys


def _assert_dense_exact(
    hits: Sequence[SearchHit], allowed: dict[Key, Any], query: Sequence[float], k: int, principal: Principal
) -> None:
    who = f"{_who(principal)}, query {list(query)}, k {k}"
    keys = _keys(hits)
    reference = {key: _cosine(chunk[0], query) for key, chunk in allowed.items()}
    leaked = [key for key in keys if key not in reference]
    assert not leaked, f"LEAK to {who}: {leaked}"
    assert len(keys) == min(k, len(reference)), f"{who} got {len(keys)} of min({k}, {len(reference)})"
    ranked = sorted(reference.values(), reverse=True)
    for position, (hit, key) in enumerate(zip(hits, keys, strict=True)):
        assert math.isclose(hit.score, reference[key], abs_tol=SCORE_TOLERANCE), (who, key, hit.score)
        # the chunk at each rank scores what the brute force's chunk at that rank scores (ties may swap)
        assert math.isclose(reference[key], ranked[position], abs_tol=SCORE_TOLERANCE), (who, position, keys)
    if keys:
        cut = ranked[len(keys) - 1]
        lost = [key for key, score in reference.items() if score > cut + SCORE_TOLERANCE and key not in keys]
        assert not lost, f"{who} lost {lost}"


@pytest.fixture(scope="module", params=["edge", "qdrant-local"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    """One real engine per module and kind. Edge is never optimized here, so every search scans its plain
    segments in full: exact, like qdrant-client's local mode."""
    # In RAM where the machine has it: local mode commits every point to SQLite, ~10 ms each on this disk.
    in_ram = Path("/dev/shm").is_dir()
    path = Path(tempfile.mkdtemp(dir="/dev/shm")) if in_ram else tmp_path_factory.mktemp(f"index-{request.param}")
    index: VectorIndex = EdgeIndex(path / "edge") if request.param == "edge" else QdrantIndex("c", path=path / "q")
    try:
        index.ensure_ready(DIM)
        yield index
    finally:
        index.close()
        if in_ram:
            shutil.rmtree(path, ignore_errors=True)


# No shrinking: a shrink replays thousands of corpora against the engines (minutes); the failure is reported as
# found, and the messages name the principal, the chunks and the query.
@settings(PROPERTY, max_examples=INDEX_EXAMPLES, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(
    scenario=_scenario(),
    queries=st.lists(st.tuples(_vector, st.sampled_from((1, 2, 3, 5, 10, 64))), min_size=1, max_size=2),
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=2),
)
def test_every_search_is_exactly_what_the_principal_may_read(
    engine: VectorIndex,
    scenario: tuple[list[DocSpec], list[Principal]],
    queries: list[tuple[tuple[int, ...], int]],
    words: list[str],
) -> None:
    for tenant in CORPUS_TENANTS:  # the previous example's documents are gone: no state between examples
        assert engine.vectors(tenant) == []
    corpus, principals = scenario
    docs = {uuid.uuid4().hex: doc for doc in corpus}
    try:
        for doc_id, doc in docs.items():
            _write(engine, doc_id, doc)
        empty = {doc_id for doc_id, doc in docs.items() if not doc.readable_acl()}
        for principal in principals:
            allowed = _allowed(principal, docs)
            assert not any(key[0] in empty for key in allowed)
            event("readable chunks: " + ("none" if not allowed else "1-3" if len(allowed) <= 3 else "4+"))
            for vector, k in queries:
                query = [float(x) for x in vector]
                dense = engine.search(principal, query, k)
                _assert_dense_exact(dense, allowed, query, k, principal)
                for mode in (SearchMode.SPARSE, SearchMode.HYBRID):
                    # "chunk" is in every chunk's text: with room for all, nothing readable may be missing
                    for text, complete in ((" ".join(words), False), ("chunk " + " ".join(words), True)):
                        keys = _keys(engine.search(principal, query, k, mode=mode, text=text))
                        leaked = [key for key in keys if key not in allowed]
                        assert not leaked, f"LEAK to {_who(principal)} in {mode} for {text!r}: {leaked}"
                        assert not any(key[0] in empty for key in keys)
                        assert len(keys) <= k
                        if complete or mode is SearchMode.HYBRID:  # hybrid's dense half ranks every readable chunk
                            assert len(keys) == min(k, len(allowed)), (_who(principal), mode, text, k, keys)
    finally:
        for doc_id, doc in docs.items():
            engine.delete_document(doc.tenant, doc_id)


def test_a_chunk_with_an_empty_acl_is_read_by_nobody(engine: VectorIndex) -> None:
    """Written directly, every principal of the pools (and every group of the pools at once) finds nothing."""
    doc_id = uuid.uuid4().hex
    point = ChunkPoint("acme", doc_id, 1, "x.txt", (), Chunk(0, "chunk kayak", None, None, 2), (1.0,) * DIM)
    engine.upsert([point])
    engine.publish("acme", doc_id, 1, 1)
    try:
        assert engine.count_document("acme", doc_id) == 1
        for tenant in PRINCIPAL_TENANTS:
            for subject in SUBJECTS:
                principal = Principal.of(tenant, subject, GROUPS)
                for mode in SearchMode:
                    assert engine.search(principal, [1.0] * DIM, 10, mode=mode, text="chunk kayak") == []
    finally:
        engine.delete_document("acme", doc_id)


def _forged(tenant: object, subject: object = "alice", groups: object = frozenset()) -> Principal:
    """A Principal whose fields were set past its validation (object.__setattr__ on the frozen dataclass)."""
    principal = object.__new__(Principal)
    for name, value in (("tenant", tenant), ("subject", subject), ("groups", groups), ("is_admin", False)):
        object.__setattr__(principal, name, value)
    return principal


class _LookAlike:
    tenant = "acme"
    subject = "alice"
    groups = frozenset({"eng"})
    is_admin = False


@pytest.mark.parametrize(
    "who",
    [
        pytest.param(lambda: None, id="none"),
        pytest.param(_LookAlike, id="look-alike-object"),
        pytest.param(lambda: _forged("acme", subject=""), id="forged-empty-subject"),
        pytest.param(lambda: _forged("acme", groups=frozenset({""})), id="forged-empty-group"),
        pytest.param(lambda: _forged("acme", groups=frozenset({"eng\n"})), id="forged-control-group"),
        pytest.param(lambda: _forged("acme", groups=frozenset({"g" * 300})), id="forged-long-group"),
    ],
)
def test_an_identity_that_cannot_be_evaluated_is_an_error_before_the_engine(engine: VectorIndex, who: Any) -> None:
    for mode in SearchMode:
        with pytest.raises(AccessError):
            engine.search(who(), [1.0] * DIM, 5, mode=mode, text="chunk")


@pytest.mark.parametrize("tenant", ["", "acme\n"], ids=["empty", "control"])
def test_a_forged_principal_with_an_invalid_tenant_is_an_error_not_an_empty_answer(
    engine: VectorIndex, tenant: str
) -> None:
    """acl_filter says it re-validates every identifier before the engine is asked; the tenant is one of them."""
    with pytest.raises(AccessError):
        engine.search(_forged(tenant), [1.0] * DIM, 5)


# ---------------------------------------------------------------------------------------------------------------
# Shared embedded service for 2. and 3.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    tenant: str = "acme"
    groups: tuple[str, ...] = ()

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.name, self.tenant, self.groups)


ALICE = User("alice", groups=("eng",))
BOB = User("bob", groups=("sales",))
CAROL = User("carol")
ERIN = User("erin", groups=("eng",))
GROUPY = User("group:eng")  # a subject spelled like a group token
STAR = User("*")
USERISH = User("user:alice")  # a subject spelled like a user token
MALLORY = User("mallory", groups=("user:alice", "user:bob", "*", "Eng", "eng "))  # groups spelled like tokens
ALICE_GLOBEX = User("alice", "globex", ("eng",))
DORA = User("dora")  # owns the generated uploads
USERS = (ALICE, BOB, CAROL, ERIN, GROUPY, STAR, USERISH, MALLORY, ALICE_GLOBEX, DORA)


@dataclass(frozen=True)
class Stored:
    """A document accepted by the API, with what the ACL computed here says about its readers."""

    id: str
    owner: User
    users: tuple[str, ...]
    groups: tuple[str, ...]

    def readable_by(self, user: User) -> bool:
        return user.tenant == self.owner.tenant and (
            user.name == self.owner.name or user.name in self.users or bool(set(user.groups) & set(self.groups))
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("fail-closed"))


@pytest.fixture(scope="module")
def known() -> list[Stored]:
    """Every document uploaded to `service`, with its readers computed here."""
    return []


@pytest.fixture(scope="module")
def secret_doc(service: Served, known: list[Stored]) -> tuple[str, str]:
    """A document only alice (and group eng) may read: (id, its text)."""
    body = f"Alice's secret launch code is {uuid.uuid4().hex}."
    response = upload(service.client, ALICE.headers, "alice-secret.txt", body.encode(), groups=["eng"])
    assert response.status_code == 202, response.text
    document_id = response.json()["id"]
    assert wait_final(service.client, ALICE.headers, document_id)["status"] == "ready"
    known.append(Stored(document_id, ALICE, (), ("eng",)))
    return document_id, body


# ---------------------------------------------------------------------------------------------------------------
# 2. Claims that cannot be evaluated
# ---------------------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(claims: dict[str, Any], *, with_exp: bool = True) -> dict[str, str]:
    """An HS256 token with exactly these claims (signed here, so no library refuses to encode them)."""
    payload = {**claims, "exp": int(time.time()) + 3600} if with_exp else dict(claims)
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return {"Authorization": f"Bearer {head}.{body}.{_b64(signature)}"}


VALID_CLAIMS: dict[str, Any] = {"sub": "alice", "tenant": "acme", "groups": ["eng"]}


def _assert_refused_without_data(client: TestClient, headers: dict[str, str], secret_doc: tuple[str, str]) -> None:
    document_id, body = secret_doc
    answers = {
        "query": client.post("/v1/query", headers=headers, json={"query": "launch code", "top_k": 50}),
        "list": client.get("/v1/documents", headers=headers),
        "get": client.get(f"/v1/documents/{document_id}", headers=headers),
    }
    for what, response in answers.items():
        assert response.status_code in (401, 403), (what, response.status_code, response.text[:300])
        payload = response.json()
        assert "results" not in payload and "documents" not in payload and "id" not in payload, (what, payload)
        assert body not in response.text and "alice-secret" not in response.text, what


def test_the_locally_signed_valid_claims_are_accepted(service: Served, secret_doc: tuple[str, str]) -> None:
    """The control for the refusals below: the same signing with well-formed claims reads alice's document."""
    answer = service.client.post("/v1/query", headers=signed(VALID_CLAIMS), json={"query": "launch code"})
    assert answer.status_code == 200, answer.text
    assert [r["document_id"] for r in answer.json()["results"]] == [secret_doc[0]]


_CONTROL_C0 = [chr(c) for c in (*range(0x20), 0x7F)]
_NAMED_BAD_CLAIMS: dict[str, dict[str, Any]] = {
    "no-tenant": {"sub": "alice", "groups": ["eng"]},
    "no-sub": {"tenant": "acme", "groups": ["eng"]},
    "no-groups": {"sub": "alice", "tenant": "acme"},
    "groups-string": {**VALID_CLAIMS, "groups": "eng"},
    "groups-number": {**VALID_CLAIMS, "groups": 7},
    "groups-null": {**VALID_CLAIMS, "groups": None},
    "groups-object": {**VALID_CLAIMS, "groups": {"$in": ["eng"]}},
    "groups-list-with-number": {**VALID_CLAIMS, "groups": ["eng", 1]},
    "groups-list-with-null": {**VALID_CLAIMS, "groups": ["eng", None]},
    "groups-list-with-list": {**VALID_CLAIMS, "groups": [["eng"]]},
    "groups-empty-string": {**VALID_CLAIMS, "groups": ["eng", ""]},
    "groups-blank": {**VALID_CLAIMS, "groups": ["   "]},
    "groups-300-chars": {**VALID_CLAIMS, "groups": ["eng", "g" * 300]},
    "groups-257-chars": {**VALID_CLAIMS, "groups": ["g" * 257]},
    "groups-2000": {**VALID_CLAIMS, "groups": ["eng", *(f"g{i}" for i in range(1999))]},
    "groups-1025": {**VALID_CLAIMS, "groups": [f"g{i}" for i in range(MAX_GROUPS + 1)]},
    "tenant-empty": {**VALID_CLAIMS, "tenant": ""},
    "tenant-number": {**VALID_CLAIMS, "tenant": 1},
    "tenant-null": {**VALID_CLAIMS, "tenant": None},
    "tenant-list": {**VALID_CLAIMS, "tenant": ["acme"]},
    "tenant-newline": {**VALID_CLAIMS, "tenant": "acme\n"},
    "tenant-nul": {**VALID_CLAIMS, "tenant": "acme\x00"},
    "tenant-escape": {**VALID_CLAIMS, "tenant": "\x1b[2Jacme"},
    "tenant-del": {**VALID_CLAIMS, "tenant": "acme\x7f"},
    "tenant-300-chars": {**VALID_CLAIMS, "tenant": "t" * 300},
    "sub-empty": {**VALID_CLAIMS, "sub": ""},
    "sub-number": {**VALID_CLAIMS, "sub": 42},
    "sub-tab": {**VALID_CLAIMS, "sub": "ali\tce"},
    "roles-string": {**VALID_CLAIMS, "roles": "tessera_admin"},
    "roles-list-with-number": {**VALID_CLAIMS, "roles": ["tessera_admin", 1]},
}


@pytest.mark.parametrize("claims", list(_NAMED_BAD_CLAIMS.values()), ids=list(_NAMED_BAD_CLAIMS))
def test_named_malformed_claims_are_refused_with_no_data(
    service: Served, secret_doc: tuple[str, str], claims: dict[str, Any]
) -> None:
    _assert_refused_without_data(service.client, signed(claims), secret_doc)


def test_a_token_without_exp_is_refused(service: Served, secret_doc: tuple[str, str]) -> None:
    _assert_refused_without_data(service.client, signed(VALID_CLAIMS, with_exp=False), secret_doc)


@pytest.mark.parametrize("claim", ["tenant", "sub", "groups"])
@pytest.mark.parametrize("char", ["\x85", "\x9b"], ids=["NEL", "CSI"])
def test_c1_control_characters_in_identifiers_are_refused(
    service: Served, secret_doc: tuple[str, str], claim: str, char: str
) -> None:
    """core/access.py: identifiers are "printable, no control characters"; U+0080-U+009F are control characters
    (Unicode category Cc; U+009B is the 8-bit CSI that drives terminals reading the logs)."""
    value = f"acme{char}" if claim == "tenant" else f"alice{char}" if claim == "sub" else [f"eng{char}"]
    _assert_refused_without_data(service.client, signed({**VALID_CLAIMS, claim: value}), secret_doc)


_non_string = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.sampled_from(["eng", "acme", "alice"]), max_size=2),
    st.dictionaries(st.sampled_from(["$in", "$or", "eq"]), st.sampled_from(["eng", "acme"]), max_size=2),
)
# Strings no identifier may be (C1 controls have their own test above): empty, blank, too long, or holding a C0
# control character or DEL.
_bad_string = st.one_of(
    st.just(""),
    st.sampled_from([" ", "   ", "\u00a0", "\u2003 "]),
    st.integers(257, 400).map(lambda n: "x" * n),
    st.tuples(st.text(max_size=4), st.sampled_from(_CONTROL_C0), st.text(max_size=4)).map("".join),
)
_bad_scalar = _non_string | _bad_string
_bad_groups = st.one_of(
    _non_string.filter(lambda v: not isinstance(v, list)),
    st.text(max_size=8),  # a string where a list belongs (the empty string too)
    st.tuples(st.lists(st.sampled_from(["eng", "sales"]), max_size=3), _bad_scalar | st.lists(st.just("eng"))).map(
        lambda parts: [*parts[0], parts[1]]
    ),
    st.integers(MAX_GROUPS + 1, 2000).map(lambda n: [f"g{i}" for i in range(n)]),
)
_corruption = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(["sub", "tenant", "groups"]), st.none()),
    st.tuples(st.just("set"), st.just("tenant"), _bad_scalar),
    st.tuples(st.just("set"), st.just("sub"), _bad_scalar),
    st.tuples(st.just("set"), st.just("groups"), _bad_groups),
    # "roles" of the wrong shape (a list of strings would be well formed, so none is drawn)
    st.tuples(
        st.just("set"),
        st.just("roles"),
        st.one_of(
            st.booleans(),
            st.integers(),
            st.just("tessera_admin"),
            st.dictionaries(st.just("tessera_admin"), st.booleans(), min_size=1),
            st.lists(st.integers() | st.none(), min_size=1, max_size=2).map(lambda r: ["tessera_admin", *r]),
        ),
    ),
)


@st.composite
def _malformed_claims(draw: st.DrawFn) -> dict[str, Any]:
    claims: dict[str, Any] = dict(VALID_CLAIMS)
    for action, claim, value in draw(st.lists(_corruption, min_size=1, max_size=3)):
        if action == "drop":
            claims.pop(claim, None)
        else:
            claims[claim] = value
    return claims


def test_generated_malformed_claims_are_refused_with_no_data(service: Served, secret_doc: tuple[str, str]) -> None:
    @settings(PROPERTY, max_examples=CLAIM_EXAMPLES)
    @given(claims=_malformed_claims())
    def refused(claims: dict[str, Any]) -> None:
        _assert_refused_without_data(service.client, signed(claims), secret_doc)

    refused()


# ---------------------------------------------------------------------------------------------------------------
# 3. Caller-supplied values never widen access
# ---------------------------------------------------------------------------------------------------------------


def _post_acl(client: TestClient, owner: User, acl: str | None, **form: str) -> Any:
    content = f"Inert ACL probe {uuid.uuid4().hex}: the quarterly kayak budget.".encode()
    data = dict(form) if acl is None else {"acl": acl, **form}
    return client.post("/v1/documents", headers=owner.headers, files={"file": ("probe.txt", content)}, data=data)


# (raw acl field, users and groups stored when accepted; None: must be refused with a 4xx)
_EXPLICIT_ACLS: list[tuple[str, tuple[tuple[str, ...], tuple[str, ...]] | None]] = [
    (json.dumps({"users": ["group:eng"]}), (("group:eng",), ())),
    (json.dumps({"groups": ["user:bob"]}), ((), ("user:bob",))),
    (json.dumps({"users": ["*"], "groups": ["*"]}), (("*",), ("*",))),
    (json.dumps({"users": ["user:alice"]}), (("user:alice",), ())),
    (json.dumps({"groups": ["group:eng"]}), ((), ("group:eng",))),
    (json.dumps({"users": ["u" * 256]}), (("u" * 256,), ())),
    (json.dumps({"users": ["bob ", " bob", "BOB"]}), (("bob ", " bob", "BOB"), ())),
    (json.dumps({"users": [""]}), None),
    (json.dumps({"groups": [" "]}), None),
    (json.dumps({"users": ["u" * 300]}), None),
    (json.dumps({"users": ["bob\n"]}), None),
    (json.dumps({"groups": ["eng\x00"]}), None),
    (json.dumps({"users": {"$or": [{"groups": "eng"}]}}), None),
    (json.dumps({"users": [{"$or": ["bob"]}]}), None),
    (json.dumps({"$or": [{"users": ["bob"]}]}), None),
    (json.dumps({"users": ["bob"], "tenant": "globex"}), None),
    (json.dumps({"users": [], "acl": ["user:bob"]}), None),
    (json.dumps({"live": 1}), None),
    (json.dumps({"users": [1]}), None),
    (json.dumps({"users": "bob"}), None),
    (json.dumps({"users": [f"u{i}" for i in range(513)]}), None),
    ("null", None),
    ("[]", None),
    ('"users"', None),
    ("{", None),
]


def _check_everyone(client: TestClient, stored: Sequence[Stored], known: Sequence[Stored]) -> None:
    """As every user: each of `stored` reads 200 iff readable; the listing is exactly the readable ones of every
    document the service holds (`known`); every query result is readable, and all are returned when they fit."""
    for user in USERS:
        for doc in stored:
            status = client.get(f"/v1/documents/{doc.id}", headers=user.headers).status_code
            assert status == (200 if doc.readable_by(user) else 404), (user, doc)
        readable = {d.id for d in known if d.readable_by(user)}
        listed: set[str] = set()
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/documents", headers=user.headers, params=params)
            assert page.status_code == 200, page.text
            listed |= {d["id"] for d in page.json()["documents"]}
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert listed == readable, (user, "listed, not readable:", listed - readable, "lost:", readable - listed)
        answer = client.post("/v1/query", headers=user.headers, json={"query": "quarterly kayak budget", "top_k": 50})
        assert answer.status_code == 200, answer.text
        returned = {r["document_id"] for r in answer.json()["results"]}  # each probe is one chunk
        assert returned <= readable, f"LEAK to {user}: {returned - readable}"
        if len(readable) <= 50:
            assert returned == readable, (user, readable - returned)


def _wait_all(client: TestClient, stored: Sequence[Stored]) -> None:
    for doc in stored:
        assert wait_final(client, doc.owner.headers, doc.id)["status"] == "ready"


def _accepted(response: Any, owner: User, users: Sequence[str], groups: Sequence[str]) -> Stored:
    assert response.status_code == 202, response.text
    record = response.json()
    # stored as given (deduplicated, the owner first): inert data, no token rewritten or expanded
    assert record["acl"] == {"users": list(dict.fromkeys([owner.name, *users])), "groups": list(dict.fromkeys(groups))}
    return Stored(record["id"], owner, tuple(users), tuple(groups))


def test_acl_values_that_look_like_tokens_or_filters_are_refused_or_inert(service: Served, known: list[Stored]) -> None:
    stored: list[Stored] = []
    for raw, expected in _EXPLICIT_ACLS:
        response = _post_acl(service.client, ALICE, raw)
        if expected is None:
            assert 400 <= response.status_code < 500, (raw, response.status_code, response.text[:200])
            assert "id" not in response.json(), raw
        else:
            stored.append(_accepted(response, ALICE, *expected))
    # form fields beside the ACL that name payload keys: refused, or ignored (the document stays in acme)
    for form in ({"tenant": "globex"}, {"live": "1"}, {"groups": "eng"}):
        response = _post_acl(service.client, ALICE, None, **form)
        if response.status_code == 202:
            stored.append(_accepted(response, ALICE, (), ()))
        else:
            assert 400 <= response.status_code < 500, (form, response.text[:200])
    response = _post_acl(service.client, ALICE, json.dumps({"users": ["bob"]}), tenant="globex")
    if response.status_code == 202:
        stored.append(_accepted(response, ALICE, ("bob",), ()))
    else:
        assert 400 <= response.status_code < 500, response.text[:200]
    known.extend(stored)
    _wait_all(service.client, stored)
    _check_everyone(service.client, stored, known)


_TRICKY_NAMES = (
    "group:eng",
    "user:alice",
    "user:bob",
    "*",
    "%",
    "$or",
    '{"$or": []}',
    "alice",
    "ALICE",
    "eng",
    "Eng",
    "eng ",
    "tenant",
    "acl",
    "live",
    "user:",
    "group:",
    ":",
    "a" * 256,
    "a" * 257,
    "",
    " ",
    "bob\n",
    "\x00",
)
_name = st.sampled_from(_TRICKY_NAMES) | st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from(":*$ "), max_size=12
)


def _identifier_ok(name: str) -> bool:
    """The identifier rule (core/access.py), restated: printable in Python's sense, not blank, bounded."""
    return 0 < len(name) <= 256 and bool(name.strip()) and name.isprintable()


def test_generated_acl_names_are_refused_or_inert(service: Served, known: list[Stored]) -> None:
    stored: list[Stored] = []

    @settings(PROPERTY, max_examples=ACL_EXAMPLES)
    @given(users=st.lists(_name, max_size=3), groups=st.lists(_name, max_size=3))
    def one_upload(users: list[str], groups: list[str]) -> None:
        response = _post_acl(service.client, DORA, json.dumps({"users": users, "groups": groups}))
        if not all(_identifier_ok(n) for n in (*users, *groups)):
            assert 400 <= response.status_code < 500, (users, groups, response.text[:200])
            return
        doc = _accepted(response, DORA, users, groups)
        stored.append(doc)
        for user in USERS:  # the registry's answer, before ingestion
            status = service.client.get(f"/v1/documents/{doc.id}", headers=user.headers).status_code
            assert status == (200 if doc.readable_by(user) else 404), (user, users, groups)

    one_upload()
    known.extend(stored)
    _wait_all(service.client, stored)
    _check_everyone(service.client, stored, known)


@pytest.mark.parametrize(
    "extra",
    [
        {"filter": {}},
        {"filter": {"must": []}},
        {"tenant": "globex"},
        {"acl": ["user:bob", "group:sales"]},
        {"groups": ["eng", "sales"]},
        {"where": {"$or": [{"tenant": "globex"}]}},
        {"user": "bob"},
        {"sub": "bob"},
        {"principal": {"tenant": "globex", "subject": "dave"}},
        {"live": 0},
        {"with_payload": True},
    ],
    ids=lambda extra: next(iter(extra)),
)
def test_query_fields_beside_the_question_never_widen_the_results(
    service: Served, secret_doc: tuple[str, str], extra: dict[str, Any]
) -> None:
    body = {"query": "launch code", "top_k": 50}
    for user in (BOB, CAROL, ALICE_GLOBEX, MALLORY):  # none of them may read alice's document
        baseline = service.client.post("/v1/query", headers=user.headers, json=body)
        assert baseline.status_code == 200
        allowed = {r["document_id"] for r in baseline.json()["results"]}
        assert secret_doc[0] not in allowed
        response = service.client.post("/v1/query", headers=user.headers, json={**body, **extra})
        if response.status_code != 200:
            assert 400 <= response.status_code < 500 and "results" not in response.json(), response.text[:200]
        else:
            assert {r["document_id"] for r in response.json()["results"]} == allowed
        assert secret_doc[1] not in response.text
        # the same names as query parameters and headers are ignored
        key, value = next(iter(extra.items()))
        params = {key: json.dumps(value)}
        headers = {**user.headers, f"X-{key}": json.dumps(value)}
        widened = service.client.post("/v1/query", headers=headers, params=params, json=body)
        assert widened.status_code == 200 and {r["document_id"] for r in widened.json()["results"]} == allowed
        listing = service.client.get("/v1/documents", headers=headers, params={**params, "limit": 200})
        assert listing.status_code == 200 and secret_doc[0] not in {d["id"] for d in listing.json()["documents"]}


# ---------------------------------------------------------------------------------------------------------------
# 4. The registry fails while access is being decided
# ---------------------------------------------------------------------------------------------------------------


def test_a_query_that_cannot_be_audited_is_not_answered_on_sqlite(service: Served, secret_doc: tuple[str, str]) -> None:
    """The embedded default's registry with its audit table renamed away: document reads still work (their own
    tables are fine), but the query, which writes its audit record before answering, answers 503 and no results."""
    document_id, body = secret_doc
    database = service.runtime.settings.data_dir / "registry.db"
    with sqlite3.connect(database, timeout=10) as connection:
        connection.execute("ALTER TABLE audit_log RENAME TO audit_log_gone")
    try:
        assert service.client.get(f"/v1/documents/{document_id}", headers=ALICE.headers).status_code == 200
        response = service.client.post("/v1/query", headers=ALICE.headers, json={"query": "launch code"})
        assert response.status_code == 503, response.text[:300]
        assert "results" not in response.json() and body not in response.text
    finally:
        with sqlite3.connect(database, timeout=10) as connection:
            connection.execute("ALTER TABLE audit_log_gone RENAME TO audit_log")
    assert service.client.post("/v1/query", headers=ALICE.headers, json={"query": "launch code"}).status_code == 200


class LoopbackProxy:
    """A TCP forwarder on 127.0.0.1 to the test Postgres server: stopping it closes every forwarded connection
    and refuses new ones, as a registry that went away does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


def _no_document_data(response: Any, body: str, document_id: str) -> None:
    assert 500 <= response.status_code < 600, (response.status_code, response.text[:300])
    assert body not in response.text and "alice-secret" not in response.text and "sha256" not in response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        payload = response.json()
        assert not {"documents", "results", "id", "acl", "owner"} & set(payload), payload
    assert document_id not in response.text


def _query_answer_is_readable_or_an_error(response: Any, may_read: bool, document_id: str, body: str) -> None:
    """Queries take ACLs from the index, not the registry: an answer holds only what the caller may read."""
    if response.status_code == 200:
        returned = {r["document_id"] for r in response.json()["results"]}
        assert returned == ({document_id} if may_read else set()), returned
    else:
        assert response.status_code >= 500 and "results" not in response.text, response.text[:300]
        assert body not in response.text


def test_registry_failures_while_deciding_access_answer_errors_with_no_data(tmp_path: Path) -> None:
    with postgres_schema() as schema_url:
        schema = str(make_url(schema_url).query["options"]).split("=", 1)[1]
        server = make_url(POSTGRES_URL)
        proxy = LoopbackProxy((server.host or "127.0.0.1", server.port or 5432))
        proxy.start()
        proxied = make_url(schema_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")

        def rename(old: str, new: str) -> None:
            with admin.connect() as connection:
                connection.execute(text("SET lock_timeout = '10s'"))
                connection.execute(text(f'ALTER TABLE "{schema}"."{old}" RENAME TO "{new}"'))

        app = create_app(settings_for(tmp_path, registry_url=proxied))
        try:
            with TestClient(app, raise_server_exceptions=False) as client:
                body = f"Alice's secret launch code is {uuid.uuid4().hex}."
                created = upload(client, ALICE.headers, "alice-secret.txt", body.encode(), groups=["eng"])
                assert created.status_code == 202, created.text
                document_id = created.json()["id"]
                assert wait_final(client, ALICE.headers, document_id)["status"] == "ready"

                def read(user: User) -> dict[str, Any]:
                    return {
                        "get": client.get(f"/v1/documents/{document_id}", headers=user.headers),
                        "list": client.get("/v1/documents", headers=user.headers),
                        "query": client.post("/v1/query", headers=user.headers, json={"query": "launch code"}),
                    }

                # 1. the registry's server goes away (connections cut, new ones refused)
                proxy.stop()
                for user in (ALICE, BOB):
                    for what, response in read(user).items():
                        assert response.status_code == 503, (user, what, response.status_code, response.text[:300])
                        _no_document_data(response, body, document_id)
                ready = client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["registry"] != "ok", ready.text
                # ... and comes back: the same requests are answered again
                proxy.start()
                assert all(r.status_code == 200 for r in read(ALICE).values())
                assert [r["document_id"] for r in read(ALICE)["query"].json()["results"]] == [document_id]

                # 2. the audit table is gone: documents read fine, the query is not answered
                rename("audit_log", "audit_log_gone")
                try:
                    answers = read(ALICE)
                    assert answers["get"].status_code == 200 and answers["list"].status_code == 200
                    _no_document_data(answers["query"], body, document_id)
                finally:
                    rename("audit_log_gone", "audit_log")

                # 3. the ACL table is gone, then 4. the documents table: no document is shown to anyone; queries
                # (which read ACLs from the index, not the registry) may answer, but only with what the caller may read
                for table, users in (("document_acl", (ALICE, BOB, ALICE_GLOBEX)), ("documents", (ALICE, BOB))):
                    rename(table, f"{table}_gone")
                    try:
                        for user in users:
                            answers = read(user)
                            for what in ("get", "list"):
                                _no_document_data(answers[what], body, document_id)
                            _query_answer_is_readable_or_an_error(answers["query"], user is ALICE, document_id, body)
                    finally:
                        rename(f"{table}_gone", table)
                assert all(r.status_code == 200 for r in read(ALICE).values())
        finally:
            proxy.stop()
            admin.dispose()
