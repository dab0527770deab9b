"""A small HTTP client for a running Tessera server: what the CLI and the demo use."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from api.auth import mint_token

FINAL_STATUSES = ("ready", "failed")


class ClientError(Exception):
    """The server refused a request; the message carries its status and detail."""


class TesseraClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = 120.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )

    @classmethod
    def for_user(cls, base_url: str, secret: str, *, user: str, tenant: str, groups: Sequence[str]) -> TesseraClient:
        return cls(base_url, mint_token(secret, subject=user, tenant=tenant, groups=groups))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _checked(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ClientError(f"HTTP {response.status_code}: {detail}")
        return response.json()

    def upload(self, path: Path, *, users: Sequence[str] = (), groups: Sequence[str] = ()) -> dict[str, Any]:
        acl = json.dumps({"users": list(users), "groups": list(groups)})
        with path.open("rb") as handle:
            response = self._http.post("/v1/documents", files={"file": (path.name, handle)}, data={"acl": acl})
        result: dict[str, Any] = self._checked(response)
        return result

    def document(self, document_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._checked(self._http.get(f"/v1/documents/{document_id}"))
        return result

    def wait(
        self,
        document_ids: Sequence[str],
        *,
        timeout_s: float = 600.0,
        on_final: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll until every document is ready or failed; returns their final records by id."""
        pending = list(document_ids)
        final: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise ClientError(f"{len(pending)} documents still not ingested after {timeout_s:.0f}s")
            for document_id in list(pending):
                record = self.document(document_id)
                if record["status"] in FINAL_STATUSES:
                    final[document_id] = record
                    pending.remove(document_id)
                    if on_final is not None:
                        on_final(record)
            if pending:
                time.sleep(0.25)
        return final

    def query(
        self,
        question: str,
        *,
        top_k: int | None = None,
        max_context_tokens: int | None = None,
        mode: str | None = None,
    ) -> Any:
        body: dict[str, Any] = {"query": question}
        if mode is not None:
            body["mode"] = mode
        if top_k is not None:
            body["top_k"] = top_k
        if max_context_tokens is not None:
            body["max_context_tokens"] = max_context_tokens
        return self._checked(self._http.post("/v1/query", json=body))

    def list_documents(self, *, status: str | None = None, limit: int = 50, cursor: str | None = None) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._checked(self._http.get("/v1/documents", params=params))

    def delete(self, document_id: str) -> Any:
        return self._checked(self._http.delete(f"/v1/documents/{document_id}"))

    def set_acl(self, document_id: str, *, users: Sequence[str] = (), groups: Sequence[str] = ()) -> Any:
        body = {"users": list(users), "groups": list(groups)}
        return self._checked(self._http.put(f"/v1/documents/{document_id}/acl", json=body))

    def create_api_key(self, name: str, groups: Sequence[str]) -> Any:
        return self._checked(self._http.post("/v1/apikeys", json={"name": name, "groups": list(groups)}))

    def list_api_keys(self) -> Any:
        return self._checked(self._http.get("/v1/apikeys"))

    def revoke_api_key(self, key_id: str) -> Any:
        return self._checked(self._http.delete(f"/v1/apikeys/{key_id}"))

    def check(self, *, repair: bool) -> Any:
        return self._checked(self._http.post("/v1/admin/check", json={"repair": repair}))

    def audit(
        self, *, subject: str | None = None, since: str | None = None, until: str | None = None, limit: int = 100
    ) -> list[Any]:
        params: dict[str, Any] = {"limit": limit}
        for name, value in (("subject", subject), ("since", since), ("until", until)):
            if value:
                params[name] = value
        records: list[Any] = self._checked(self._http.get("/v1/audit", params=params))["records"]
        return records
