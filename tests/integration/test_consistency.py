"""`tessera check`: the registry and the index agree, and when they do not, the index is made to agree.

First, each kind of disagreement a crash or an index outage leaves behind is made with the index port
directly, on the real embedded service (Qdrant Edge), and queried as several users before and after the
repair. Then the embedded server itself is killed with SIGKILL in the middle of ingestion and started
again: every document reaches a final status, and the check over HTTP finds nothing to repair.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.records import Chunk, ChunkPoint
from evals.bench.server import free_port
from retrieval.factory import create_index
from tests.conftest import SECRET
from tests.helpers import auth, query, settings_for, upload, wait_final
from tests.integration.conftest import Served, serve

pytestmark = pytest.mark.integration

ADMIN = auth("root", groups=[], admin=True)
ALICE = auth("alice", groups=["eng"])
BOB = auth("bob", groups=["sales"])
CAROL = auth("carol")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path / "data")


def _ready(service: Served, headers: dict[str, str], name: str, text: str, **acl: list[str]) -> str:
    response = upload(service.client, headers, name, text.encode(), **acl)
    assert response.status_code == 202, response.text
    document_id: str = response.json()["id"]
    assert wait_final(service.client, headers, document_id)["status"] == "ready"
    return document_id


def _seen(service: Served, headers: dict[str, str]) -> set[str]:
    return {r["document_id"] for r in query(service.client, headers, "harbour plan budget", top_k=50)["results"]}


def _check(service: Served, *, repair: bool) -> dict[str, object]:
    response = service.client.post("/v1/admin/check", headers=ADMIN, json={"repair": repair})
    assert response.status_code == 200, response.text
    report: dict[str, object] = response.json()
    return report


def _points(document_id: str, version: int, count: int, acl: tuple[str, ...], dimension: int) -> list[ChunkPoint]:
    vector = tuple([1.0] + [0.0] * (dimension - 1))
    chunks = [Chunk(i, f"harbour plan v{version}", None, None, 3) for i in range(count)]
    return [ChunkPoint("acme", document_id, version, "x.txt", acl, chunk, vector) for chunk in chunks]


def test_each_disagreement_is_found_and_repaired_and_users_see_the_registry_again(service: Served) -> None:
    runtime, index = service.runtime, service.runtime.index
    dimension = runtime.embedder.dimension
    shared = _ready(service, ALICE, "shared.txt", "The harbour plan, shared with sales.", groups=["sales"])
    deleted = _ready(service, ALICE, "gone.txt", "The old harbour budget, deleted.", groups=["eng"])
    lost = _ready(service, ALICE, "lost.txt", "The harbour plan for the north quay.", groups=["eng"])
    replaced = _ready(service, BOB, "replaced.txt", "Harbour budget, first draft.", groups=["sales"])
    response = service.client.put(
        f"/v1/documents/{replaced}/content", headers=BOB, files={"file": ("replaced.txt", b"Harbour budget, final.")}
    )
    assert response.status_code == 202 and wait_final(service.client, BOB, replaced)["version"] == 2
    assert _check(service, repair=False)["consistent"] is True

    # What crashes and outages leave behind, made directly:
    orphan = "0" * 31 + "f"
    index.upsert(_points(orphan, 1, 2, ("group:sales", "user:dave"), dimension))  # no registry record
    index.publish("acme", orphan, 1, 2)
    runtime.registry.set_acl(shared, ["user:alice"])  # an ACL narrowed whose index update failed
    runtime.registry.mark_deleted(deleted)  # a delete whose index removal never ran
    index.delete_version("acme", lost, 1)  # an index that lost a ready document's chunks
    index.upsert(_points(replaced, 1, 1, ("user:bob", "group:sales"), dimension))  # v1 back, live beside v2
    index.publish("acme", replaced, 1, 1)
    index.upsert(_points(replaced, 1, 3, ("user:bob", "group:sales"), dimension)[2:])  # and an unpublished one

    assert {shared, orphan} <= _seen(service, BOB), "the disagreements are visible: bob reads what he may not"
    assert deleted in _seen(service, ALICE)

    found = _check(service, repair=False)
    problems = {(f["document_id"], f["problem"]) for f in found["findings"]}  # type: ignore[union-attr]
    print("\n" + "\n".join(f"{d[:8]}: {p}" for d, p in sorted(problems)))
    assert found["consistent"] is False and found["repaired"] is False
    assert {d for d, _ in problems} == {shared, deleted, lost, replaced, orphan}
    assert any("ACL that differs" in p for d, p in problems if d == shared)
    assert any("not in the registry" in p for d, p in problems if d == orphan)
    assert any("deleted" in p for d, p in problems if d == deleted)
    assert any("missing" in p for d, p in problems if d == lost)
    assert any("version 1, which is not the live one (2)" in p for d, p in problems if d == replaced)
    assert _check(service, repair=False)["findings"] == found["findings"], "checking alone changes nothing"

    repaired = _check(service, repair=True)
    assert repaired["repaired"] is True
    assert wait_final(service.client, ALICE, lost)["status"] == "ready"  # ingested again
    deadline = time.monotonic() + 60
    while not (after := _check(service, repair=False))["consistent"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after["consistent"] is True, after
    assert _seen(service, BOB) == {replaced}
    assert _seen(service, ALICE) == {shared, lost}
    assert _seen(service, CAROL) == set()
    assert index.count_document("acme", lost) == runtime.registry.get(lost).chunk_count == 1
    assert index.count_document("acme", replaced) == 1


def test_only_a_tenant_admin_may_check_and_only_its_tenant(service: Served) -> None:
    assert service.client.post("/v1/admin/check", json={}).status_code == 401
    assert service.client.post("/v1/admin/check", headers=ALICE, json={}).status_code == 403
    other = auth("root", tenant="globex", admin=True)
    _ready(service, ALICE, "acme.txt", "An acme harbour note.", groups=["eng"])
    report = service.client.post("/v1/admin/check", headers=other, json={}).json()
    assert report["documents"] == 0 and report["chunks"] == 0


def _serve_process(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TESSERA_JWT_SECRET": SECRET, "TESSERA_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_up(client: httpx.Client, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def test_sigkill_mid_ingestion_then_restart_leaves_registry_and_index_agreeing(
    tmp_path: Path, shared_docs: Path
) -> None:
    data_dir, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    texts = [shared_docs / "book-war-and-peace-1p.txt"] * 9 + [shared_docs / "norwich-city.txt"]
    server = _serve_process(data_dir, port, log)
    ids: list[str] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        try:
            _wait_up(client)
            for i, path in enumerate(texts):
                body = path.read_bytes() + f"\nCopy {i}.".encode()
                files, acl = {"file": (f"doc{i}.txt", body)}, {"acl": '{"groups": ["eng"]}'}
                response = client.post("/v1/documents", headers=ALICE, files=files, data=acl)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # kill once some are done and some are not
                statuses = [client.get(f"/v1/documents/{i}", headers=ALICE).json()["status"] for i in ids]
                if "ready" in statuses and any(s != "ready" for s in statuses):
                    break
                time.sleep(0.05)
            print(f"\nkilled with statuses {sorted(statuses)}")
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)

    restarted = _serve_process(data_dir, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _wait_up(client)
            finals = [wait_final(client, ALICE, document_id, timeout_s=180) for document_id in ids]
            assert [f["status"] for f in finals] == ["ready"] * len(ids), finals
            report = client.post("/v1/admin/check", headers=ADMIN, json={"repair": False}).json()
            print(f"after restart: {report['documents']} documents, {report['chunks']} chunks, {report['findings']}")
            assert report["consistent"] is True and report["documents"] == len(ids)
            assert report["chunks"] == sum(f["chunk_count"] for f in finals)
            cli = subprocess.run(
                [sys.executable, "-m", "api.cli", "check", "--tenant", "acme", "--url", f"http://127.0.0.1:{port}"],
                env={**os.environ, "TESSERA_JWT_SECRET": SECRET},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert cli.returncode == 0 and cli.stdout.startswith("consistent:"), cli.stdout + cli.stderr
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(60)
    assert "unclean stop: check found" in log.read_text()
    # Stopped cleanly this time: open the index here and count every document's chunks against the registry.
    settings = settings_for(data_dir)
    index = create_index(settings)
    try:
        for final in finals:
            assert index.count_document("acme", final["id"]) == final["chunk_count"] > 0
    finally:
        index.close()
    assert not (data_dir / "running").exists()
