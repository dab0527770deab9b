"""Where a request's credential is checked: a JWT on the event loop (a signature check), an API key on a thread
of the pool (a registry read must never block the loop), and either way the same principal or the same refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.security import HTTPAuthorizationCredentials

from api.auth import Authenticator, mint_token
from api.deps import get_principal
from core.access import Principal
from core.apikeys import ApiKeys
from core.db import Database
from core.errors import AuthError
from core.schema import migrate
from core.settings import Settings, load_settings
from tests.conftest import SECRET


class _Recording(Authenticator):
    """The real authenticator, noting for each call whether it ran on the thread of a running event loop."""

    def __init__(self, settings: Settings, api_keys: ApiKeys) -> None:
        super().__init__(settings, api_keys)
        self.on_loop: list[bool] = []

    def authenticate(self, credential: str) -> Principal:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return super().authenticate(credential)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(db)
    yield db
    db.close()


def _principal(authenticator: Authenticator, credential: str) -> Principal:
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(authenticator=authenticator)))
    bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=credential)
    return asyncio.run(get_principal(request, bearer))  # type: ignore[arg-type]


def test_a_token_is_checked_on_the_loop_and_a_key_on_a_pool_thread(tmp_path: Path, database: Database) -> None:
    keys = ApiKeys(database)
    _, key = keys.create(tenant="acme", name="indexer", groups=["ops"], created_by="admin")
    old, revoked = keys.create(tenant="acme", name="old", groups=["ops"], created_by="admin")
    keys.revoke("acme", old.id)
    authenticator = _Recording(load_settings(data_dir=tmp_path, jwt_secret=SECRET), keys)

    token = mint_token(SECRET, subject="alice", tenant="acme", groups=["eng"])
    assert _principal(authenticator, token) == Principal.of("acme", "alice", ["eng"])
    assert _principal(authenticator, key) == keys.authenticate(key)
    assert authenticator.on_loop == [True, False]

    with pytest.raises(AuthError, match="revoked"):
        _principal(authenticator, revoked)
    with pytest.raises(AuthError, match="malformed"):
        _principal(authenticator, "not-a-token")
    assert authenticator.on_loop == [True, False, False, True]
