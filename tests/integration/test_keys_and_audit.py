"""Tenant admins, service-account API keys and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import auth, query, upload, wait_final
from tests.integration.conftest import Served

pytestmark = pytest.mark.integration

ALICE = auth("alice", groups=["eng"])
ADMIN = auth("root", admin=True)
GLOBEX_ADMIN = auth("root", tenant="globex", admin=True)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_api_keys_are_issued_used_listed_and_revoked(embedded: Served) -> None:
    assert embedded.client.post("/v1/apikeys", headers=ALICE, json={"name": "indexer"}).status_code == 403
    created = embedded.client.post("/v1/apikeys", headers=ADMIN, json={"name": "indexer", "groups": ["eng"]})
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["id"]
    assert key.startswith("tsk_") and created.json()["subject"] == "svc:indexer"

    # The key acts as svc:indexer of acme, in group eng: it uploads and queries like a user.
    document = upload(
        embedded.client, _bearer(key), "robot.txt", b"The robot vacuum maps the warehouse floor.", groups=["eng"]
    )
    assert document.status_code == 202
    assert wait_final(embedded.client, _bearer(key), document.json()["id"])["owner"] == "svc:indexer"
    hits = query(embedded.client, ALICE, "robot vacuum warehouse", top_k=1)["results"]
    assert hits[0]["document_id"] == document.json()["id"]

    listed = embedded.client.get("/v1/apikeys", headers=ADMIN).json()
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
    assert embedded.client.get("/v1/apikeys", headers=GLOBEX_ADMIN).json() == []
    assert embedded.client.delete(f"/v1/apikeys/{key_id}", headers=GLOBEX_ADMIN).status_code == 404

    assert embedded.client.delete(f"/v1/apikeys/{key_id}", headers=ADMIN).json()["revoked_at"] is not None
    response = embedded.client.post("/v1/query", headers=_bearer(key), json={"query": "robot"})
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    tampered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert embedded.client.post("/v1/query", headers=_bearer(tampered), json={"query": "x"}).status_code == 401
    assert embedded.client.post("/v1/query", headers=_bearer("tsk_nonsense"), json={"query": "x"}).status_code == 401


def test_every_query_and_change_is_audited_and_only_admins_read_it(embedded: Served) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    document_id = upload(
        embedded.client, ALICE, "audit.txt", b"The lighthouse keeper logs every ship.", groups=["eng"]
    ).json()["id"]
    wait_final(embedded.client, ALICE, document_id)
    answer = query(embedded.client, ALICE, "lighthouse keeper", top_k=3)
    embedded.client.put(f"/v1/documents/{document_id}/acl", headers=ALICE, json={"groups": ["ops"]})
    assert (
        embedded.client.delete(f"/v1/documents/{document_id}", headers=auth("bob", groups=["ops"])).status_code == 403
    )
    embedded.client.delete(f"/v1/documents/{document_id}", headers=ALICE)

    assert embedded.client.get("/v1/audit", headers=ALICE).status_code == 403
    response = embedded.client.get("/v1/audit", headers=ADMIN, params={"since": start.isoformat()})
    assert response.status_code == 200
    records = response.json()["records"]
    mine = [(r["subject"], r["action"], r["outcome"]) for r in records if r["target"] == document_id]
    assert ("alice", "document.upload", "accepted") in mine
    assert ("tessera:ingest", "document.ingested", "ready") in mine
    assert ("alice", "document.acl", "changed") in mine
    assert ("bob", "document.delete", "denied") in mine
    assert ("alice", "document.delete", "deleted") in mine
    queries = [r for r in records if r["action"] == "query" and r["subject"] == "alice"]
    returned = [f"{h['document_id']}:{h['version']}:{h['chunk_index']}" for h in answer["results"]]
    assert any(r["detail"]["chunks"] == returned for r in queries)
    assert all("lighthouse" not in str(r["detail"]) for r in queries)  # ids, never text

    only_alice = embedded.client.get(
        "/v1/audit", headers=ADMIN, params={"subject": "alice", "since": start.isoformat()}
    )
    assert {r["subject"] for r in only_alice.json()["records"]} == {"alice"}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert embedded.client.get("/v1/audit", headers=ADMIN, params={"since": future}).json()["records"] == []
    assert (
        embedded.client.get("/v1/audit", headers=GLOBEX_ADMIN, params={"since": start.isoformat()}).json()["records"]
        == []
    )
