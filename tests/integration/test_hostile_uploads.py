"""Hostile uploads reach a worker, and the worker survives them: archive bombs and XML entity attacks are
refused before a parser opens them, the parser runs in a sandboxed child (memory cap, time limit, no
network), and a document that crashes its parser every time is tried at most three times. Each test prints
what it tried and what held.

The bombs are built here, in the test, from a real DOCX of ../shared/docs. The sandbox's own tests hand it
small functions of this module (a child imports them by name), each doing one real thing: allocating,
sleeping, connecting, or killing itself.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from core.errors import DocumentRejected
from ingest.sandbox import ChildCrashed, ChildLimits, ChildPool, run_isolated
from tests.helpers import auth, query, register_document, upload, wait_final
from tests.integration.conftest import Served, serve

pytestmark = pytest.mark.integration

ALICE = auth("alice", groups=["eng"])
SECRET_TEXT = "tessera-xxe-canary-7d41c2"
LIMITS = ChildLimits(memory_bytes=2048 * 2**20, seconds=60)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile")
    yield from serve(root / "data", pdf_max_pages=1, parse_timeout_s=20, worker_concurrency=1)


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "secret.txt"
    path.write_text(f"{SECRET_TEXT}\n")
    return path


def _docx_with(shared_docs: Path, replace: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """The shared handbook DOCX with some parts replaced (or added)."""
    source = zipfile.ZipFile(shared_docs / "handbook-1p.docx")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for entry in source.infolist():
            archive.writestr(entry.filename, replace.pop(entry.filename, source.read(entry.filename)))
        for name, content in replace.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _document_xml(body: str, prolog: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        + prolog
        + '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
        + f"<w:p><w:r><w:t>{body}</w:t></w:r></w:p></w:body></w:document>"
    ).encode()


def _ingest(service: Served, name: str, content: bytes) -> dict[str, object]:
    response = upload(service.client, ALICE, name, content)
    assert response.status_code == 202, response.text
    record: dict[str, object] = wait_final(service.client, ALICE, response.json()["id"])
    print(f"\n{name}: {record['status']} ({record.get('failure_reason')})")
    return record


def _still_ingests(service: Served) -> None:
    text = f"The worker lives on and ingests the next document ({uuid.uuid4().hex})."
    record = _ingest(service, "after.txt", text.encode())
    assert record["status"] == "ready"


serving = contextmanager(serve)


def _worker_rss_mb(service: Served) -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def test_a_docx_that_decompresses_to_gigabytes_is_refused_before_parsing(service: Served, shared_docs: Path) -> None:
    # 1 GiB of one byte, deflated to about 1 MiB: a ratio no real document part has.
    zeros = b"\x00" * (1024 * 2**20)
    content = _docx_with(shared_docs, {"word/document.xml": zeros})
    del zeros
    rss_before = _worker_rss_mb(service)
    record = _ingest(service, "bomb.docx", content)
    assert record["status"] == "failed" and "decompression bomb" in str(record["failure_reason"])
    rss_after = _worker_rss_mb(service)
    print(
        f"upload {len(content) / 2**20:.1f} MiB holding 1 GiB; API+worker RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
    assert rss_after - rss_before < 256
    _still_ingests(service)


def test_an_archive_whose_directory_lies_about_sizes_is_refused(service: Served, shared_docs: Path) -> None:
    content = bytearray(_docx_with(shared_docs, {"word/document.xml": b"<w:document/>" * 400_000}))
    # Declare the 5 MB part as 1,000 bytes in the central directory (what a lying archive does).
    directory = content.rfind(b"PK\x01\x02", 0, content.find(b"word/document.xml", content.find(b"PK\x01\x02")) + 1)
    content[directory + 24 : directory + 28] = (1000).to_bytes(4, "little")
    record = _ingest(service, "liar.docx", bytes(content))
    assert record["status"] == "failed" and "archive" in str(record["failure_reason"])


def test_too_many_entries_are_refused(tmp_path: Path, shared_docs: Path) -> None:
    many = {f"customXml/item{i}.xml": b"<a/>" for i in range(10_001)}
    path = tmp_path / "many.docx"
    path.write_bytes(_docx_with(shared_docs, many, zipfile.ZIP_STORED))
    from ingest.archive import ArchiveLimits, check_archive

    with pytest.raises(DocumentRejected, match="10016 entries; the limit is 10000"):
        check_archive(path, ArchiveLimits(10_000, 512 * 2**20, 200), forbid_doctype=True)


def test_a_billion_laughs_entity_in_an_ooxml_part_is_refused(service: Served, shared_docs: Path) -> None:
    # Ten levels of ten: "ha" 10^9 times once expanded.
    laughs = '<!ENTITY l0 "ha">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    document = _document_xml("&l9;", prolog=f"<!DOCTYPE w:document [{laughs}]>")
    record = _ingest(service, "laughs.docx", _docx_with(shared_docs, {"word/document.xml": document}))
    assert record["status"] == "failed" and "declares XML entities" in str(record["failure_reason"])
    _still_ingests(service)


def test_an_xxe_entity_never_brings_a_local_file_in(service: Served, shared_docs: Path, secret_file: Path) -> None:
    prolog = f'<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file://{secret_file}">]>'
    docx = _docx_with(shared_docs, {"word/document.xml": _document_xml("Quarterly plan &xxe;", prolog)})
    record = _ingest(service, "xxe.docx", docx)
    assert record["status"] == "failed" and "declares XML entities" in str(record["failure_reason"])
    # The same attack where no archive check applies: an HTML page. It may be ingested, but never with the file.
    html = (
        f'<!DOCTYPE html [<!ENTITY xxe SYSTEM "file://{secret_file}">]>'
        "<html><body><p>Quarterly plan for the lighthouse &xxe; and more.</p></body></html>"
    ).encode()
    html_record = _ingest(service, "xxe.html", html)
    assert html_record["status"] in ("ready", "failed")
    # Utf-16 hides the declaration from a byte scan that looks for ASCII only.
    utf16 = (
        f'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file://{secret_file}">]>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
        "<w:p><w:r><w:t>&xxe;</w:t></w:r></w:p></w:body></w:document>"
    ).encode("utf-16")
    utf16_record = _ingest(service, "xxe16.docx", _docx_with(shared_docs, {"word/document.xml": utf16}))
    assert utf16_record["status"] == "failed"

    answer = query(service.client, ALICE, "quarterly plan lighthouse", top_k=50)
    assert SECRET_TEXT not in str(answer)
    for chunk in answer["results"]:
        assert SECRET_TEXT not in chunk["text"]
    stored = service.runtime.settings.data_dir
    for path in stored.rglob("*"):
        if path.is_file() and path.stat().st_size < 50 * 2**20:
            assert SECRET_TEXT.encode() not in path.read_bytes(), path


def test_a_pdf_over_the_page_limit_fails_with_the_counts(service: Served, shared_docs: Path) -> None:
    record = _ingest(service, "two-pages.pdf", (shared_docs / "multi-column-2p.pdf").read_bytes())
    assert record["status"] == "failed" and "has 2 pages; the limit is 1" in str(record["failure_reason"])


def test_a_content_type_that_lies_changes_nothing(service: Served) -> None:
    response = service.client.post(
        "/v1/documents",
        headers=ALICE,
        files={"file": ("notes.pdf", b"Plain text about the harbour, sent as a PDF.", "application/pdf")},
    )
    assert response.status_code == 202
    record = wait_final(service.client, ALICE, response.json()["id"])
    assert (record["status"], record["file_type"]) == ("ready", "txt")


def test_a_ten_thousand_character_file_name_is_refused_and_nothing_is_stored(service: Served) -> None:
    name = "a" * 10_000 + ".txt"
    response = upload(service.client, ALICE, name, b"A document with a very long name.")
    print(f"\n10,000-character name: {response.status_code} {response.json()}")
    assert response.status_code == 400  # the part's header passes the multipart parser's limit
    long_but_legal = "b" * 1_000 + ".txt"
    record = _ingest(service, long_but_legal, b"A document with a long name.")
    assert record["status"] == "ready" and record["file_name"] == long_but_legal[:255]
    data_dir = service.runtime.settings.data_dir
    assert not [p for p in data_dir.rglob("*") if "aaaa" in p.name or "bbbb" in p.name]


def test_hundreds_of_multipart_parts_are_refused(service: Served) -> None:
    files = [("file", (f"f{i}.txt", b"x", "text/plain")) for i in range(300)]
    response = service.client.post("/v1/documents", headers=ALICE, files=files)
    fields = service.client.post(
        "/v1/documents",
        headers=ALICE,
        files={"file": ("one.txt", b"one")},
        data={f"field{i}": "v" for i in range(300)},
    )
    print(f"\n300 file parts: {response.status_code}; 300 fields: {fields.status_code}")
    assert response.status_code == 400 and fields.status_code == 400


def test_nothing_is_written_outside_the_data_directory(service: Served) -> None:
    root = service.runtime.settings.data_dir.parent
    outside = {p for p in root.rglob("*") if not p.is_relative_to(service.runtime.settings.data_dir)}
    assert outside == set(), outside


def test_a_parse_past_the_time_limit_fails_and_the_worker_goes_on(tmp_path: Path, shared_docs: Path) -> None:
    with serving(tmp_path / "data", parse_timeout_s=1) as served:
        started = time.monotonic()
        big = (shared_docs / "norwich-city.txt").read_bytes() * 6  # several seconds of parsing
        record = _ingest(served, "long.txt", big)
        print(f"time limit 1 s: {record['status']} after {time.monotonic() - started:.1f} s")
        assert record["status"] == "failed" and "took longer than the limit of 1 s" in str(record["failure_reason"])
        _still_ingests(served)


def test_a_document_that_crashes_its_parser_every_time_is_tried_three_times(tmp_path: Path, shared_docs: Path) -> None:
    """The parse child of one document is killed (as the kernel's OOM killer would) every time it starts. The
    poison is a long text, whose child lives for a second or more: long enough to be seen and killed."""
    with serving(tmp_path / "data", worker_concurrency=1) as served:
        registry = served.runtime.registry
        poison_text = (shared_docs / "norwich-city.txt").read_bytes()
        poison_id = upload(served.client, ALICE, "poison.txt", poison_text).json()["id"]
        behind_id = upload(served.client, ALICE, "behind.txt", b"The document queued behind it.").json()["id"]
        stop = threading.Event()
        kills: list[int] = []

        def poison_is_parsing() -> bool:
            # One document at a time (concurrency 1): while the one behind is processing, a child is its.
            poison, behind = registry.get(poison_id), registry.get(behind_id)
            return poison.status.value == "processing" and behind.status.value != "processing"

        def kill_poison_children() -> None:
            while not stop.is_set():
                if poison_is_parsing():
                    for child in _parse_children():
                        if child.pid not in kills and poison_is_parsing():
                            kills.append(child.pid)
                            os.kill(child.pid, signal.SIGKILL)
                time.sleep(0.002)

        killer = threading.Thread(target=kill_poison_children, daemon=True)
        killer.start()
        try:
            poison = wait_final(served.client, ALICE, poison_id, timeout_s=120)
            behind = wait_final(served.client, ALICE, behind_id, timeout_s=120)
        finally:
            stop.set()
            killer.join(5)
        print(f"\npoison: {poison['status']} after {poison['attempts']} attempts, {len(kills)} parse children killed")
        print(f"reason: {poison['failure_reason']}")
        assert poison["status"] == "failed" and poison["attempts"] == 3
        assert "crashed (killed by SIGKILL)" in str(poison["failure_reason"])
        assert behind["status"] == "ready"


def test_a_document_whose_worker_died_three_times_fails_at_the_fourth_delivery(tmp_path: Path) -> None:
    with serving(tmp_path / "data", worker_concurrency=1) as served:
        runtime = served.runtime
        document_id = register_document(runtime, b"A document whose worker keeps dying.", "doomed.txt")
        # What three workers killed mid-document leave in the registry: three started attempts, `processing`.
        for _ in range(3):
            runtime.registry.start_attempt(document_id)
        runtime.submit(document_id)  # the broker delivers the task a fourth time
        record = wait_final(served.client, ALICE, document_id)
        assert record["status"] == "failed" and "gave up after 3 attempts" in record["failure_reason"]
        assert "(last stage: parsing)" in record["failure_reason"]  # where the third worker stopped
        runtime.registry.mark_queued(document_id)  # POST .../retry: the limit counts from here
        runtime.submit(document_id)
        assert wait_final(served.client, ALICE, document_id)["status"] == "ready"


def _parse_children() -> list[psutil.Process]:
    """The sandbox's children: what the fork server (a child of this process) forked."""
    servers = [c for c in psutil.Process().children() if "forkserver" in " ".join(c.cmdline())]
    return [child for server in servers for child in server.children()]


# The sandbox, handed one real thing to do at a time.


def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    return len(block)


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def connect_to(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return "connected"


def die() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


_KEPT: list[bytearray] = []  # what a task leaves behind in its child


def keep(megabytes: int, note: str) -> int:
    """Leave `megabytes` and a note in this child for whatever task it runs next; its pid."""
    _KEPT.append(bytearray(megabytes * 2**20))
    os.environ["TESSERA_TEST_NOTE"] = note
    return os.getpid()


def look() -> tuple[int, str | None]:
    """This child's pid and the note an earlier task left in it, if any."""
    return os.getpid(), os.environ.get("TESSERA_TEST_NOTE")


def room_mib(limit_bytes: int) -> int:
    """How many MiB this child may still allocate under `limit_bytes` (its data segment against the cap)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmData:"):
            return (limit_bytes - int(line.split()[1]) * 1024) // 2**20
    raise AssertionError("no VmData")


def allocate_in(megabytes: int) -> tuple[int, int]:
    return os.getpid(), len(bytearray(megabytes * 2**20))


def loaded_modules(*names: str) -> dict[str, bool]:
    return {name: sys.modules.get(name) is not None for name in names}


def test_the_sandbox_children_have_the_parser_loaded_and_no_torch() -> None:
    # thinc would import torch when installed, as it is here; the fork server marks it missing first
    # (ingest/parse_server.py), and the shared documents of every type still parse (test_shared_docs)
    loaded = run_isolated(
        loaded_modules, "spacy", "thinc", "unstructured.partition.pdf", "torch", limits=LIMITS, what="listing modules"
    )
    assert loaded == {"spacy": True, "thinc": True, "unstructured.partition.pdf": True, "torch": False}


def test_the_sandbox_caps_memory_and_the_parent_is_untouched() -> None:
    limits = ChildLimits(memory_bytes=1024 * 2**20, seconds=60)
    assert run_isolated(allocate, 64, limits=limits, what="allocating") == 64 * 2**20
    rss_before = psutil.Process().memory_info().rss
    with pytest.raises(DocumentRejected, match="more than the memory limit of 1024 MiB"):
        run_isolated(allocate, 3 * 1024, limits=limits, what="allocating")
    assert psutil.Process().memory_info().rss - rss_before < 64 * 2**20


def test_the_sandbox_kills_a_child_past_its_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(DocumentRejected, match="took longer than the limit of 1 s"):
        run_isolated(sleep_for, 30, limits=ChildLimits(memory_bytes=LIMITS.memory_bytes, seconds=1), what="sleeping")
    assert time.monotonic() - started < 15
    assert _parse_children() == []


def test_the_sandbox_has_no_network() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert connect_to(port) == "connected"  # reachable from here
        with pytest.raises(ChildCrashed, match="Error"):
            run_isolated(connect_to, port, limits=LIMITS, what="connecting")


def test_the_sandbox_reports_a_crash_as_a_crash() -> None:
    with pytest.raises(ChildCrashed, match="killed by SIGSEGV"):
        run_isolated(die, limits=LIMITS, what="crashing")


def test_pooled_children_serve_one_owner_and_never_another() -> None:
    """What one owner's document leaves in a child (here a note in its environment) reaches that owner's next
    documents only: another owner, or the same name in another tenant, gets a child of its own."""
    pool = ChildPool()
    try:
        first = pool.run("acme\0alice", keep, 1, "left by alice", limits=LIMITS, what="parsing")
        assert pool.run("acme\0alice", look, limits=LIMITS, what="parsing") == (first, "left by alice")
        for other in ("acme\0bob", "globex\0alice"):
            pid, note = pool.run(other, look, limits=LIMITS, what="parsing")
            assert pid != first and note is None
        assert pool.started == 3
        # Two of alice's documents at once get a child each; both go back to wait for her next ones.
        with ThreadPoolExecutor(max_workers=2) as threads:
            pids = set(
                threads.map(lambda n: pool.run("acme\0alice", sleep_then_look, n, limits=LIMITS, what="p"), [0, 1])
            )
        assert len(pids) == 2 and first in pids and pool.started == 4
    finally:
        pool.close()
    assert _parse_children() == []


def sleep_then_look(_: int) -> int:
    time.sleep(0.5)
    return os.getpid()


def test_a_pooled_child_ends_after_a_limit_a_crash_or_its_uses() -> None:
    pool = ChildPool(max_uses=2)
    quick = ChildLimits(memory_bytes=LIMITS.memory_bytes, seconds=4)
    try:
        first = pool.run("k", keep, 1, "x", limits=quick, what="parsing")
        with pytest.raises(DocumentRejected, match="took longer than the limit of 4 s"):
            pool.run("k", sleep_for, 30, limits=quick, what="sleeping")
        after_timeout, _ = pool.run("k", look, limits=quick, what="parsing")
        assert after_timeout != first
        with pytest.raises(ChildCrashed, match="killed by SIGSEGV"):
            pool.run("k", die, limits=quick, what="crashing")
        after_crash, _ = pool.run("k", look, limits=quick, what="parsing")
        assert after_crash not in (first, after_timeout)
        assert pool.run("k", look, limits=quick, what="parsing")[0] == after_crash  # its second use
        assert pool.run("k", look, limits=quick, what="parsing")[0] != after_crash  # max_uses=2: a new one
    finally:
        pool.close()


def test_a_document_gets_a_fresh_childs_memory_before_it_is_refused() -> None:
    """A child that kept memory for an earlier document may lack room for the next: that one runs again in a
    fresh child, so every document is held to the same cap; one that needs more than the cap is refused."""
    pool = ChildPool()
    try:
        fresh_room = pool.run("k", room_mib, LIMITS.memory_bytes, limits=LIMITS, what="measuring")
        child = pool.run("k", keep, fresh_room // 10, "kept", limits=LIMITS, what="parsing")  # still reused
        assert pool.run("k", look, limits=LIMITS, what="parsing") == (child, "kept")
        pid, size = pool.run("k", allocate_in, fresh_room - 100, limits=LIMITS, what="allocating")
        assert size == (fresh_room - 100) * 2**20 and pid != child  # too big beside what was kept
        with pytest.raises(DocumentRejected, match="more than the memory limit"):
            pool.run("k", allocate_in, fresh_room + 100, limits=LIMITS, what="allocating")
        # A child that kept more than a quarter of its room is not given the next document.
        heavy = pool.run("k2", keep, fresh_room // 2, "heavy", limits=LIMITS, what="parsing")
        assert pool.run("k2", look, limits=LIMITS, what="parsing")[0] != heavy
    finally:
        pool.close()
