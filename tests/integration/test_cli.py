"""The CLI against a real server on loopback, and `tessera demo` (what `make demo` runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.auth import TokenVerifier
from api.background import serving
from api.cli import main
from api.demo import run_demo
from core.access import Principal
from core.settings import get_settings
from tests.conftest import SECRET
from tests.helpers import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def server_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serving(settings_for(tmp_path / "server")) as url:
        monkeypatch.setenv("TESSERA_JWT_SECRET", SECRET)
        monkeypatch.setenv("TESSERA_SERVER_URL", url)
        get_settings.cache_clear()
        yield url
    get_settings.cache_clear()


def test_ingest_then_query_as_allowed_and_other_users(
    server_url: str, shared_docs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(shared_docs / "fake-memo.pdf"), str(shared_docs / "empty.txt")]
    code = main(["ingest", *files, "--user", "alice", "--groups", "eng", "--share-groups", "eng"])
    out = capsys.readouterr().out
    assert code == 1  # one of the two failed, and the exit code says so
    assert "1 ready, 1 failed, 0 refused" in out and "no extractable text" in out

    assert main(["query", "bottles of water and blankets", "--user", "bob", "--groups", "eng", "--show-prompt"]) == 0
    out = capsys.readouterr().out
    assert "fake-memo.pdf" in out and "--- prompt (" in out

    assert main(["query", "bottles of water and blankets", "--user", "carol", "--groups", "sales"]) == 0
    assert "no results" in capsys.readouterr().out


def test_token_mints_what_the_server_accepts(
    server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--user", "alice", "--groups", "eng,ops", "--tenant", "acme"]) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(settings_for(tmp_path))
    assert verifier.verify(token) == Principal.of("acme", "alice", ["eng", "ops"])


def test_a_wrong_setting_stops_the_cli_with_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TESSERA_JWT_SECRET", "short")
    get_settings.cache_clear()
    try:
        assert main(["token", "--user", "alice"]) == 2
    finally:
        get_settings.cache_clear()
    assert "TESSERA_JWT_SECRET" in capsys.readouterr().err


def test_demo_shows_two_users_different_answers(shared_docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(shared_docs) == 0
    out = capsys.readouterr().out
    alice = out.split("\nalice (finance)")[1].split("\nbob (legal)")[0]
    bob = out.split("\nbob (legal)")[1].split("\ncarol")[0]
    carol = out.split("\ncarol (no groups)")[1]
    assert "example-10k-1p.html" in alice and "handbook-1p.docx" not in alice
    assert "handbook-1p.docx" in bob and "example-10k-1p.html" not in bob
    assert "no results" in carol and "LEAK" not in out


def test_apikey_and_audit_commands_over_http(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apikey", "create", "--tenant", "acme", "--name", "crawler", "--groups", "eng"]) == 0
    out = capsys.readouterr().out
    key = out.split("key (shown once, store it now): ")[1].split()[0]
    key_id = out.split("created API key ")[1].split()[0]
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.post("/v1/query", json={"query": "anything"}).status_code == 200
        assert main(["apikey", "list", "--tenant", "acme"]) == 0
        assert f"{key_id}  crawler" in capsys.readouterr().out
        assert main(["apikey", "revoke", "--tenant", "acme", key_id]) == 0
        assert client.post("/v1/query", json={"query": "anything"}).status_code == 401
    assert main(["audit", "--tenant", "acme", "--subject", "svc:crawler"]) == 0
    assert "svc:crawler" in capsys.readouterr().out
