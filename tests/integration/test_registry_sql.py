"""The registry, API keys and audit log on both SQL engines Tessera runs on: SQLite (the embedded default)
and Postgres (service mode, this machine's server). Every test runs on both, through the migrations, so the
two cannot drift apart; the last test runs the whole service with its registry on Postgres and queries it
as several users.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import insert, inspect, text

import core.db
from api.app import create_app
from api.cli import main
from core.access import Principal, user_token
from core.apikeys import ApiKeys
from core.audit import AuditAction, AuditLog, AuditRow
from core.db import Base, Database, utcnow
from core.errors import AuthError, NotFound, Unavailable
from core.records import DocumentRecord, DocumentStatus, IngestStage
from core.registry import Attempt, Registry
from core.schema import INITIAL_REVISION, alembic_config, current_revision, head_revision, migrate
from core.settings import get_settings
from tests.conftest import SECRET
from tests.helpers import auth, query, settings_for, upload, wait_final
from tests.postgres import postgres_schema

pytestmark = pytest.mark.integration

ENGINES = ("sqlite", "postgres")


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    migrate(db)
    yield db
    db.close()


def _add(
    registry: Registry, document_id: str, *, tenant: str = "acme", owner: str = "alice", acl: tuple[str, ...] = ()
) -> DocumentRecord:
    return registry.add(
        document_id=document_id,
        tenant=tenant,
        owner=owner,
        file_name=f"{document_id}.txt",
        file_type="text",
        sha256="ab" * 32,
        size_bytes=10,
        acl_tokens=(user_token(owner), *acl),
    )


def test_the_migrations_make_exactly_the_schema_the_models_describe(database: Database) -> None:
    assert current_revision(database) == head_revision()
    with database.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert differences == []


def test_downgrade_to_nothing_and_upgrade_again(database: Database) -> None:
    with database.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    with database.engine.connect() as connection:
        assert not inspect(connection).has_table("documents")
    assert migrate(database) == head_revision()
    assert _add(Registry(database), "d" * 32).status is DocumentStatus.QUEUED


def test_concurrent_starts_migrate_once_and_all_succeed(database_url: str) -> None:
    databases = [Database(database_url) for _ in range(4)]
    results: list[str] = []
    errors: list[BaseException] = []

    def start(db: Database) -> None:
        try:
            results.append(migrate(db))
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [head_revision()] * 4
    for db in databases:
        db.close()


def test_tables_made_before_migrations_are_stamped_and_kept(database_url: str) -> None:
    legacy = Database(database_url)
    # The schema create_all made before migrations existed is revision 0001's, without alembic_version.
    with legacy.engine.begin() as connection:
        command.upgrade(alembic_config(connection), INITIAL_REVISION)
        connection.execute(text("DROP TABLE alembic_version"))
    with legacy.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO documents (id, tenant, owner, file_name, file_type, sha256, size_bytes, status,"
                " progress_done, progress_total, chunk_count, attempts, version, created_at, updated_at)"
                " VALUES (:id, 'acme', 'alice', 'old.txt', 'TXT', :sha, 1, 'ready', 0, 0, 1, 1, 1, :now, :now)"
            ),
            {"id": "e" * 32, "sha": "ab" * 32, "now": utcnow()},
        )
    assert current_revision(legacy) is None
    assert migrate(legacy) == head_revision()
    kept = Registry(legacy).get("e" * 32)
    assert (kept.owner, kept.status, kept.attempts_at_queue) == ("alice", DocumentStatus.READY, 0)
    legacy.close()


def test_a_document_goes_through_its_lifecycle(database: Database) -> None:
    registry = Registry(database)
    doc = "a" * 32
    _add(registry, doc, acl=("group:eng",))
    attempt = registry.start_attempt(doc)
    assert attempt.record.status is DocumentStatus.PROCESSING and attempt.number == 1
    assert (attempt.record.stage, attempt.stopped_at) == (IngestStage.PARSING, None)
    registry.set_stage(doc, IngestStage.EMBEDDING, 3, 7)
    assert (registry.get(doc).stage, registry.get(doc).progress_done) == (IngestStage.EMBEDDING, 3)
    again = registry.start_attempt(doc)  # the worker died while embedding
    assert (again.number, again.stopped_at, again.record.stage) == (2, IngestStage.EMBEDDING, IngestStage.PARSING)
    with pytest.raises(NotFound):
        registry.set_stage("f" * 32, IngestStage.INDEXING)
    with pytest.raises(NotFound):
        registry.mark_ready("f" * 32, version=1, chunk_count=1)
    assert registry.mark_ready(doc, version=1, chunk_count=7)
    registry.new_version(doc, sha256="cd" * 32, size_bytes=3 * 2**31, file_type="text")
    replaced = registry.get(doc)
    assert (replaced.version, replaced.live_version, replaced.size_bytes) == (2, 1, 3 * 2**31)
    assert registry.unfinished() == [doc]
    registry.start_attempt(doc)
    assert not registry.mark_ready(doc, version=1, chunk_count=1), "a stale version must not go live"
    assert registry.mark_ready(doc, version=2, chunk_count=4)
    registry.set_stage(doc, IngestStage.INDEXING, 1, 2)  # a ready document keeps no stage
    ready = registry.get(doc)
    assert (ready.status, ready.stage, ready.live_version, ready.chunk_count) == (DocumentStatus.READY, None, 2, 4)
    assert not registry.mark_ready(doc, version=2, chunk_count=9), "only a processing document goes live"
    registry.mark_failed(doc, "x" * 5000)
    assert len(registry.get(doc).failure_reason or "") == 2000
    registry.mark_deleted(doc)
    registry.mark_failed(doc, "too late")
    assert registry.get(doc).status is DocumentStatus.DELETED
    with pytest.raises(NotFound):
        registry.new_version(doc, sha256="ef" * 32, size_bytes=1, file_type="text")


def test_get_reads_back_the_record_as_written_with_its_acl_in_order(database: Database) -> None:
    registry = Registry(database)
    tokens = ("user:zoe", "group:sales", "group:eng", "user:alice")  # not in sorted order
    written = registry.add(
        document_id="b" * 32,
        tenant="acme",
        owner="zoe",
        file_name="notes.txt",
        file_type="text",
        sha256="ab" * 32,
        size_bytes=10,
        acl_tokens=(*tokens, "group:eng"),  # a token given twice is kept once, at its first place
    )
    assert written.acl_tokens == tokens
    assert registry.get("b" * 32) == written
    assert registry.set_acl("b" * 32, ["group:eng", "group:eng"]).acl_tokens == ("group:eng",)
    assert registry.get("b" * 32).acl_tokens == ("group:eng",)
    emptied = registry.set_acl("b" * 32, [])  # no token at all: a document nobody may read
    assert emptied.acl_tokens == () and registry.get("b" * 32) == emptied
    attempt = registry.start_attempt("b" * 32)
    assert registry.get("b" * 32) == attempt.record
    with pytest.raises(NotFound):
        registry.get("c" * 32)


def test_an_attempt_started_while_an_acl_change_commits_gets_the_new_acl(database: Database) -> None:
    registry = Registry(database)
    doc = "d" * 32
    _add(registry, doc, acl=("group:eng", "group:sales"))
    started: list[Attempt] = []
    with database.engine.connect() as other:  # another writer, holding the row (Postgres) or the database (SQLite)
        other.execute(text("UPDATE documents SET updated_at = :now WHERE id = :d"), {"now": utcnow(), "d": doc})
        other.execute(text("DELETE FROM document_acl WHERE document_id = :d"), {"d": doc})
        other.execute(
            text("INSERT INTO document_acl (document_id, token, position) VALUES (:d, 'group:ops', 0)"), {"d": doc}
        )
        waiting = threading.Thread(target=lambda: started.append(registry.start_attempt(doc)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive(), "start_attempt must wait for the other writer"
        other.commit()
    waiting.join(10)
    assert started[0].record.acl_tokens == ("group:ops",) == registry.get(doc).acl_tokens
    assert started[0].number == 1


def test_listing_returns_what_each_principal_may_read_and_pages_without_gaps(database: Database) -> None:
    registry = Registry(database)
    docs = {
        "1" * 32: ("alice", ("group:eng",)),
        "2" * 32: ("bob", ("group:sales",)),
        "3" * 32: ("bob", ("user:carol",)),
        "4" * 32: ("alice", ()),
        "5" * 32: ("erin", ("group:eng", "group:sales")),
    }
    for document_id, (owner, acl) in docs.items():
        _add(registry, document_id, owner=owner, acl=acl)
    _add(registry, "6" * 32, tenant="globex", owner="dave", acl=("group:eng",))
    principals = {
        Principal.of("acme", "alice", ["eng"]): {"1" * 32, "4" * 32, "5" * 32},
        Principal.of("acme", "bob", ["sales"]): {"2" * 32, "3" * 32, "5" * 32},
        Principal.of("acme", "carol", []): {"3" * 32},
        Principal.of("acme", "mallory", ["Eng", "eng "]): set(),
        Principal.of("globex", "dave", ["eng"]): {"6" * 32},
        Principal.of("initech", "alice", ["eng"]): set(),
    }
    for principal, expected in principals.items():
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = registry.list_visible(principal, status=None, limit=2, cursor=cursor)
            seen += [record.id for record in page]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) and set(seen) == expected, principal
        for document_id in docs:
            record = registry.get(document_id)
            assert principal.may_read(record.tenant, record.acl_tokens) is (document_id in expected)


def test_the_longest_identifiers_and_names_fit(database: Database) -> None:
    registry = Registry(database)
    long = "é" * 256  # the longest identifier core.access admits, in characters, not bytes
    doc = "f" * 32
    registry.add(
        document_id=doc,
        tenant=long,
        owner=long,
        file_name="n" * 255,
        file_type="text",
        sha256="ab" * 32,
        size_bytes=1,
        acl_tokens=(user_token(long), "group:" + long),
    )
    record = registry.get(doc)
    assert record.owner == long and Principal.of(long, "someone", [long]).may_read(record.tenant, record.acl_tokens)
    AuditLog(database).write(tenant=long, subject="user:" + long, action=AuditAction.QUERY, outcome="ok")
    assert AuditLog(database).search(long)[0].subject == "user:" + long


def test_concurrent_attempts_are_all_counted(database: Database) -> None:
    registry = Registry(database)
    doc = "9" * 32
    _add(registry, doc)

    def attempt() -> None:
        registry.mark_queued(doc)
        registry.start_attempt(doc)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.get(doc).attempts == 8


def test_concurrent_writers_all_land(database: Database) -> None:
    """Sixteen threads writing audit records at once, as sixteen concurrent queries do: every record lands,
    none fails. On SQLite they queue on the process's writer lock, not in SQLite's busy handler."""
    audit = AuditLog(database)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            for step in range(25):
                audit.write(tenant="acme", subject=f"user:u{number}", action=AuditAction.QUERY, outcome=str(step))
        except BaseException as exc:  # collected: an assertion in a thread would go unseen
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    records = audit.search("acme", limit=1000)
    assert len(records) == 16 * 25
    assert {(r.subject, r.outcome) for r in records} == {(f"user:u{n}", str(s)) for n in range(16) for s in range(25)}
    assert audit._writes.runs < 16 * 25, "every record had a transaction of its own: no group commit"


def test_a_record_that_cannot_be_written_fails_only_its_own_caller(database: Database) -> None:
    """A batch whose transaction fails is written record by record: the good records land, the bad one's
    caller gets the error. Called on one batch directly, since which records share a batch depends on timing."""
    audit = AuditLog(database)
    good = {"at": utcnow(), "tenant": "acme", "subject": "user:alice", "action": "query", "target": None}
    unserializable: dict[str, Any] = {"x": object()}  # not JSON
    bad = {**good, "subject": "user:mallory", "outcome": "ok", "detail": unserializable}
    outcomes = audit._insert([{**good, "outcome": "1", "detail": {}}, bad, {**good, "outcome": "2", "detail": {}}])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], Exception) and "JSON serializable" in str(outcomes[1])
    assert sorted(r.outcome for r in audit.search("acme")) == ["1", "2"]
    with pytest.raises(Exception, match="JSON serializable"):  # through write(), alone: its caller gets the error
        audit.write(tenant="acme", subject="user:mallory", action=AuditAction.QUERY, outcome="x", detail=unserializable)
    assert len(audit.search("acme")) == 2


@contextmanager
def _write_transaction_held(database: Database, *rows: Base) -> Iterator[None]:
    """While the block runs, another thread holds a write transaction open (with `rows` written in it, not yet
    committed); it commits when the block ends."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with database.session() as session:
            session.add_all(rows)
            session.flush()
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def test_a_sqlite_writer_that_waits_too_long_is_told_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(database)
    monkeypatch.setattr(core.db, "_SQLITE_BUSY_TIMEOUT_S", 0.2)
    audit = AuditLog(database)
    with _write_transaction_held(database), pytest.raises(Unavailable, match="busy"):
        audit.write(tenant="acme", subject="user:alice", action=AuditAction.QUERY, outcome="ok")
    audit.write(tenant="acme", subject="user:alice", action=AuditAction.QUERY, outcome="ok")  # free again
    assert [r.outcome for r in audit.search("acme")] == ["ok"]
    database.close()


def test_reads_do_not_wait_for_a_writer_and_see_the_last_commit(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another thread holds a write transaction, reads answer at once (a read that queued for the writer
    lock would be told "busy" after the shortened timeout), with what was committed before it."""
    monkeypatch.setattr(core.db, "_SQLITE_BUSY_TIMEOUT_S", 0.2)
    registry, audit = Registry(database), AuditLog(database)
    committed = _add(registry, "d" * 32)
    held = AuditRow(at=utcnow(), tenant="acme", subject="user:w", action="query", outcome="held", detail={})
    with _write_transaction_held(database, held):
        assert registry.get(committed.id).id == committed.id
        assert [r.id for r in registry.records("acme")] == [committed.id]
        assert audit.search("acme") == []  # the writer's record is not committed yet
    assert [r.outcome for r in audit.search("acme")] == ["held"]


def test_a_read_transaction_never_writes(database: Database) -> None:
    audit = AuditLog(database)
    row = AuditRow(at=utcnow(), tenant="acme", subject="user:x", action="query", outcome="orm", detail={})
    with pytest.raises(RuntimeError, match="use session"), database.read() as session:
        session.add(row)
    with database.read() as session:  # a statement that writes runs, and is rolled back
        session.execute(
            insert(AuditRow).values(
                **{c: getattr(row, c) for c in ("at", "tenant", "subject", "action")}, outcome="sql", detail={}
            )
        )
    assert audit.search("acme") == []


def test_api_keys_and_the_audit_log(database: Database) -> None:
    keys = ApiKeys(database)
    record, key = keys.create(tenant="acme", name="indexer", groups=["eng", "eng", "ops"], created_by="admin")
    principal = keys.authenticate(key)
    assert (principal.tenant, principal.groups) == ("acme", frozenset({"eng", "ops"}))
    assert [k.id for k in keys.list("acme")] == [record.id] and keys.list("globex") == []
    with pytest.raises(NotFound):
        keys.revoke("globex", record.id)
    keys.revoke("acme", record.id)
    with pytest.raises(AuthError, match="revoked"):
        keys.authenticate(key)

    audit = AuditLog(database)
    start = utcnow()
    for outcome in ("ok", "denied", "ok"):
        audit.write(tenant="acme", subject="user:alice", action=AuditAction.QUERY, outcome=outcome, detail={"n": 1})
    audit.write(tenant="globex", subject="user:dave", action=AuditAction.QUERY, outcome="ok")
    newest = audit.search("acme", since=start, until=utcnow() + timedelta(seconds=1))
    assert [r.outcome for r in newest] == ["ok", "denied", "ok"] and newest[0].detail == {"n": 1}
    older = audit.search("acme", before_id=newest[0].id)
    assert [r.id for r in older] == [r.id for r in newest[1:]]


def test_the_migrate_command_upgrades_the_configured_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with postgres_schema() as url:
        monkeypatch.setenv("TESSERA_REGISTRY_URL", url)
        monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TESSERA_JWT_SECRET", SECRET)
        get_settings.cache_clear()
        try:
            assert main(["migrate"]) == 0
        finally:
            get_settings.cache_clear()
        assert f"revision {head_revision()}" in capsys.readouterr().out
        database = Database(url)
        assert current_revision(database) == head_revision() and inspect(database.engine).has_table("audit_log")
        database.close()


def test_an_unreachable_database_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(Unavailable):
        Registry(down).get("a" * 32)
    with pytest.raises(Unavailable):
        migrate(down)
    down.close()


def test_the_service_on_a_postgres_registry_serves_each_user_only_what_it_may_read(tmp_path: Path) -> None:
    alice, bob, carol = auth("alice", groups=["eng"]), auth("bob", groups=["sales"]), auth("carol")
    with postgres_schema() as url, TestClient(create_app(settings_for(tmp_path, registry_url=url))) as client:
        texts = {
            "eng.txt": (alice, "The engineering roadmap moves the billing service to Rust.", ["eng"], []),
            "sales.txt": (bob, "The sales forecast expects kayak rentals to grow in the north.", ["sales"], []),
            "carol.txt": (bob, "For Carol only: the party is at the lighthouse on Friday.", [], ["carol"]),
        }
        ids = {}
        for name, (owner, text, groups, users) in texts.items():
            response = upload(client, owner, name, text.encode(), groups=groups, users=users)
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]
        for name, (owner, *_rest) in texts.items():
            assert wait_final(client, owner, ids[name])["status"] == "ready"
        readable = {
            "alice": (alice, {ids["eng.txt"]}),
            "bob": (bob, {ids["sales.txt"], ids["carol.txt"]}),
            "carol": (carol, {ids["carol.txt"]}),
        }
        for _name, (headers, expected) in readable.items():
            results = query(client, headers, "roadmap forecast party", top_k=50)["results"]
            assert {r["document_id"] for r in results} == expected
            listed = client.get("/v1/documents", headers=headers).json()
            assert {d["id"] for d in listed["documents"]} == expected
