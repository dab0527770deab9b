"""Helpers for tests that drive the real HTTP API in-process (FastAPI's TestClient runs the lifespan)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fastapi.testclient import TestClient

from api.auth import mint_token
from core.settings import Settings, load_settings
from tests.conftest import SECRET

if TYPE_CHECKING:
    from api.runtime import Runtime


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(data_dir=data_dir, jwt_secret=SECRET, **overrides)


def auth(user: str, tenant: str = "acme", groups: Sequence[str] = (), *, admin: bool = False) -> dict[str, str]:
    token = mint_token(SECRET, subject=user, tenant=tenant, groups=groups, admin=admin)
    return {"Authorization": f"Bearer {token}"}


def upload(
    client: TestClient,
    headers: dict[str, str],
    name: str,
    content: bytes,
    *,
    users: Sequence[str] = (),
    groups: Sequence[str] = (),
) -> Any:
    acl = json.dumps({"users": list(users), "groups": list(groups)})
    return client.post("/v1/documents", headers=headers, files={"file": (name, content)}, data={"acl": acl})


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `condition` until it is true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_final(
    client: TestClient | httpx.Client, headers: dict[str, str], document_id: str, timeout_s: float = 120
) -> Any:
    """The document's record once it is `ready` or `failed` (in-process, or from a server over HTTP)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/v1/documents/{document_id}", headers=headers)
        assert response.status_code == 200, response.text
        record = response.json()
        if record["status"] in ("ready", "failed"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"document {document_id} did not finish within {timeout_s}s")


def query(client: TestClient, headers: dict[str, str], text: str, top_k: int = 50, **extra: Any) -> Any:
    response = client.post("/v1/query", headers=headers, json={"query": text, "top_k": top_k, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def register_document(
    runtime: Runtime, content: bytes, file_name: str, *, document_id: str | None = None, file_type: str = "TXT"
) -> str:
    """Register alice's document directly, as the API would, without sending its task (what a process that
    died after accepting an upload leaves behind)."""
    document_id = document_id or uuid.uuid4().hex
    blob = runtime.blobs.save(document_id, 1, io.BytesIO(content), max_bytes=len(content) + 1)
    runtime.registry.add(
        document_id=document_id,
        tenant="acme",
        owner="alice",
        file_name=file_name,
        file_type=file_type,
        sha256=blob.sha256,
        size_bytes=blob.size_bytes,
        acl_tokens=["user:alice"],
    )
    return document_id


def start_worker(
    data_dir: Path, redis_url: str, log: Path, *, pool: str = "solo", concurrency: int = 1, **settings: object
) -> subprocess.Popen[bytes]:
    """A `tessera worker` process holding the embedded index under `data_dir`, on Redis, logging JSON to `log`;
    `settings` become TESSERA_* variables. In a session of its own, so a test can kill its whole group."""
    env = {
        **os.environ,
        "TESSERA_JWT_SECRET": SECRET,
        "TESSERA_DATA_DIR": str(data_dir),
        "TESSERA_QUEUE": "redis",
        "TESSERA_REDIS_URL": redis_url,
        "TESSERA_LOG_FORMAT": "json",
        **{f"TESSERA_{name.upper()}": str(value) for name, value in settings.items()},
    }
    command = [sys.executable, "-m", "api.cli", "worker", "--embedded-index", "--log-level", "INFO"]
    command += ["--pool", pool, "--concurrency", str(concurrency)]
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
