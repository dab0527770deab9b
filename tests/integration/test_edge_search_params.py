"""Qdrant Edge's dense search parameters follow the share of the shard a principal may read (retrieval/edge_index.py),
and the share estimate is kept for a second per tenant and ACL: it picks parameters, never results, so a write is
visible to the very next search whatever estimate is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import retrieval.edge_index as edge_index
from core.access import Principal
from core.records import Chunk, ChunkPoint
from retrieval.edge_index import EdgeIndex

pytestmark = pytest.mark.integration

DIM = 16
RNG = np.random.default_rng(7)
# group -> chunks, in one tenant of 100 chunks: 5 %, 25 % and the remaining 70 %
GROUPS = {"few": 5, "quarter": 25, "rest": 70}
FEW = Principal.of("acme", "una", ["few"])
QUARTER = Principal.of("acme", "quinn", ["quarter"])
EVERYONE = Principal.of("acme", "ada", list(GROUPS))
QUARTER_ELSEWHERE = Principal.of("globex", "quinn", ["quarter"])


def _vector() -> tuple[float, ...]:
    v = RNG.normal(size=DIM)
    return tuple(float(x) for x in v / np.linalg.norm(v))


def _points(group: str, count: int, *, tenant: str = "acme", start: int = 0) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            tenant,
            f"{tenant}-{group}-{i}",
            1,
            f"{group}-{i}.txt",
            (f"group:{group}",),
            Chunk(0, "text", None, None, 1),
            _vector(),
        )
        for i in range(start, start + count)
    ]


def _add(index: EdgeIndex, points: list[ChunkPoint]) -> None:
    index.upsert(points)
    for point in points:
        index.publish(point.tenant, point.document_id, 1, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(edge_index, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture()
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    index = EdgeIndex(tmp_path / "edge")
    index.ensure_ready(DIM)
    for group, count in GROUPS.items():
        _add(index, _points(group, count))
    _add(index, _points("quarter", 3, tenant="globex"))
    yield index
    index.close()


def _params(index: EdgeIndex, principal: Principal) -> tuple[int | None, bool]:
    params = index._dense_params(principal, edge_index.to_edge_filter(edge_index.acl_filter(principal)))
    if params is None:
        return (None, False)
    return (params.hnsw_ef, bool(params.acorn and params.acorn.enable))


def test_parameters_follow_the_share_each_principal_reads(index: EdgeIndex, clock: Clock) -> None:
    # One after another within the second: each ACL gets its own estimate, not the previous principal's.
    assert _params(index, FEW) == (None, False)  # 5 %: the default search
    assert _params(index, QUARTER) == (edge_index._ACORN_EF, True)  # 25 %: ACORN
    assert _params(index, EVERYONE) == (edge_index._WIDE_EF, False)  # 100 %: a wider beam
    # The same group in another tenant is another share (3 of 103 chunks), not acme's quarter.
    assert _params(index, QUARTER_ELSEWHERE) == (None, False)


def test_the_estimate_is_kept_for_a_second_then_made_again(
    index: EdgeIndex, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimates: list[object] = []
    estimate = EdgeIndex._params_for_share

    def counted(self: EdgeIndex, selection: object) -> object:
        estimates.append(selection)
        return estimate(self, selection)  # type: ignore[arg-type]

    monkeypatch.setattr(EdgeIndex, "_params_for_share", counted)
    assert _params(index, FEW) == (None, False)
    assert _params(index, FEW) == (None, False)
    assert len(estimates) == 1
    # Within the second the kept estimate stands, although the group has grown from 5 % to 30 % of the tenant.
    _add(index, _points("few", 40, start=5))
    clock.now += edge_index._SHARE_ESTIMATE_TTL_S / 2
    assert _params(index, FEW) == (None, False)
    assert len(estimates) == 1
    clock.now += edge_index._SHARE_ESTIMATE_TTL_S
    assert _params(index, FEW) == (edge_index._ACORN_EF, True)
    assert len(estimates) == 2


def test_a_kept_estimate_never_hides_or_shows_a_chunk(index: EdgeIndex, clock: Clock) -> None:
    query = list(_vector())
    before = index.search(QUARTER, query, 100)
    assert {hit.document_id for hit in before} == {f"acme-quarter-{i}" for i in range(25)}
    # Written within the second of the kept estimate: the next search finds the new chunks and the narrowed ACL.
    _add(index, _points("quarter", 10, start=25))
    index.set_acl("acme", "acme-quarter-0", ["group:rest"])
    after = index.search(QUARTER, query, 100)
    assert {hit.document_id for hit in after} == {f"acme-quarter-{i}" for i in range(1, 35)}
    assert {hit.document_id for hit in index.search(FEW, query, 100)} == {f"acme-few-{i}" for i in range(5)}
