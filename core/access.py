"""The caller's identity and the one ACL encoding used at upsert, at query and in the registry.

Rules (see also retrieval/acl_filter.py, which turns a Principal into the index filter):
- A document is readable by a principal only if the tenants are equal AND the document's ACL tokens
  intersect the principal's tokens. Nothing else grants reading: not a role, not ownership alone
  (the owner is always written into the ACL at upload).
- ACL tokens are prefixed strings, `user:<subject>` and `group:<name>`, stored as one keyword list.
- Identifiers are validated when a Principal or DocumentAcl is built; anything malformed raises
  AccessError. There is no "empty principal" that matches everything or nothing by accident.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.errors import AccessError

USER_PREFIX = "user:"
GROUP_PREFIX = "group:"
MAX_GROUPS = 1024
MAX_IDENTIFIER_CHARS = 256


def check_identifier(value: object, what: str) -> str:
    """Return `value` if it is a usable identifier, else raise AccessError naming `what`. Printable (Python's
    str.isprintable: no C0 or C1 control, no format character such as a zero-width space, no separator but
    the ASCII space), not blank, bounded: identifiers end up in payload indexes, audit records and logs."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_IDENTIFIER_CHARS
        or not value.isprintable()
        or not value.strip()
    ):
        raise AccessError(f"{what} must be a non-empty string of at most 256 printable characters")
    return value


def user_token(subject: str) -> str:
    return USER_PREFIX + check_identifier(subject, "user")


def group_token(group: str) -> str:
    return GROUP_PREFIX + check_identifier(group, "group")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Built only from verified credentials (api/auth.py)."""

    tenant: str
    subject: str
    groups: frozenset[str]
    # Tenant admin: manages any document's ACL and deletes any document in its own tenant. Reading is
    # unchanged: an admin's queries follow the ACL like everyone else's.
    is_admin: bool = False

    def __post_init__(self) -> None:
        check_identifier(self.tenant, "tenant")
        check_identifier(self.subject, "subject")
        if not isinstance(self.groups, frozenset):
            raise AccessError("groups must be a set of strings")
        if not isinstance(self.is_admin, bool):
            raise AccessError("is_admin must be a boolean")
        if len(self.groups) > MAX_GROUPS:
            raise AccessError(f"a principal may hold at most {MAX_GROUPS} groups")
        for group in self.groups:
            check_identifier(group, "group")

    @classmethod
    def of(cls, tenant: str, subject: str, groups: Iterable[str] = (), *, is_admin: bool = False) -> Principal:
        return cls(tenant=tenant, subject=subject, groups=frozenset(groups), is_admin=is_admin)

    def acl_tokens(self) -> list[str]:
        """Every token that admits this principal: its user token and one per group."""
        return [user_token(self.subject), *sorted(group_token(g) for g in self.groups)]

    def may_read(self, tenant: str, document_tokens: Sequence[str]) -> bool:
        """The registry-side twin of the index filter: same tenant and a shared ACL token."""
        return tenant == self.tenant and not set(self.acl_tokens()).isdisjoint(document_tokens)

    def may_manage(self, tenant: str, owner: str) -> bool:
        """Change a document's ACL, replace or delete it: its owner, or an admin of its tenant."""
        return tenant == self.tenant and (self.subject == owner or self.is_admin)


@dataclass(frozen=True)
class DocumentAcl:
    """Who may read a document besides its owner, as given at upload."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for user in self.users:
            check_identifier(user, "acl user")
        for group in self.groups:
            check_identifier(group, "acl group")
        if len(self.users) + len(self.groups) > MAX_GROUPS:
            raise AccessError(f"an ACL may list at most {MAX_GROUPS} users and groups")

    def tokens(self, owner: str) -> list[str]:
        """The stored encoding: the owner first (always allowed), then users and groups, deduplicated."""
        ordered = [user_token(owner), *(user_token(u) for u in self.users), *(group_token(g) for g in self.groups)]
        return list(dict.fromkeys(ordered))

    @staticmethod
    def split(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
        """Users and groups of a stored token list, for display."""
        users = [t[len(USER_PREFIX) :] for t in tokens if t.startswith(USER_PREFIX)]
        groups = [t[len(GROUP_PREFIX) :] for t in tokens if t.startswith(GROUP_PREFIX)]
        return users, groups
