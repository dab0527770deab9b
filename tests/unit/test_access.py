from __future__ import annotations

import pytest
from qdrant_client import models

from core.access import DocumentAcl, Principal
from core.errors import AccessError
from retrieval.acl_filter import acl_filter

pytestmark = pytest.mark.unit


def test_principal_tokens_are_prefixed_and_sorted() -> None:
    principal = Principal.of("acme", "alice", ["sales", "eng"])
    assert principal.acl_tokens() == ["user:alice", "group:eng", "group:sales"]


def test_owner_is_always_in_the_acl_and_tokens_are_deduplicated() -> None:
    acl = DocumentAcl(users=("bob", "alice"), groups=("eng", "eng"))
    assert acl.tokens(owner="alice") == ["user:alice", "user:bob", "group:eng"]
    assert DocumentAcl().tokens(owner="carol") == ["user:carol"]
    assert DocumentAcl.split(acl.tokens(owner="alice")) == (["alice", "bob"], ["eng"])


@pytest.mark.parametrize(
    ("principal", "tenant", "tokens", "expected"),
    [
        (Principal.of("acme", "alice", ["eng"]), "acme", ["user:bob", "group:eng"], True),
        (Principal.of("acme", "alice"), "acme", ["user:alice"], True),
        (Principal.of("acme", "alice", ["eng"]), "globex", ["group:eng"], False),  # tenant always applies
        (Principal.of("acme", "carol"), "acme", ["user:alice", "group:eng"], False),
        (Principal.of("acme", "eng"), "acme", ["group:eng"], False),  # a user named like a group is not in it
        (Principal.of("acme", "alice", ["eng"]), "acme", [], False),
    ],
)
def test_may_read(principal: Principal, tenant: str, tokens: list[str], expected: bool) -> None:
    assert principal.may_read(tenant, tokens) is expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: Principal.of("", "alice"),
        lambda: Principal.of("acme", ""),
        lambda: Principal.of("acme", "   "),
        lambda: Principal.of("acme", "alice", [""]),
        lambda: Principal.of("acme", "al\x00ice"),
        lambda: Principal.of("acme", "a" * 257),
        lambda: Principal(tenant="acme", subject="alice", groups=["eng"]),  # type: ignore[arg-type]
        lambda: Principal.of("acme", "alice", [str(i) for i in range(2000)]),
        lambda: DocumentAcl(users=("",)),
        lambda: DocumentAcl(groups=("x\n",)),
    ],
)
def test_malformed_identities_raise(build: object) -> None:
    with pytest.raises(AccessError):
        build()  # type: ignore[operator]


@pytest.mark.parametrize("is_admin", [False, True])
def test_filter_always_carries_tenant_acl_and_live_clauses(is_admin: bool) -> None:
    built = acl_filter(Principal.of("acme", "alice", ["eng"], is_admin=is_admin))
    assert built.should is None and built.must_not is None
    assert isinstance(built.must, list)
    conditions = {c.key: c.match for c in built.must if isinstance(c, models.FieldCondition)}
    assert conditions["tenant"] == models.MatchValue(value="acme")
    assert conditions["acl"] == models.MatchAny(any=["user:alice", "group:eng"])
    assert conditions["live"] == models.MatchValue(value=1)
    assert len(built.must) == 3


def test_filter_refuses_anything_but_a_principal() -> None:
    with pytest.raises(AccessError):
        acl_filter(None)  # type: ignore[arg-type]
    with pytest.raises(AccessError):
        acl_filter({"tenant": "acme"})  # type: ignore[arg-type]
