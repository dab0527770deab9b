from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.assets import CL100K_BASE, MINILM, PinnedAsset, load_encoding, tree_sha256, verified_path
from core.errors import AssetError, ConfigError
from core.settings import load_settings
from tests.conftest import SECRET

pytestmark = pytest.mark.unit


def test_a_missing_secret_fails_at_start_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_JWT_SECRET", raising=False)
    with pytest.raises(ConfigError, match="TESSERA_JWT_SECRET"):
        load_settings(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"jwt_secret": "changeme"}, "TESSERA_JWT_SECRET"),
        ({"jwt_secret": SECRET, "chunk_tokens": 100, "chunk_overlap_tokens": 100}, "TESSERA_CHUNK_OVERLAP_TOKENS"),
        ({"jwt_secret": SECRET, "queue": "rabbit"}, "TESSERA_QUEUE"),
        ({"jwt_secret": SECRET, "max_upload_mb": 0}, "TESSERA_MAX_UPLOAD_MB"),
        ({"jwt_secret": SECRET, "jwt_public_key_file": "/nonexistent.pem"}, "TESSERA_JWT_PUBLIC_KEY_FILE"),
    ],
)
def test_wrong_settings_name_the_variable(tmp_path: Path, overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(data_dir=tmp_path, **overrides)


def test_settings_come_from_tessera_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_JWT_SECRET", SECRET)
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TESSERA_CHUNK_TOKENS", "300")
    settings = load_settings()
    assert settings.data_dir == tmp_path and settings.chunk_tokens == 300


def test_the_encoding_is_cl100k_base_from_the_packaged_file() -> None:
    encoding = load_encoding()
    assert encoding.name == "cl100k_base"
    assert encoding.encode("hello world") == [15339, 1917]
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [100257]


def test_pinned_assets_verify() -> None:
    assert verified_path(CL100K_BASE).is_file()
    assert (verified_path(MINILM) / "model.safetensors").is_file()


def test_an_altered_asset_is_refused(tmp_path: Path) -> None:
    model_copy = tmp_path / "model"
    shutil.copytree(verified_path(MINILM), model_copy, ignore=shutil.ignore_patterns("*.safetensors"))
    (model_copy / "config.json").write_text("{}")
    assert tree_sha256(model_copy) != MINILM.sha256
    tampered = PinnedAsset(
        name="tampered model",
        package="tests",
        requirement="a fresh install",
        relative_path=str(model_copy),  # absolute: joined onto the package directory, it replaces it
        sha256=MINILM.sha256,
        kind="tree",
    )
    with pytest.raises(AssetError, match="SHA-256 mismatch"):
        verified_path(tampered)
    missing = PinnedAsset("absent", "tests", "x", "no/such/file", MINILM.sha256, "file")
    with pytest.raises(AssetError, match="missing"):
        verified_path(missing)
