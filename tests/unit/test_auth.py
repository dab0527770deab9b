from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import TokenVerifier, mint_token
from core.access import Principal
from core.errors import AccessError, AuthError
from core.settings import load_settings
from tests.conftest import SECRET

pytestmark = pytest.mark.unit


@pytest.fixture
def verifier(tmp_path: Path) -> TokenVerifier:
    return TokenVerifier(load_settings(data_dir=tmp_path, jwt_secret=SECRET))


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "alice", "tenant": "acme", "groups": ["eng"], "exp": int(time.time()) + 60}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_valid_token_gives_the_principal(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, subject="alice", tenant="acme", groups=["eng", "ops"])
    assert verifier.verify(token) == Principal.of("acme", "alice", ["eng", "ops"])


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(_claims(), "another-secret-" + "y" * 40, algorithm="HS256"),  # bad signature
        jwt.encode(_claims(exp=int(time.time()) - 3600), SECRET, algorithm="HS256"),  # expired
        jwt.encode(_claims(exp=None), SECRET, algorithm="HS256"),  # no expiry
        jwt.encode(_claims(tenant=None), SECRET, algorithm="HS256"),  # missing tenant
        jwt.encode(_claims(groups=None), SECRET, algorithm="HS256"),  # missing groups
        jwt.encode(_claims(groups="eng"), SECRET, algorithm="HS256"),  # groups not a list
        jwt.encode(_claims(groups=["eng", 3]), SECRET, algorithm="HS256"),  # malformed group
        jwt.encode(_claims(sub=""), SECRET, algorithm="HS256"),
        jwt.encode(_claims(), None, algorithm="none"),  # unsigned
        "not-a-jwt",
        "",
    ],
)
def test_bad_tokens_are_refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(AuthError):
        verifier.verify(token)


def test_rs256_with_a_configured_public_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public_pem)
    verifier = TokenVerifier(load_settings(data_dir=tmp_path, jwt_public_key_file=key_file))
    token = jwt.encode(_claims(), key, algorithm="RS256")
    assert verifier.verify(token).subject == "alice"
    # With no secret configured, an HS256 token is refused, including one signed with the public key
    # itself (the classic algorithm-confusion attack).
    with pytest.raises(AuthError):
        verifier.verify(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    with pytest.raises(AuthError):
        verifier.verify(_hs256_signed_with(public_pem))


def _hs256_signed_with(key: bytes) -> str:
    """A token signed by HMAC with `key` (PyJWT itself refuses to sign HS256 with a PEM key)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(_claims()).encode())
    )
    signature = b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def test_minting_refuses_malformed_identities() -> None:
    with pytest.raises(AccessError):
        mint_token(SECRET, subject="", tenant="acme", groups=[])
