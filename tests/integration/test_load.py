"""The load test (evals/bench/load.py): queries from 20 principals of three tenants and an unknown one, from a
load generator process, while a second batch of documents is uploaded and ingested by a real `tessera serve`.

Bounded: 40 seed documents, 20 live ones, 8 clients, at most 600 requests (the load ends once the live batch is
final, after at least 100) and 60 seconds. Asserted: no leak, no failed request, every principal answered, a
live document ready while the load ran, nothing readable lost where it all fits in top_k. The responses are
checked a second time here, from the raw records with this file's own reading of the ACL rule. The checker is
shown to catch fabricated leaks, so that a checker that cannot fail would fail this test. No timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from evals.bench.load import LoadDocument, LoadPrincipal, build_scenario, check_responses, may_read
from evals.datasets import Passage

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"

ALICE = LoadPrincipal("acme", "alice", ("eng",), "alice")
BOB = LoadPrincipal("acme", "bob", (), "bob")
DAVE_GLOBEX = LoadPrincipal("globex", "dave", ("eng", "sales"), "dave")
ALICE_GLOBEX = LoadPrincipal("globex", "alice", ("eng",), "alice elsewhere")
MALLORY = LoadPrincipal("acme", "mallory", ("Eng", "eng "), "near misses")
ADMIN = LoadPrincipal("acme", "root", (), "admin", admin=True)


def _doc(key: str, tenant: str, owner: str, users: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> LoadDocument:
    return LoadDocument(key, "seed", tenant, owner, users, groups, key, f"{key}.txt", key.encode())


ENG_DOC = _doc("eng", "acme", "carol", groups=("eng",))
FOR_BOB = _doc("for-bob", "acme", "carol", users=("bob",))
ALICE_OWN = _doc("alice-own", "acme", "alice")
GLOBEX_ENG = _doc("globex-eng", "globex", "dave", groups=("eng",))


@pytest.mark.unit
def test_the_rule_is_tenant_and_owner_user_or_group() -> None:
    assert may_read(ALICE, ENG_DOC) and may_read(ALICE, ALICE_OWN) and not may_read(ALICE, FOR_BOB)
    assert may_read(BOB, FOR_BOB) and not may_read(BOB, ENG_DOC)
    assert not may_read(ALICE_GLOBEX, ALICE_OWN)  # the same subject in another tenant
    assert not may_read(DAVE_GLOBEX, ENG_DOC) and may_read(DAVE_GLOBEX, GLOBEX_ENG)  # the same group name
    assert not any(may_read(MALLORY, d) for d in (ENG_DOC, FOR_BOB, ALICE_OWN, GLOBEX_ENG))
    assert not any(may_read(ADMIN, d) for d in (ENG_DOC, FOR_BOB, ALICE_OWN, GLOBEX_ENG))  # admin grants nothing


@pytest.mark.unit
def test_the_scenario_mixes_tenants_groups_and_ways_of_sharing() -> None:
    passages = [Passage(f"p{i}", f"Title {i}", f"Passage number {i} about topic {i % 7}.") for i in range(120)]
    scenario = build_scenario(passages, principals=20, seed_documents=40, live_documents=20, rng_seed=3)
    assert scenario == build_scenario(passages, principals=20, seed_documents=40, live_documents=20, rng_seed=3)
    principals, documents = scenario.principals, [*scenario.seed, *scenario.live]
    assert len(principals) == 20 and len(scenario.seed) == 40 and len(scenario.live) == 20
    assert len({(p.tenant, p.subject) for p in principals}) == 20
    assert len({d.tenant for d in documents}) == 3 and len({g for d in documents for g in d.groups}) >= 6
    assert {len(p.groups) for p in principals} >= {0, 1, 2, 3}
    assert any(p.tenant not in {d.tenant for d in documents} for p in principals)  # an unknown tenant
    assert any(d.users and not d.groups for d in documents) and any(d.groups and not d.users for d in documents)
    assert any(d.users and d.groups for d in documents) and any(not d.users and not d.groups for d in documents)
    assert len({d.content for d in documents}) == len(documents)  # no upload is answered as a duplicate
    for batch in (scenario.seed, scenario.live):
        readers = [p for p in principals if any(may_read(p, d) for d in batch)]
        assert 3 <= len(readers) < len(principals)  # neither nobody nor everybody


@pytest.mark.unit
def test_the_checker_counts_every_leak_and_loss_it_is_fed() -> None:
    principals = [ALICE, BOB, ALICE_GLOBEX]
    documents = {"d-eng": ENG_DOC, "d-bob": FOR_BOB, "d-own": ALICE_OWN, "d-globex": GLOBEX_ENG}
    clean: list[list[Any]] = [[0, 200, 5.0, 0.1, False, ["d-own", "d-eng"]], [1, 200, 5.0, 0.2, False, ["d-bob"]]]
    verdict = check_responses(clean, principals, documents, {0: frozenset({"d-eng"})})
    assert (verdict["leaks"], verdict["losses"], verdict["failed"], verdict["answered"]) == (0, 0, 0, 2)

    fabricated: list[list[Any]] = [
        [0, 200, 5.0, 0.3, False, ["d-eng", "d-bob"]],  # alice given bob's document
        [2, 200, 5.0, 0.4, True, ["d-own"]],  # a warm-up answer: globex's alice given acme's alice's document
        [1, 200, 5.0, 0.5, False, ["nobody-uploaded-this"]],  # an id this run never uploaded
        [1, 200, 5.0, 0.6, False, []],  # nothing returned: no leak
        [0, 200, 5.0, 0.7, False, ["d-own"]],  # d-eng missing: a loss
        [1, 503, 5.0, 0.8, False, None],
        [2, 0, 5.0, 0.9, False, None],
        [7, 200, 5.0, 1.0, False, ["d-own"]],  # no such principal
    ]
    verdict = check_responses(clean + fabricated, principals, documents, {0: frozenset({"d-eng"})})
    assert verdict["leaks"] == 3 and verdict["leaked_responses"] == 3
    assert {(e["subject"], e["document"]) for e in verdict["leak_examples"]} == {
        ("alice", "for-bob"),
        ("alice", "alice-own"),
        ("bob", None),
    }
    assert verdict["losses"] == 1 and verdict["failed"] == 2 and verdict["bad_records"] == 1
    assert [p["leaks"] for p in verdict["per_principal"]] == [1, 1, 1]


def _reads(principal: dict[str, Any], document: dict[str, Any]) -> bool:
    """The rule once more, as ACL tokens (the way the matrix test and the index think of it)."""
    acl = {f"user:{document['owner']}", *(f"user:{u}" for u in document["users"])}
    acl |= {f"group:{g}" for g in document["groups"]}
    mine = {f"user:{principal['subject']}", *(f"group:{g}" for g in principal["groups"])}
    return principal["tenant"] == document["tenant"] and bool(acl & mine)


@pytest.mark.integration
@pytest.mark.slow
def test_queries_during_ingestion_never_leak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "load.json"
    argv = ["bench", "load", "--dataset", str(DATASETS / "dbpedia"), "--data-dir", str(data_dir), "--json", str(out)]
    argv += ["--principals", "20", "--seed-documents", "40", "--live-documents", "20", "--clients", "8"]
    argv += ["--requests", "600", "--min-requests", "100", "--duration", "60", "--warmup", "1"]
    argv += ["--upload-interval", "0.1", "--timeout", "300"]
    code = main(argv)
    printed = capsys.readouterr().out
    print(printed)  # the figures, for whoever reads the test log (-s)
    assert "Queries under ingestion" in printed and f"saved {out}" in printed
    result = json.loads(out.read_text(encoding="utf-8"))
    load, seed, live = result["load"], result["seed"], result["live"]

    assert load["leaks"] == 0, load["leak_examples"]
    assert load["failures"] == 0 and load["failed"] == 0 and load["bad_records"] == 0, load["errors"]
    assert load["requests"] >= 100 and load["responses"] == load["answered"] == load["requests"] + 8
    assert load["principals_answered"] == load["principals"] == 20
    assert load["losses"] == 0, load["loss_examples"]
    assert load["loss_checked_principals"] >= 10  # 40 + 20 one-chunk documents over 3 tenants fit in top_k 50
    assert 0 < load["p50_ms"] <= load["p95_ms"] <= load["p99_ms"] <= load["max_ms"] and load["qps"] > 0
    assert seed["ready"] == seed["documents"] == 40 and seed["refused"] == seed["failed"] == 0
    assert live["accepted"] == live["ready"] == 20 and live["refused"] == live["failed"] == 0
    assert live["ready_during_load"] >= 1
    assert code == 0
    for key in ("cpu_count", "cpu_model", "python"):
        assert result["machine"][key], key
    assert "commit" in result["machine"]["git"] and result["settings"]["worker_concurrency"]

    # Every response again, from the raw records, with this file's reading of the rule.
    principals, documents = result["principals"], {d["id"]: d for d in result["documents"]}
    assert len(documents) == 60 and {d["batch"] for d in documents.values()} == {"seed", "live"}
    records = [json.loads(line) for line in Path(result["responses_file"]).read_text(encoding="utf-8").splitlines()]
    assert len(records) == load["responses"]
    returned = 0
    live_seen = set()
    for index, status, _ms, _start, _warmup, ids in records:
        assert status == 200
        for document_id in ids:
            returned += 1
            assert document_id in documents and _reads(principals[index], documents[document_id]), (index, ids)
            if documents[document_id]["batch"] == "live":
                live_seen.add(document_id)
    assert returned > 0 and len(live_seen) == live["seen_in_responses"]

    # The same checker on this run's real ids, fed answers that leak: each is counted.
    scenario = [
        LoadPrincipal(p["tenant"], p["subject"], tuple(p["groups"]), p["label"], p["admin"]) for p in principals
    ]
    as_documents = {
        i: LoadDocument(
            d["key"], d["batch"], d["tenant"], d["owner"], tuple(d["users"]), tuple(d["groups"]), "", "", b""
        )
        for i, d in documents.items()
    }
    outsider = next(n for n, p in enumerate(principals) if p["tenant"] == "nowhere")
    loner = next(n for n, p in enumerate(principals) if p["subject"] == "nobody")
    foreign = next(i for i, d in documents.items() if d["tenant"] == "acme")
    leaking = [[outsider, 200, 1.0, 0.0, False, [foreign]], [loner, 200, 1.0, 0.0, False, [foreign, "forged-id"]]]
    verdict = check_responses([*records, *leaking], scenario, as_documents)
    assert verdict["leaks"] == 3 and verdict["leaked_responses"] == 2
