"""ACL-aware evaluation: a seeded assignment of passages to groups, and users holding different groups.

Each passage gets one group, drawn uniformly with the seed. The user `all` holds every group (what the
relevance figures without ACLs are measured as); user `u<k>` holds a seeded subset, so that users see
from a small share of the corpus to most of it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

ALL_USER = "all"


@dataclass(frozen=True)
class AclPlan:
    seed: int
    groups: tuple[str, ...]
    passage_groups: dict[str, str]  # passage id -> its group
    users: dict[str, frozenset[str]]  # user -> groups held

    def allowed(self, user: str) -> set[str]:
        held = self.users[user]
        return {pid for pid, group in self.passage_groups.items() if group in held}

    def as_json(self) -> dict[str, object]:
        return {
            "enabled": len(self.groups) > 1,
            "seed": self.seed,
            "groups": list(self.groups),
            "users": {user: sorted(groups) for user, groups in self.users.items()},
        }


def plan_acls(passage_ids: Iterable[str], *, groups: int, users: int, seed: int) -> AclPlan:
    """`groups` groups (1: no ACLs, everyone sees everything) and `users` restricted users besides `all`."""
    rng = random.Random(seed)
    names = tuple(f"g{i}" for i in range(max(1, groups)))
    assignment = {pid: rng.choice(names) for pid in sorted(passage_ids)}
    plan_users: dict[str, frozenset[str]] = {ALL_USER: frozenset(names)}
    if len(names) > 1:
        for k in range(users):
            size = 1 + (k * (len(names) - 1)) // max(1, users - 1) if users > 1 else 1
            plan_users[f"u{k}"] = frozenset(rng.sample(names, min(size, len(names))))
    return AclPlan(seed=seed, groups=names, passage_groups=assignment, users=plan_users)
