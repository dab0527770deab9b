"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis 4, Hypothesis) on a real embedded service:
the model, the parser, Qdrant Edge, the SQLite registry and the in-process Celery worker.

For every operation the schema lists, generated requests (valid and invalid ones) are sent
- with valid credentials: a user, a reader of another's document, a tenant admin, an admin of another
  tenant and a service account's API key; path parameters are sometimes swapped for the ids of real
  documents and keys, so that the 200, 403 and 409 paths run too, not only 404;
- without valid credentials: no header, another scheme, malformed, forged, expired, unsigned, claimless,
  unknown and revoked credentials.
Every response must be a non-5xx, with a status code the operation documents and a body (and content type)
matching the documented schema. Without valid credentials every operation but the probes answers 401; the
probes (/healthz, /readyz, /metrics) answer without any.

The two multipart operations (upload, replace) are fuzzed like the others: schemathesis generates their
`multipart/form-data` body from the schema that `api.upload.multipart_body` declares. Random generation rarely
produces hostile multipart *structure* (several files, a file where a field belongs, no boundary, ...), so
those are covered by hand-written cases below. The last tests take the registry away (its SQLite file
becomes unreadable) and check that every operation then answers a documented 503 (with Retry-After) unless it
refuses the request before asking the registry, and that /readyz answers 503 naming it.

Bounded: `MAX_EXAMPLES` per operation and kind of test (TESSERA_FUZZ_SCALE multiplies them for a deeper run);
the module runs in about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.auth import mint_token
from tests.conftest import SECRET
from tests.helpers import auth, upload, wait_final
from tests.integration.conftest import Served, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Examples per operation, for each kind of test; TESSERA_FUZZ_SCALE multiplies them (e.g. 10 for a deeper run).
_SCALE = float(os.environ.get("TESSERA_FUZZ_SCALE", "1"))
MAX_EXAMPLES = {
    kind: max(1, round(count * _SCALE))
    for kind, count in {"authenticated": 80, "anonymous": 25, "probe": 10, "outage": 10}.items()
}

# Every operation of the schema, as schemathesis labels it. A new route fails test_the_fuzzer_covers_every_operation
# until it is added here, so none escapes the fuzzer.
PROBES = ["GET /healthz", "GET /readyz", "GET /metrics"]
PROTECTED = [
    "POST /v1/documents",
    "GET /v1/documents",
    "GET /v1/documents/{document_id}",
    "DELETE /v1/documents/{document_id}",
    "PUT /v1/documents/{document_id}/content",
    "POST /v1/documents/{document_id}/retry",
    "PUT /v1/documents/{document_id}/acl",
    "POST /v1/query",
    "GET /v1/apikeys",
    "POST /v1/apikeys",
    "DELETE /v1/apikeys/{key_id}",
    "GET /v1/audit",
    "POST /v1/admin/check",
]
MULTIPART = {"POST /v1/documents", "PUT /v1/documents/{document_id}/content"}

CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Not negative_data_rejection: a scalar query parameter sent twice is taken as its last value (FastAPI), which
# schemathesis counts as accepting invalid data; invalid requests are still generated and must not get a 5xx.
CHECKS = [not_a_server_error, *CONFORMANCE]
ALICE = auth("alice", groups=["eng"])
BOB = auth("bob", groups=["eng"])  # reads alice's shared document, may not change it
ADMIN = auth("root", admin=True)
GLOBEX_ADMIN = auth("root", tenant="globex", admin=True)  # an admin, of another tenant


def _fuzz_settings(max_examples: int) -> Callable[[Any], Any]:
    # No shrinking: the service is stateful, and schemathesis reports the failing request (with a curl line) as sent.
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


@dataclass
class Target:
    """The running service, its schema, and the real resources path parameters are drawn from."""

    served: Served
    schema: BaseSchema
    session: asgi.ASGIClient
    document_ids: list[str]
    hostile_target: str  # a document of alice's that only the hand-written multipart cases replace
    key_ids: list[str]
    identities: list[dict[str, str]]
    bad_credentials: list[dict[str, str]]

    def operation(self, label: str) -> APIOperation:
        method, path = label.split(" ", 1)
        return self.schema[path][method]  # type: ignore[no-any-return]


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _bad_credentials(revoked_key: str) -> list[dict[str, str]]:
    now = int(time.time())
    claims = {"sub": "alice", "tenant": "acme", "groups": ["eng"], "exp": now + 3600}
    return [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
        {"Authorization": "Bearer not.a.jwt"},
        _bearer(jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")),  # forged
        _bearer(mint_token(SECRET, subject="alice", tenant="acme", groups=["eng"], ttl_seconds=-3600)),  # expired
        _bearer(jwt.encode(claims, None, algorithm="none")),  # unsigned
        _bearer(jwt.encode({"sub": "alice", "exp": now + 3600}, SECRET, algorithm="HS256")),  # no tenant, no groups
        _bearer(jwt.encode({**claims, "groups": "eng"}, SECRET, algorithm="HS256")),  # groups not a list
        _bearer("tsk_0123456789abcdef_" + "A" * 43),  # unknown API key
        _bearer(revoked_key),
    ]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    for served in serve(tmp_path_factory.mktemp("fuzz")):
        client = served.client
        # Real resources: alice's document shared with bob, bob's private one, a failed one (whitespace only),
        # and API keys: one to revoke by id, one revoked already, one acting as a service account.
        shared = upload(client, ALICE, "shared.txt", b"The harbour pilot guides tankers at dawn.", groups=["eng"])
        private = upload(client, BOB, "private.txt", b"Bob keeps the orchard ledger in a red book.")
        failed = upload(client, ALICE, "blank.txt", b"   \n\t  \n")
        hostile = upload(client, ALICE, "hostile.txt", b"The ferry timetable changes in winter.")
        document_ids = [r.json()["id"] for r in (shared, private, failed, hostile)]
        for document_id, headers in zip(document_ids, (ALICE, BOB, ALICE, ALICE), strict=True):
            wait_final(client, headers, document_id)
        keys = [
            client.post("/v1/apikeys", headers=ADMIN, json={"name": f"fuzz{i}", "groups": ["eng"]}) for i in range(3)
        ]
        assert all(k.status_code == 201 for k in keys), [k.text for k in keys]
        revoked = keys[1].json()
        assert client.delete(f"/v1/apikeys/{revoked['id']}", headers=ADMIN).status_code == 200
        spec = client.get("/openapi.json").json()
        schema = schemathesis.openapi.from_dict(spec)
        schema.app = client.app
        # schemathesis's own in-process transport; not entered as a context manager, so it does not run the
        # app's lifespan a second time (serve() already did, through the TestClient).
        session = asgi.get_client(client.app)
        yield Target(
            served=served,
            schema=schema,
            session=session,
            document_ids=document_ids[:3],
            hostile_target=document_ids[3],
            key_ids=[keys[0].json()["id"], revoked["id"]],
            identities=[ALICE, BOB, ADMIN, GLOBEX_ADMIN, _bearer(keys[2].json()["key"])],
            bad_credentials=_bad_credentials(revoked["key"]),
        )


def _cases(operation: APIOperation) -> st.SearchStrategy[Case]:
    return st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )


def _with_real_ids(case: Case, target: Target, pick: int | None) -> None:
    """Point the case at a real document or key (pick is an index), or leave the generated value."""
    if pick is None:
        return
    parameters = dict(case.path_parameters or {})
    if "document_id" in parameters:
        parameters["document_id"] = target.document_ids[pick % len(target.document_ids)]
    if "key_id" in parameters:
        parameters["key_id"] = target.key_ids[pick % len(target.key_ids)]
    case.path_parameters = parameters


def _send(case: Case, target: Target, credentials: dict[str, str], checks: list[Any] = CHECKS) -> Any:
    # The generated case may carry an Authorization header of its own (the schema declares bearer auth):
    # the identity under test replaces it, or removes it when it has none.
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers.update(credentials)
    return case.call_and_validate(session=target.session, checks=checks)


def test_the_fuzzer_covers_every_operation(target: Target) -> None:
    spec = target.schema.raw_schema
    labels = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}
    assert labels == set(PROTECTED) | set(PROBES)


@pytest.mark.parametrize("label", PROTECTED + PROBES)
def test_every_operation_documents_what_it_can_answer(target: Target, label: str) -> None:
    method, path = label.split(" ", 1)
    definition = target.schema.raw_schema["paths"][path][method.lower()]
    documented = set(definition["responses"])
    if label in PROBES:
        assert "security" not in definition, f"{label} is a probe: it must not ask for credentials"
        return
    assert definition.get("security"), f"{label} must declare that it needs credentials"
    # Every protected route authenticates (401) and uses the registry or the audit log, which can be down (503).
    assert {"401", "503"} <= documented, f"{label} documents {sorted(documented)}"
    json_body = "application/json" in definition.get("requestBody", {}).get("content", {})
    if definition.get("parameters") or json_body:
        assert "422" in documented, f"{label} validates its input, so it can answer 422"
    if json_body:  # FastAPI answers 400 to a body that is not UTF-8 (found by the fuzzer on /v1/admin/check)
        assert "400" in documented, f"{label} reads a JSON body, so it can answer 400"
    if label in MULTIPART:
        assert {"400", "413", "415"} <= documented


@pytest.mark.parametrize("label", PROTECTED)
def test_authenticated_requests(target: Target, label: str) -> None:
    """Valid credentials, generated (valid and invalid) requests: never a 5xx or a 401, always as documented."""
    operation = target.operation(label)

    @_fuzz_settings(MAX_EXAMPLES["authenticated"])
    @given(
        case=_cases(operation),
        identity=st.sampled_from(target.identities),
        pick=st.none() | st.integers(min_value=0, max_value=5),
    )
    def run(case: Case, identity: dict[str, str], pick: int | None) -> None:
        _with_real_ids(case, target, pick)
        response = _send(case, target, identity)
        assert response.status_code != 401, f"valid credentials refused: {response.text}"

    run()


@pytest.mark.parametrize("label", PROTECTED)
def test_without_valid_credentials_every_operation_answers_401(target: Target, label: str) -> None:
    operation = target.operation(label)

    @_fuzz_settings(MAX_EXAMPLES["anonymous"])
    @given(
        case=_cases(operation),
        credentials=st.sampled_from(target.bad_credentials),
        pick=st.none() | st.integers(min_value=0, max_value=5),
    )
    def run(case: Case, credentials: dict[str, str], pick: int | None) -> None:
        _with_real_ids(case, target, pick)
        response = _send(case, target, credentials)
        assert response.status_code == 401, f"{credentials or 'no credentials'}: {response.status_code} {response.text}"
        assert response.headers.get("www-authenticate") == ["Bearer"]  # schemathesis: lower-case names, lists

    run()


@pytest.mark.parametrize("label", PROBES)
def test_the_probes_answer_without_credentials(target: Target, label: str) -> None:
    operation = target.operation(label)

    @_fuzz_settings(MAX_EXAMPLES["probe"])
    @given(case=_cases(operation), credentials=st.sampled_from([{}, *target.bad_credentials[:4], ADMIN]))
    def run(case: Case, credentials: dict[str, str]) -> None:
        response = _send(case, target, credentials)
        assert response.status_code == 200, response.text

    run()


# Hostile multipart bodies, written by hand. Each is sent as alice to the upload and to the replacement of
# her document; the answer must be documented, with a documented body, and never a 5xx.
_BOUNDARY = "fuzzboundary7MA4YWxk"


def _part(name: str, content: bytes, filename: str | None = None, content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{_BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + content + b"\r\n"


def _form(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{_BOUNDARY}--\r\n".encode() if close else b"")


MULTIPART_TYPE = f"multipart/form-data; boundary={_BOUNDARY}"
TEXT = b"The lighthouse keeper logs every passing ship."
HOSTILE: dict[str, tuple[str, bytes, set[int]]] = {
    "two files": (MULTIPART_TYPE, _form(_part("file", TEXT, "a.txt"), _part("file", TEXT, "b.txt")), {400}),
    "the acl as a file": (
        MULTIPART_TYPE,
        _form(_part("file", TEXT, "a.txt"), _part("acl", b'{"users": []}', "acl.json")),
        {400},
    ),
    "a file part without a file name": (MULTIPART_TYPE, _form(_part("file", TEXT)), {400}),
    "a file name that is only a path": (MULTIPART_TYPE, _form(_part("file", TEXT, "../../")), {400}),
    "a file name of control characters": (MULTIPART_TYPE, _form(_part("file", TEXT, "\x01\x02\x7f")), {400}),
    "no file part": (MULTIPART_TYPE, _form(_part("acl", b"{}")), {400}),
    "an empty form": (MULTIPART_TYPE, _form(), {400}),
    "an empty body": (MULTIPART_TYPE, b"", {400}),
    "no boundary": ("multipart/form-data", _form(_part("file", TEXT, "a.txt")), {400}),
    "a different boundary": ("multipart/form-data; boundary=other", _form(_part("file", TEXT, "a.txt")), {400}),
    "an unterminated form": (MULTIPART_TYPE, _form(_part("file", TEXT, "a.txt"), close=False), {200, 202, 400}),
    "a part without headers": (MULTIPART_TYPE, f"--{_BOUNDARY}\r\n\r\nhello\r\n--{_BOUNDARY}--\r\n".encode(), {400}),
    "garbage": (MULTIPART_TYPE, bytes(range(256)) * 8, {400}),
    "JSON instead of a form": ("application/json", json.dumps({"file": "hello"}).encode(), {400}),
    "urlencoded instead of a form": ("application/x-www-form-urlencoded", b"file=hello&acl=%7B%7D", {400}),
    "an acl field past the part limit": (
        MULTIPART_TYPE,
        _form(_part("acl", b'{"users": ["' + b"u" * (70 * 1024) + b'"]}'), _part("file", TEXT, "a.txt")),
        {400},
    ),
    "an acl of 10 000 users": (
        MULTIPART_TYPE,
        _form(
            _part("acl", json.dumps({"users": [f"u{i}" for i in range(10_000)]}).encode()), _part("file", TEXT, "a.txt")
        ),
        {400},
    ),
    "an acl naming a user with a NUL": (
        MULTIPART_TYPE,
        _form(_part("acl", json.dumps({"users": ["a\x00b"]}).encode()), _part("file", TEXT, "a.txt")),
        {400},
    ),
    "an acl that is not an object": (
        MULTIPART_TYPE,
        _form(_part("acl", b"[1, 2]"), _part("file", TEXT, "a.txt")),
        {400},
    ),
    "many fields": (MULTIPART_TYPE, _form(*[_part(f"f{i}", b"x") for i in range(2000)]), {400}),
    # Binary bytes named .txt are taken for text (ingestion then fails them): accepted, not a 5xx.
    "a file of unknown bytes": (MULTIPART_TYPE, _form(_part("file", bytes(range(256)) * 4, "data.txt")), {202, 415}),
    # Bytes unstructured takes for text but whose encoding it cannot tell (found by the fuzzer, as a 500).
    "text in no encoding it can tell": (MULTIPART_TYPE, _form(_part("file", b"\x80+\x81tn", "file")), {415}),
    # Bytes that open like JSON but are not UTF-8: unstructured's JSON sniffing raises (found by the fuzzer, a 500).
    "JSON-looking bytes that are not UTF-8": (MULTIPART_TYPE, _form(_part("file", b"{\xa8}", "file")), {415}),
    "an executable named .txt": (
        MULTIPART_TYPE,
        _form(_part("file", b"MZ\x90\x00" + b"\x00" * 300, "a.txt")),
        {202, 415},
    ),
    "a long unicode file name": (MULTIPART_TYPE, _form(_part("file", TEXT, "\u202e" + "é" * 600 + ".txt")), {200, 202}),
    "a file name that is not UTF-8": (MULTIPART_TYPE, _form(_part("file", TEXT, "\udcff\udcfe.txt")), {200, 202, 400}),
    "a part with a bogus content type": (
        MULTIPART_TYPE,
        _form(_part("file", TEXT, "a.txt", content_type="application/x-\x01nonsense")),
        {200, 202},
    ),
}


@pytest.mark.parametrize("case_name", list(HOSTILE))
def test_hostile_multipart_bodies(target: Target, case_name: str) -> None:
    content_type, body, expected = HOSTILE[case_name]
    client: TestClient = target.served.client
    for label, url in (
        ("POST /v1/documents", "/v1/documents"),
        ("PUT /v1/documents/{document_id}/content", f"/v1/documents/{target.hostile_target}/content"),
    ):
        response = client.request(label.split()[0], url, content=body, headers={**ALICE, "Content-Type": content_type})
        assert response.status_code in expected, f"{label}, {case_name}: {response.status_code} {response.text}"
        operation = target.operation(label)
        case = operation.Case(media_type="multipart/form-data")
        case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/v1/audit?subject=a%00b", 422),
        ("GET", "/v1/audit?action=query&action=a%00b", 422),
        ("DELETE", "/v1/apikeys/a%00b", 404),
        ("GET", "/v1/audit?before_id=9223372036854775808", 422),  # past BIGINT (found by the fuzzer, as a 500)
    ],
)
def test_values_the_database_cannot_hold_are_refused_before_it(
    target: Target, method: str, url: str, status: int
) -> None:
    """PostgreSQL (the registry in service mode) refuses NUL in text and integers past 64 bits with an error that
    would be a 500; the API refuses them first, on SQLite too."""
    response = target.served.client.request(method, url, headers=ADMIN)
    assert response.status_code == status, response.text


@contextmanager
def _registry_down(target: Target) -> Iterator[None]:
    """The registry's SQLite file becomes unreadable (a directory stands in its place) until the block ends."""
    runtime = target.served.runtime
    deadline = time.monotonic() + 60
    while runtime.registry.unfinished() and time.monotonic() < deadline:  # let the worker settle first
        time.sleep(0.2)
    database = Path(runtime.settings.data_dir) / "registry.db"
    aside = Path(tempfile.mkdtemp(dir=database.parent, prefix="registry-aside-"))
    runtime.database.engine.dispose()  # closes the pooled connections (SQLite may remove -wal and -shm then)
    moved = []
    for path in sorted(database.parent.glob("registry.db*")):  # the database first, then -shm and -wal
        path.rename(aside / path.name)
        moved.append(path)
    database.mkdir()
    try:
        yield
    finally:
        runtime.database.engine.dispose()
        database.rmdir()
        for path in moved:
            (aside / path.name).rename(path)
        aside.rmdir()


@pytest.mark.parametrize("label", PROTECTED)
def test_with_the_registry_down_every_operation_answers_a_documented_503(target: Target, label: str) -> None:
    operation = target.operation(label)
    # An admin (a JWT: authenticated without the registry) and a service account (its API key is looked up in it).
    identities = [ADMIN, target.identities[-1]]

    @_fuzz_settings(MAX_EXAMPLES["outage"])
    @given(case=operation.as_strategy(), identity=st.sampled_from(identities), pick=st.sampled_from([0, 1, 2]))
    def run(case: Case, identity: dict[str, str], pick: int) -> None:
        _with_real_ids(case, target, pick)
        response = _send(case, target, identity, checks=CONFORMANCE)
        # 503, or a refusal decided before the registry is asked (invalid input, a non-admin, an id of no shape).
        assert response.status_code in {503, 400, 403, 404, 413, 415, 422}, response.text
        if response.status_code == 503:
            assert response.headers.get("retry-after")

    with _registry_down(target):
        run()
    assert target.served.client.get("/v1/documents", headers=ALICE).status_code == 200  # back once it returns


def test_readyz_answers_503_naming_the_registry_when_it_is_down(target: Target) -> None:
    operation = target.operation("GET /readyz")
    with _registry_down(target):
        response = operation.Case().call_and_validate(session=target.session, checks=CONFORMANCE)
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["registry"].startswith("unavailable")
    assert response.json()["checks"]["index"] == "ok"
