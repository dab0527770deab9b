"""Bad input gets a clear answer, and nothing is lost or written where it should not be."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import pytest

from tests.helpers import auth, upload, wait_final
from tests.integration.conftest import Served, serve

pytestmark = pytest.mark.integration

ALICE = auth("alice", groups=["eng"])
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("limits"), max_upload_mb=1)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.bin", b"\x00\x01\x02" * 100)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("picture.png", PNG),
        ("archive.zip", _zip()),
        ("tool.exe", b"MZ\x90\x00" + b"\x00" * 200),
        ("tool.txt", b"MZ\x90\x00" + b"\x00" * 200),  # binary under a text file's name
    ],
)
def test_unsupported_types_get_415_naming_the_supported_ones(small_limit: Served, name: str, content: bytes) -> None:
    response = upload(small_limit.client, ALICE, name, content)
    assert response.status_code == 415
    assert (
        "supported types: csv, docx, eml, epub, html, md, odt, pdf, pptx, rtf, tsv, txt, xlsx"
        in response.json()["detail"]
    )


def test_type_comes_from_the_bytes_not_the_name(small_limit: Served) -> None:
    assert upload(small_limit.client, ALICE, "innocent.txt", PNG).status_code == 415


def test_over_the_size_limit_is_413(small_limit: Served) -> None:
    body = b"word " * (300 * 1024)  # 1.5 MB of text against a 1 MB limit
    assert upload(small_limit.client, ALICE, "big.txt", body).status_code == 413
    huge = b"word " * (2 * 1024 * 1024)  # past the limit plus the form allowance: refused while streaming
    assert upload(small_limit.client, ALICE, "huge.txt", huge).status_code == 413
    blobs = small_limit.runtime.settings.blob_dir
    assert not blobs.exists() or not any(blobs.iterdir())


@pytest.mark.parametrize(
    "acl",
    ["not json", json.dumps({"users": "alice"}), json.dumps({"groups": [""]}), json.dumps({"roles": ["admin"]}), "[]"],
)
def test_a_malformed_acl_is_400(small_limit: Served, acl: str) -> None:
    response = small_limit.client.post(
        "/v1/documents", headers=ALICE, files={"file": ("a.txt", b"some text")}, data={"acl": acl}
    )
    assert response.status_code == 400 and "acl" in response.json()["detail"]


def test_a_request_without_a_file_is_400(small_limit: Served) -> None:
    response = small_limit.client.post("/v1/documents", headers=ALICE, data={"acl": "{}"})
    assert response.status_code == 400


def test_an_upload_without_a_token_is_401_and_stores_nothing(small_limit: Served) -> None:
    response = small_limit.client.post("/v1/documents", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 401


def test_file_names_never_become_paths(small_limit: Served) -> None:
    response = upload(small_limit.client, ALICE, "../../etc/evil\x00.txt", b"Path traversal attempt text.")
    assert response.status_code == 202
    record = wait_final(small_limit.client, ALICE, response.json()["id"])
    # The directories are dropped; httpx sends the NUL percent-encoded, and it stays inert text.
    assert record["file_name"] == "evil%00.txt" and record["status"] == "ready"
    data_dir = small_limit.runtime.settings.data_dir
    assert not (data_dir.parent / "etc").exists()


def test_empty_and_whitespace_files_end_failed_with_a_reason(small_limit: Served) -> None:
    for name, content in (("empty.txt", b""), ("blank.md", b" \n\t\n")):
        response = upload(small_limit.client, ALICE, name, content)
        assert response.status_code == 202, response.text
        record = wait_final(small_limit.client, ALICE, response.json()["id"])
        assert record["status"] == "failed" and "no extractable text" in record["failure_reason"]
    # The worker goes on with the next document.
    after = upload(small_limit.client, ALICE, "after.txt", b"The worker is still alive after bad input.")
    assert wait_final(small_limit.client, ALICE, after.json()["id"])["status"] == "ready"


def _broken_docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        archive.writestr("word/document.xml", "<w:document><unclosed>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("truncated.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog", "PDF"),
        ("broken.docx", _broken_docx(), "could not parse the file as docx"),
    ],
)
def test_malformed_documents_fail_with_a_reason_and_the_worker_goes_on(
    small_limit: Served, name: str, content: bytes, reason: str
) -> None:
    response = upload(small_limit.client, ALICE, name, content)
    assert response.status_code == 202, response.text
    record = wait_final(small_limit.client, ALICE, response.json()["id"])
    assert record["status"] == "failed" and reason in record["failure_reason"], record
    after = upload(small_limit.client, ALICE, "next.txt", b"The next document still gets ingested.")
    assert wait_final(small_limit.client, ALICE, after.json()["id"])["status"] == "ready"


def test_a_json_body_past_one_mib_is_refused_before_it_is_read_whole(small_limit: Served) -> None:
    big = {"query": "harbour", "padding": "x" * (2 * 1024 * 1024)}
    declared = small_limit.client.post("/v1/query", headers=ALICE, json=big)
    assert declared.status_code == 413 and "larger than the limit" in declared.json()["detail"]
    unauthenticated = small_limit.client.post("/v1/query", json=big)
    assert unauthenticated.status_code == 413  # refused before anything else reads it

    def chunks() -> Iterator[bytes]:  # no Content-Length: bounded as it streams in
        yield b'{"query": "harbour", "padding": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    streamed = small_limit.client.post(
        "/v1/query", headers={**ALICE, "Content-Type": "application/json"}, content=chunks()
    )
    assert streamed.status_code == 413, streamed.text
    assert small_limit.client.post("/v1/query", headers=ALICE, json={"query": "harbour"}).status_code == 200
