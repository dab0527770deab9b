"""`tessera demo` (`make demo`): one process serves Tessera on the embedded default; two users upload real
documents with different ACLs; each asks the same question and sees only what they may.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from api.background import serving
from api.client import TesseraClient
from core.settings import load_settings

TENANT = "acme"
QUESTION = "What obligations and duties does the document describe, and to whom are reports owed?"


@dataclass(frozen=True)
class DemoUser:
    name: str
    groups: tuple[str, ...]


ALICE = DemoUser("alice", ("finance",))
BOB = DemoUser("bob", ("legal",))
CAROL = DemoUser("carol", ())
# (uploader, file, groups it is shared with)
UPLOADS = (
    (ALICE, "example-10k-1p.html", ("finance",)),
    (BOB, "handbook-1p.docx", ("legal",)),
    (ALICE, "family-day.eml", ("finance", "legal")),
)


def run_demo(docs: Path) -> int:
    missing = [name for _, name, _ in UPLOADS if not (docs / name).is_file()]
    if missing:
        print(f"demo: {', '.join(missing)} not found under {docs} (pass --docs)")
        return 2
    data_dir = Path(tempfile.mkdtemp(prefix="tessera-demo-"))
    secret = secrets.token_urlsafe(48)
    settings = load_settings(data_dir=data_dir, jwt_secret=secret)
    started = time.perf_counter()
    with serving(settings) as base_url:
        up_s = time.perf_counter() - started
        print(f"Tessera is serving {base_url} (embedded: data in {data_dir}), up in {up_s:.1f}s\n")
        return _scenario(base_url, secret, docs)


def _scenario(base_url: str, secret: str, docs: Path) -> int:
    def client(user: DemoUser) -> TesseraClient:
        return TesseraClient.for_user(base_url, secret, user=user.name, tenant=TENANT, groups=user.groups)

    visible: dict[str, set[str]] = {user.name: set() for user in (ALICE, BOB, CAROL)}
    for uploader, name, groups in UPLOADS:
        with client(uploader) as http:
            document = http.upload(docs / name, groups=groups)
            record = http.wait([document["id"]])[document["id"]]
        print(
            f"{uploader.name:>5} uploaded {name:<22} shared with {', '.join(groups):<16} -> {record['status']}, "
            f"{record['chunk_count']} chunks"
        )
        for user in (ALICE, BOB, CAROL):
            if user == uploader or set(user.groups) & set(groups):
                visible[user.name].add(name)

    print(f'\nEach user asks: "{QUESTION}"')
    leaks = 0
    for user in (ALICE, BOB, CAROL):
        with client(user) as http:
            answer = http.query(QUESTION, top_k=4, max_context_tokens=800)
        membership = ", ".join(user.groups) or "no groups"
        print(f"\n{user.name} ({membership}) may read: {', '.join(sorted(visible[user.name])) or 'nothing'}")
        if not answer["results"]:
            print("   no results")
        for rank, hit in enumerate(answer["results"], 1):
            allowed = hit["file_name"] in visible[user.name]
            leaks += not allowed
            snippet = " ".join(hit["text"].split())[:90]
            print(f"   {rank}. {hit['score']:.3f} {hit['file_name']:<22} {snippet}{'' if allowed else '  <-- LEAK'}")
        print(f"   prompt: {answer['prompt_tokens']} tokens (budget 800)")
    print(
        f"\n{'no result outside its reader ACL' if not leaks else f'{leaks} LEAKED RESULTS'}: "
        f"the same question, three users, three different answers."
    )
    return 1 if leaks else 0
