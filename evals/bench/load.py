"""Load test: queries from many principals, while documents are being uploaded and ingested, every answer checked
against its principal's ACL.

What is run, and what is measured:
- the scenario (built here, deterministic for a seed): tenants with the same group names and the same subjects,
  principals in 0 to 3 groups, and special ones (an unknown tenant, a subject named like a group, near-miss group
  names, a tenant admin in no group, a principal in no group); documents (short dbpedia passages, one per document)
  owned by the tenants' users and shared with groups, with users, with both or with no one;
- the seed batch is uploaded over HTTP by its owners and waited for (the audit log's `document.ingested`);
- then the load generator (evals/bench/loadgen.py, a process of its own) sends /v1/query as every principal in turn
  with `top_k` large enough to return everything a principal reads, recording each answer's document ids, while
  this process uploads the live batch, one document every `upload_interval_s`, from the moment the load starts;
- every result of every answer (the load generator's warm-up ones included) is checked against the rule written
  here, independently of Tessera's code: same tenant AND (owner OR a listed user OR a shared group). A document
  the principal may not read, or one this run never uploaded, is a LEAK. A live document it may read is fine
  present or missing (it may not be ready yet). Where everything a principal may read fits in `top_k` chunks, a
  readable seed document missing from an answer is a LOSS (a filter that returns nothing must not pass);
- latency p50/p95/p99 and answered queries/s over the measured requests; failures: every request without a 200
  query answer; live documents whose ingestion finished (audit time) inside the load's window.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from evals.bench.ingest import INGESTED_ACTION, file_name_for
from evals.bench.loadgen import LoadSpec
from evals.bench.query import run_loadgen, summarize
from evals.bench.report import cell, table
from evals.datasets import Passage

TENANTS = ("acme", "globex", "initech")
GROUPS = ("eng", "sales", "ops", "legal", "finance", "research")
SUBJECTS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mike", "niaj")
UNKNOWN_TENANT = "nowhere"
AUDITOR = "load-auditor"
MAX_PASSAGE_CHARS = 800  # one chunk each at the default 200 tokens, so that chunk counts stay predictable
_HTTP_TIMEOUT_S = 120.0
_POLL_S = 0.5
_AUDIT_PAGE = 1000
_EXAMPLES = 10

TokenFn = Callable[..., str]  # (tenant, subject, groups, *, admin=False) -> bearer token


@dataclass(frozen=True)
class LoadPrincipal:
    tenant: str
    subject: str
    groups: tuple[str, ...]
    label: str
    admin: bool = False


@dataclass(frozen=True)
class LoadDocument:
    key: str  # seed-0007, live-0003
    batch: str  # "seed" or "live"
    tenant: str
    owner: str
    users: tuple[str, ...]
    groups: tuple[str, ...]
    passage_id: str
    file_name: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class Scenario:
    principals: list[LoadPrincipal]
    seed: list[LoadDocument]
    live: list[LoadDocument]


def may_read(principal: LoadPrincipal, document: LoadDocument) -> bool:
    """The README's rule, written again here: same tenant AND (owner OR listed user OR a shared group). Being a
    tenant admin grants nothing."""
    return principal.tenant == document.tenant and (
        principal.subject == document.owner
        or principal.subject in document.users
        or not set(principal.groups).isdisjoint(document.groups)
    )


def build_scenario(
    passages: Sequence[Passage], *, principals: int, seed_documents: int, live_documents: int, rng_seed: int = 7
) -> Scenario:
    """Principals and documents for the run (see the module docstring); the same for the same arguments."""
    specials = [
        LoadPrincipal(UNKNOWN_TENANT, "alice", ("eng", "sales"), "unknown tenant, real subject and groups"),
        LoadPrincipal("acme", "eng", (), "subject named like a group, no groups"),
        LoadPrincipal("acme", "mallory", ("Eng", "sales ", "eng2"), "near-miss group names"),
        LoadPrincipal("acme", "acme-admin", (), "tenant admin, no groups", admin=True),
        LoadPrincipal("globex", "nobody", (), "no groups, owns nothing"),
    ]
    if principals < len(specials) + len(TENANTS):
        raise ValueError(f"at least {len(specials) + len(TENANTS)} principals: one user per tenant and the specials")
    rng = random.Random(rng_seed)
    regulars: list[LoadPrincipal] = []
    for j in range(principals - len(specials)):
        tenant, n = TENANTS[j % len(TENANTS)], j // len(TENANTS)
        subject = SUBJECTS[n % len(SUBJECTS)] + (str(n // len(SUBJECTS)) if n >= len(SUBJECTS) else "")
        groups = tuple(sorted(rng.sample(GROUPS, j % 4)))
        regulars.append(LoadPrincipal(tenant, subject, groups, f"{len(groups)} groups"))

    texts: set[bytes] = set()
    short = [p for p in passages if len(p.document_text) <= MAX_PASSAGE_CHARS]
    rng.shuffle(short)
    chosen: list[Passage] = []
    for passage in short:  # distinct bytes: the server answers an upload of known bytes with the existing document
        content = passage.document_text.encode("utf-8")
        if content not in texts:
            texts.add(content)
            chosen.append(passage)
        if len(chosen) == seed_documents + live_documents:
            break
    if len(chosen) < seed_documents + live_documents:
        raise ValueError(f"only {len(chosen)} distinct passages of at most {MAX_PASSAGE_CHARS} characters")

    taken: set[str] = set()
    documents: list[LoadDocument] = []
    for i, passage in enumerate(chosen):
        tenant = TENANTS[i % len(TENANTS)]
        owner = rng.choice([p.subject for p in regulars if p.tenant == tenant])
        kind = (i // len(TENANTS)) % 4  # 0: groups, 1: users, 2: both, 3: the owner alone
        others = [s for s in SUBJECTS[:8] if s != owner]  # some are users here, some only in other tenants
        users = tuple(sorted(rng.sample(others, rng.randint(1, 2)))) if kind in (1, 2) else ()
        groups = tuple(sorted(rng.sample(GROUPS, rng.randint(1, 2)))) if kind in (0, 2) else ()
        batch, number = ("seed", i) if i < seed_documents else ("live", i - seed_documents)
        documents.append(
            LoadDocument(
                key=f"{batch}-{number:04d}",
                batch=batch,
                tenant=tenant,
                owner=owner,
                users=users,
                groups=groups,
                passage_id=passage.id,
                file_name=file_name_for(passage.id, taken),
                content=passage.document_text.encode("utf-8"),
            )
        )
    return Scenario(regulars + specials, documents[:seed_documents], documents[seed_documents:])


# --- the checker ------------------------------------------------------------------------------------------------


@dataclass
class _Tally:
    responses: int = 0
    answered: int = 0
    results: int = 0
    leaks: int = 0
    losses: int = 0
    seen: set[str] = field(default_factory=set)

    def figures(self) -> dict[str, int]:
        return {
            "responses": self.responses,
            "answered": self.answered,
            "results": self.results,
            "leaks": self.leaks,
            "losses": self.losses,
            "distinct_documents": len(self.seen),
        }


def check_responses(
    records: Iterable[Sequence[Any]],
    principals: Sequence[LoadPrincipal],
    documents: dict[str, LoadDocument],
    must_return: dict[int, frozenset[str]] | None = None,
) -> dict[str, Any]:
    """Check every result of every recorded answer (loadgen `record` rows: principal index, status, latency ms,
    start s, warm-up?, document ids). `documents`: every document this run uploaded, by id; an id not there is a
    leak, as is a document `may_read` refuses. `must_return`: by principal index, ids each answer must hold."""
    must_return = must_return or {}
    per = [_Tally() for _ in principals]
    leaks: list[dict[str, Any]] = []
    losses: list[dict[str, Any]] = []
    failed = bad_records = leaked_responses = 0
    for record in records:
        index, status, documents_returned = record[0], record[1], record[5]
        if not isinstance(index, int) or not 0 <= index < len(principals):
            bad_records += 1
            continue
        principal, mine = principals[index], per[index]
        mine.responses += 1
        if status != 200 or documents_returned is None:
            failed += 1
            continue
        mine.answered += 1
        mine.results += len(documents_returned)
        mine.seen.update(documents_returned)
        before = len(leaks)
        for document_id in documents_returned:
            document = documents.get(document_id)
            if document is None or not may_read(principal, document):
                mine.leaks += 1
                leaks.append(
                    {
                        "principal": principal.label,
                        "tenant": principal.tenant,
                        "subject": principal.subject,
                        "document_id": document_id,
                        "document": None if document is None else document.key,
                        "why": "not uploaded by this run" if document is None else "its ACL does not admit them",
                    }
                )
        leaked_responses += len(leaks) > before
        missing = must_return.get(index, frozenset()) - set(documents_returned)
        if missing:
            mine.losses += 1
            losses.append({"principal": principal.label, "subject": principal.subject, "missing": sorted(missing)})
    return {
        "responses": sum(p.responses for p in per) + bad_records,
        "answered": sum(p.answered for p in per),
        "failed": failed,
        "bad_records": bad_records,
        "leaks": len(leaks),
        "leaked_responses": leaked_responses,
        "leak_examples": leaks[:_EXAMPLES],
        "losses": len(losses),
        "loss_examples": losses[:_EXAMPLES],
        "per_principal": [p.figures() for p in per],
        "seen": set().union(*(p.seen for p in per)),
    }


# --- over HTTP --------------------------------------------------------------------------------------------------


def upload(client: httpx.Client, token: str, document: LoadDocument) -> tuple[str | None, str | None]:
    """Upload `document` as its owner: (its id, None) when accepted, else (None, why)."""
    acl = json.dumps({"users": list(document.users), "groups": list(document.groups)})
    try:
        response = client.post(
            "/v1/documents",
            files={"file": (document.file_name, document.content)},
            data={"acl": acl},
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        return None, f"{document.key}: {type(exc).__name__}: {exc}"
    if response.status_code == 202:
        return str(response.json()["id"]), None
    return None, f"{document.key}: HTTP {response.status_code} {response.text[:200]}"


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def wait_final(
    client: httpx.Client,
    auditors: dict[str, str],
    ids: dict[str, str],
    since: datetime,
    timeout_s: float,
    cancel: threading.Event | None = None,
) -> dict[str, dict[str, Any]]:
    """Poll each tenant's audit log (as its admin) until every document in `ids` (id -> tenant) has its
    `document.ingested` record; those records by document id. TimeoutError past `timeout_s` or on `cancel`."""
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for tenant in sorted(set(ids.values())):
            params: dict[str, Any] = {"action": INGESTED_ACTION, "since": (since - timedelta(seconds=5)).isoformat()}
            params["limit"] = _AUDIT_PAGE
            headers = {"Authorization": f"Bearer {auditors[tenant]}"}
            while True:
                response = client.get("/v1/audit", params=params, headers=headers)
                response.raise_for_status()
                page = response.json()
                for record in page["records"]:
                    if ids.get(record["target"]) == tenant:
                        final.setdefault(record["target"], record)
                if page["next_before_id"] is None:
                    break
                params["before_id"] = page["next_before_id"]
        if len(final) == len(ids):
            return final
        if time.monotonic() > deadline or (cancel is not None and cancel.wait(_POLL_S)):
            raise TimeoutError(f"{len(ids) - len(final)} documents not final after {timeout_s:.0f}s")
        if cancel is None:
            time.sleep(_POLL_S)


class LiveUploads(threading.Thread):
    """The live batch, uploaded while the load runs: from when `started_file` appears (the load's start), one
    document every `interval_s`; then, once every one is final, `stop_file` is made, which ends the load (after
    its minimum of requests). When the load ends first (`load_over`), the rest is uploaded at once and not waited
    for; `cancel` stops everything."""

    def __init__(
        self,
        base_url: str,
        documents: Sequence[LoadDocument],
        owners: dict[tuple[str, str], str],
        auditors: dict[str, str],
        files: tuple[Path, Path],
        interval_s: float,
        wait_s: float,
    ) -> None:
        super().__init__(name="load-live-uploads", daemon=True)
        self.base_url, self.documents, self.owners, self.auditors = base_url, documents, owners, auditors
        self.started_file, self.stop_file = files
        self.interval_s, self.wait_s = interval_s, wait_s
        self.load_over = threading.Event()
        self.cancel = threading.Event()
        self.ids: dict[str, str] = {}  # document key -> id
        self.refused: list[str] = []
        self.began_at = self.ended_at = self.final_at = 0.0
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the parent, which fails the run
            self.error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while not self.started_file.exists():
            if self.cancel.wait(0.01) or time.monotonic() > deadline:
                self.error = "the load did not start"
                return
        self.began_at = time.time()
        since = datetime.now(UTC)
        with httpx.Client(base_url=self.base_url, timeout=_HTTP_TIMEOUT_S) as client:
            for n, document in enumerate(self.documents):
                pause = self.began_at + n * self.interval_s - time.time()
                if pause > 0 and not self.load_over.is_set():
                    self.load_over.wait(pause)
                if self.cancel.is_set():
                    return
                document_id, why = upload(client, self.owners[(document.tenant, document.owner)], document)
                if document_id is None:
                    self.refused.append(str(why))
                else:
                    self.ids[document.key] = document_id
            self.ended_at = time.time()
            tenants = {self.ids[d.key]: d.tenant for d in self.documents if d.key in self.ids}
            try:
                wait_final(client, self.auditors, tenants, since, deadline - time.monotonic(), self.load_over)
            except TimeoutError:
                return  # the load ended first, by its bounds: the parent waits for the rest
            self.final_at = time.time()
        self.stop_file.touch()


@dataclass(frozen=True)
class LoadBounds:
    clients: int = 8
    requests: int = 400
    duration_s: float = 60.0
    warmup: int = 1  # untimed requests per client, checked like the others
    top_k: int = 50
    upload_concurrency: int = 4
    upload_interval_s: float = 0.1
    ingest_timeout_s: float = 600.0
    min_requests: int = 0  # before the load may stop on the live batch being final


def _tokens(scenario: Scenario, token: TokenFn) -> tuple[list[str], dict[tuple[str, str], str], dict[str, str]]:
    readers = [token(p.tenant, p.subject, p.groups, admin=p.admin) for p in scenario.principals]
    owners = {(p.tenant, p.subject): token(p.tenant, p.subject, p.groups) for p in scenario.principals}
    auditors = {tenant: token(tenant, AUDITOR, (), admin=True) for tenant in TENANTS}
    return readers, owners, auditors


def _seed(
    client: httpx.Client, scenario: Scenario, owners: dict[tuple[str, str], str], concurrency: int
) -> tuple[dict[str, str], list[str]]:
    ids: dict[str, str] = {}
    refused: list[str] = []

    def one(document: LoadDocument) -> None:
        document_id, why = upload(client, owners[(document.tenant, document.owner)], document)
        if document_id is None:
            refused.append(str(why))
        else:
            ids[document.key] = document_id

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load-seed") as pool:
        list(pool.map(one, scenario.seed))
    return ids, refused


def run_load_test(
    base_url: str, scenario: Scenario, queries: Sequence[str], token: TokenFn, bounds: LoadBounds
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Seed, then load while the live batch is ingested; the figures and the raw response records."""
    readers, owners, auditors = _tokens(scenario, token)
    limits = httpx.Limits(max_connections=bounds.upload_concurrency + 2)
    with httpx.Client(base_url=base_url, timeout=_HTTP_TIMEOUT_S, limits=limits) as client:
        since = datetime.now(UTC)
        started = time.perf_counter()
        seed_ids, seed_refused = _seed(client, scenario, owners, bounds.upload_concurrency)
        by_tenant = {seed_ids[d.key]: d.tenant for d in scenario.seed if d.key in seed_ids}
        seed_final = wait_final(client, auditors, by_tenant, since, bounds.ingest_timeout_s)
        seed_s = time.perf_counter() - started

        with tempfile.TemporaryDirectory(prefix="tessera-load-") as tmp:
            files = (Path(tmp) / "started", Path(tmp) / "stop")
            live = LiveUploads(
                base_url, scenario.live, owners, auditors, files, bounds.upload_interval_s, bounds.duration_s + 60
            )
            spec = LoadSpec(
                url=base_url,
                tokens=readers,
                queries=list(queries),
                concurrency=bounds.clients,
                requests=bounds.requests,
                duration_s=bounds.duration_s,
                warmup=bounds.warmup,
                top_k=bounds.top_k,
                record=True,
                started_file=str(files[0]),
                stop_file=str(files[1]),
                min_requests=bounds.min_requests,
            )
            live.start()
            try:
                raw = run_loadgen(spec)
            except BaseException:
                live.cancel.set()
                raise
            finally:
                live.load_over.set()
                live.join()
        if live.error is not None:
            raise RuntimeError(f"the live uploads failed: {live.error}")
        live_by_tenant = {live.ids[d.key]: d.tenant for d in scenario.live if d.key in live.ids}
        live_final = wait_final(client, auditors, live_by_tenant, since, bounds.ingest_timeout_s)

    ids = {**seed_ids, **live.ids}
    documents = {ids[d.key]: d for d in [*scenario.seed, *scenario.live] if d.key in ids}
    final = {**seed_final, **live_final}
    chunks = {i: int(r["detail"].get("chunks", 0)) if r["outcome"] == "ready" else 0 for i, r in final.items()}
    must_return: dict[int, frozenset[str]] = {}
    for n, principal in enumerate(scenario.principals):
        readable = [i for i, d in documents.items() if may_read(principal, d)]
        if sum(chunks.get(i, 0) for i in readable) <= bounds.top_k:  # all of it fits: none may be missing
            must_return[n] = frozenset(i for i in readable if documents[i].batch == "seed" and chunks.get(i, 0) > 0)
    records: list[list[Any]] = raw.pop("records")
    checked = check_responses(records, scenario.principals, documents, must_return)

    window = (raw["started_at"], raw["started_at"] + raw["wall_s"])
    ready_at = {i: _parse_time(r["at"]).timestamp() for i, r in live_final.items() if r["outcome"] == "ready"}
    level = summarize(raw)
    seen: set[str] = checked.pop("seen")
    per_principal = [
        {
            "label": p.label,
            "tenant": p.tenant,
            "subject": p.subject,
            "groups": list(p.groups),
            "admin": p.admin,
            "readable_seed": sum(may_read(p, d) for d in scenario.seed),
            "readable_live": sum(may_read(p, d) for d in scenario.live),
            "loss_checked": n in must_return,
            **figures,
        }
        for n, (p, figures) in enumerate(zip(scenario.principals, checked.pop("per_principal"), strict=True))
    ]
    load = {
        "clients": bounds.clients,
        "requests_bound": bounds.requests,
        "duration_bound_s": bounds.duration_s,
        "warmup_per_client": bounds.warmup,
        "top_k": bounds.top_k,
        "queries": len(queries),
        "principals": len(scenario.principals),
        "principals_answered": sum(p["answered"] > 0 for p in per_principal),
        **{k: level[k] for k in ("requests", "ok", "statuses", "errors", "warmup_failures")},
        "failures": level["failures"] + level["warmup_failures"],
        **{k: level[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms", "qps", "wall_s")},
        **checked,
        "loss_checked_principals": len(must_return),
    }
    live_figures = {
        "documents": len(scenario.live),
        "accepted": len(live.ids),
        "refused": len(live.refused),
        "refused_examples": live.refused[:5],
        "ready": len(ready_at),
        "failed": len(live_final) - len(ready_at),
        "ready_during_load": sum(window[0] <= t <= window[1] for t in ready_at.values()),
        "ready_after_load": sum(t > window[1] for t in ready_at.values()),
        "seen_in_responses": len(seen & set(live.ids.values())),
        "upload_interval_s": bounds.upload_interval_s,
        "uploads_began_after_start_s": round(live.began_at - window[0], 3) if live.began_at else None,
        "uploads_s": round(live.ended_at - live.began_at, 3) if live.ended_at else None,
        "all_final_during_load": bool(live.final_at) and live.final_at <= window[1] + _POLL_S,
        "load_stopped_by": _stopped_by(level, bounds),
    }
    seed_figures = {
        "documents": len(scenario.seed),
        "accepted": len(seed_ids),
        "refused": len(seed_refused),
        "refused_examples": seed_refused[:5],
        "ready": sum(r["outcome"] == "ready" for r in seed_final.values()),
        "failed": sum(r["outcome"] != "ready" for r in seed_final.values()),
        "chunks": sum(chunks.get(i, 0) for i in seed_final),
        "seconds": round(seed_s, 3),
    }
    result = {
        "load": load,
        "seed": seed_figures,
        "live": live_figures,
        "principals": per_principal,
        "documents": [
            {"id": i, **{k: v for k, v in asdict(d).items() if k != "content"}, "chunks": chunks.get(i)}
            for i, d in documents.items()
        ],
    }
    return result, records


def _stopped_by(level: dict[str, Any], bounds: LoadBounds) -> str:
    if level["requests"] >= bounds.requests:
        return "request bound"
    if level["wall_s"] >= bounds.duration_s:
        return "time bound"
    return "live batch final"


def save_records(records: Sequence[Sequence[Any]], path: Path) -> Path:
    """The raw response records, one JSON array a line (they hold document ids, no tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    os.chmod(path, 0o600)
    return path


def format_load(result: dict[str, Any]) -> str:
    """The load, seed and live tables (the header and server tables are the caller's)."""
    load, seed, live = result["load"], result["seed"], result["live"]
    sections = [
        table(
            f"Queries under ingestion ({load['clients']} clients, {load['principals']} principals, top_k "
            f"{load['top_k']}, {load['queries']} distinct queries; every result checked against its ACL)",
            ["requests", "failures", "leaks", "losses", "p50 ms", "p95 ms", "p99 ms", "max ms", "queries/s", "wall s"],
            [
                [
                    load["requests"],
                    load["failures"],
                    load["leaks"],
                    load["losses"],
                    load["p50_ms"],
                    load["p95_ms"],
                    load["p99_ms"],
                    load["max_ms"],
                    load["qps"],
                    load["wall_s"],
                ]
            ],
        ),
        table(
            "Documents (seed: ready before the load; live: uploaded from the load's start)",
            ["batch", "documents", "accepted", "ready", "failed", "during load", "after load", "seen in answers"],
            [
                ["seed", seed["documents"], seed["accepted"], seed["ready"], seed["failed"], None, None, None],
                [
                    "live",
                    live["documents"],
                    live["accepted"],
                    live["ready"],
                    live["failed"],
                    live["ready_during_load"],
                    live["ready_after_load"],
                    live["seen_in_responses"],
                ],
            ],
        ),
        table(
            "Principals (readable: documents their ACL admits)",
            ["principal", "tenant", "groups", "seed", "live", "answered", "results", "leaks", "losses"],
            [
                [
                    f"{p['subject']} ({p['label']})",
                    p["tenant"],
                    ",".join(p["groups"]) or "-",
                    p["readable_seed"],
                    p["readable_live"],
                    p["answered"],
                    p["results"],
                    p["leaks"],
                    p["losses"] if p["loss_checked"] else None,
                ]
                for p in result["principals"]
            ],
        ),
    ]
    began, spent = live["uploads_began_after_start_s"], live["uploads_s"]
    lines = [
        f"load ended by: {live['load_stopped_by']}; live uploads began {cell(began)}s after the load's start and "
        f"took {cell(spent)}s (one every {cell(live['upload_interval_s'])}s)",
        f"responses checked: {load['responses']} (warm-up included), answered {load['answered']}; principals "
        f"answered {load['principals_answered']}/{load['principals']}; losses checked for "
        f"{load['loss_checked_principals']} principals whose readable chunks fit in top_k",
    ]
    lines += [f"LEAK: {e}" for e in load["leak_examples"]]
    lines += [f"loss: {e}" for e in load["loss_examples"][:3]]
    lines += [f"error: {n} x {message}" for message, n in load["errors"].items()]
    return "\n\n".join([*sections, "\n".join(lines)])


def server_table(stats: dict[str, Any] | None) -> str:
    """The server run's cold start, peak RSS and index size."""
    s = stats or {}
    return table(
        "Server run (`tessera serve` subprocess; peak RSS = VmHWM, API and ingestion worker in one process)",
        ["cold start s", "healthy s", "peak RSS MiB", "index MiB"],
        [[s.get("cold_start_s"), s.get("healthy_s"), s.get("peak_rss_mib"), s.get("index_mib")]],
    )
