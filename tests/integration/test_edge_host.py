"""Qdrant Edge hosted in a child process (retrieval/edge_host.py): the server's embedded index. Every answer is
checked against an exact filtered search computed here, per principal, for blocking and awaiting callers alike; a
child that dies fails its waiting callers and is replaced; each event loop's socket is its own and is closed when
the loop has ended; closing frees the directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.access import Principal
from core.errors import AccessError, Unavailable
from core.index import SearchMode
from core.records import Chunk, ChunkPoint, SearchHit
from retrieval.edge_host import EdgeHost, _frame, _LoopChannel
from retrieval.edge_index import EdgeIndex

pytestmark = pytest.mark.integration

DIM = 16
RNG = np.random.default_rng(11)
GROUPS = ("red", "green", "blue")
PRINCIPALS = [
    Principal.of("acme", "ada", ["red"]),
    Principal.of("acme", "bo", ["green", "blue"]),
    Principal.of("acme", "cy", list(GROUPS)),
    Principal.of("acme", "dee", []),  # only documents shared with her by name
    Principal.of("globex", "ada", ["red"]),  # same name and group, another tenant
]


def _unit(v: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in v / np.linalg.norm(v))


def _points() -> list[ChunkPoint]:
    points = []
    for i in range(60):
        tenant = "globex" if i % 5 == 0 else "acme"
        acl = (f"group:{GROUPS[i % 3]}",) + (("user:dee",) if i % 7 == 0 else ())
        chunk = Chunk(0, f"passage {i} about {GROUPS[i % 3]} things", None, None, 5)
        points.append(ChunkPoint(tenant, f"doc-{i}", 1, f"{i}.txt", acl, chunk, _unit(RNG.normal(size=DIM))))
    return points


POINTS = _points()
WRITTEN = {p.document_id: p for p in POINTS}


def _exact(principal: Principal, vector: tuple[float, ...], limit: int) -> list[str]:
    """The ids of the `limit` nearest chunks the principal may read: brute force over the points written."""
    readable = [p for p in POINTS if principal.may_read(p.tenant, p.acl_tokens)]
    readable.sort(key=lambda p: -float(np.dot(p.vector, vector)))
    return [p.document_id for p in readable[:limit]]


def _check(principal: Principal, vector: tuple[float, ...], hits: list[SearchHit], limit: int = 5) -> None:
    assert [hit.document_id for hit in hits] == _exact(principal, vector, limit)
    for hit in hits:
        written = WRITTEN[hit.document_id]
        assert written.tenant == principal.tenant and principal.may_read(written.tenant, written.acl_tokens)


def _fill(index: EdgeHost | EdgeIndex) -> None:
    index.ensure_ready(DIM)
    index.upsert(POINTS)
    for point in POINTS:
        index.publish(point.tenant, point.document_id, 1, 1)


@pytest.fixture()
def host(tmp_path: Path) -> Iterator[EdgeHost]:
    host = EdgeHost(tmp_path / "edge")
    _fill(host)
    yield host
    host.close()


def _child_pid(host: EdgeHost) -> int:
    child = host._child
    assert child is not None
    return child.process.pid


def test_blocking_and_awaiting_callers_get_the_exact_filtered_answers(host: EdgeHost) -> None:
    queries = [POINTS[i].vector for i in (1, 2, 3, 10, 33)]
    for principal in PRINCIPALS:
        for vector in queries:
            _check(principal, vector, host.search(principal, vector, 5))

    async def concurrently() -> list[list[SearchHit]]:
        # Many searches in flight on one socket at once: each answer must reach its own caller.
        calls = [host.search_async(p, v, 5) for p in PRINCIPALS for v in queries]
        return list(await asyncio.wait_for(asyncio.gather(*calls), timeout=60))

    answers = asyncio.run(concurrently())
    asked = [(p, v) for p in PRINCIPALS for v in queries]
    assert len(answers) == len(asked)
    for (principal, vector), hits in zip(asked, answers, strict=True):
        _check(principal, vector, hits)
    # Sparse search goes through the child too, filtered the same way.
    for principal in PRINCIPALS:
        hits = host.search(principal, [], 10, mode=SearchMode.SPARSE, text="green things")
        readable = [p for p in POINTS if principal.may_read(p.tenant, p.acl_tokens)]
        assert len(hits) == min(10, len(readable))  # every chunk says "things"
        for hit in hits:
            written = WRITTEN[hit.document_id]
            assert principal.may_read(written.tenant, written.acl_tokens)


def test_writes_from_threads_and_searches_from_the_loop_interleave_correctly(host: EdgeHost) -> None:
    """Threads re-share documents with 'dee' while the loop searches as every principal: the others, whose reads
    the writes do not change, get their exact answers each time (an answer routed to the wrong caller would not
    be); dee gets only what she may read at some moment, and once the writes are done exactly the new set."""
    shared_later = [p for p in POINTS if p.tenant == "acme" and "user:dee" not in p.acl_tokens][:12]
    dee, others = PRINCIPALS[3], [p for p in PRINCIPALS if p is not PRINCIPALS[3]]
    allowed = {p.document_id for p in POINTS if dee.may_read(p.tenant, p.acl_tokens)}
    ever_allowed = allowed | {p.document_id for p in shared_later}
    queries = [p.vector for p in POINTS[:4]]

    def share(points: list[ChunkPoint]) -> None:
        for point in points:
            host.set_acl(point.tenant, point.document_id, [*point.acl_tokens, "user:dee"])
            time.sleep(0.01)  # spread over the searches

    writers = [threading.Thread(target=share, args=(shared_later[i::3],)) for i in range(3)]

    async def search_while_writing() -> tuple[int, int]:
        for writer in writers:
            writer.start()
        rounds = dee_answers = 0
        while any(writer.is_alive() for writer in writers):
            asked = [(principal, vector) for principal in [dee, *others] for vector in queries]
            calls = [host.search_async(principal, vector, 5) for principal, vector in asked]
            answers = await asyncio.wait_for(asyncio.gather(*calls), timeout=60)
            for (principal, vector), hits in zip(asked, answers, strict=True):
                if principal is dee:
                    assert {hit.document_id for hit in hits} <= ever_allowed
                    dee_answers += 1
                else:
                    _check(principal, vector, hits)
            rounds += 1
        return rounds, dee_answers

    rounds, dee_answers = asyncio.run(search_while_writing())
    assert rounds >= 1 and dee_answers >= len(queries)  # searches ran while the writes did
    for writer in writers:
        writer.join()
    final = {hit.document_id for hit in host.search(dee, POINTS[0].vector, 60)}
    assert final == ever_allowed


def test_errors_raised_in_the_child_arrive_as_the_same_exceptions(tmp_path: Path) -> None:
    host = EdgeHost(tmp_path / "edge")
    try:
        with pytest.raises(Unavailable, match="no collection yet"):
            host.search(PRINCIPALS[0], POINTS[0].vector, 5)
        _fill(host)
        # A principal altered after it was checked travels unchecked (pickle does not run __post_init__): the
        # child's filter builder refuses it, and the refusal reaches the caller as the same AccessError.
        forged = Principal.of("acme", "ada", ["red"])
        object.__setattr__(forged, "subject", "")
        with pytest.raises(AccessError, match="user must be a non-empty string"):
            host.search(forged, POINTS[0].vector, 5)
        with pytest.raises(AccessError, match="user must be a non-empty string"):
            asyncio.run(host.search_async(forged, POINTS[0].vector, 5))
        with pytest.raises(AccessError, match="authenticated principal"):
            host.search(None, POINTS[0].vector, 5)  # type: ignore[arg-type]
        _check(PRINCIPALS[0], POINTS[0].vector, host.search(PRINCIPALS[0], POINTS[0].vector, 5))  # still serving
    finally:
        host.close()


def test_a_child_that_dies_fails_its_waiting_callers_and_the_next_call_starts_another(host: EdgeHost) -> None:
    principal, vector = PRINCIPALS[2], POINTS[4].vector
    first = _child_pid(host)

    async def die_while_waiting() -> list[BaseException | list[SearchHit]]:
        await host.search_async(principal, vector, 5)  # the loop's socket is attached
        os.kill(first, signal.SIGSTOP)  # the child stops answering, so these wait
        calls = [asyncio.ensure_future(host.search_async(principal, vector, 5)) for _ in range(4)]
        await asyncio.sleep(0.2)
        os.kill(first, signal.SIGKILL)
        return list(await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=60))

    outcomes = asyncio.run(die_while_waiting())
    assert outcomes and all(isinstance(o, Unavailable) and "ended" in str(o) for o in outcomes), outcomes
    # Blocking and awaiting callers alike are served again, by a new child on the same data.
    _check(principal, vector, host.search(principal, vector, 5))
    assert _child_pid(host) != first
    _check(principal, vector, asyncio.run(host.search_async(principal, vector, 5)))


def test_a_caller_cancelled_after_its_request_was_sent_leaves_the_others_their_own_answers(host: EdgeHost) -> None:
    reader = PRINCIPALS[2]

    async def cancel_one() -> list[list[SearchHit]]:
        await host.search_async(reader, POINTS[0].vector, 5)  # the loop's socket is attached
        pid = _child_pid(host)
        os.kill(pid, signal.SIGSTOP)  # the requests are written but not answered yet
        try:
            calls = [asyncio.ensure_future(host.search_async(reader, p.vector, 5)) for p in POINTS[:6]]
            await asyncio.sleep(0.1)
            assert not any(call.done() for call in calls)
            calls[2].cancel()
        finally:
            os.kill(pid, signal.SIGCONT)
        kept = [call for i, call in enumerate(calls) if i != 2]
        again = await host.search_async(reader, POINTS[7].vector, 5)  # asked after the cancelled one
        return [*(await asyncio.wait_for(asyncio.gather(*kept), timeout=60)), again]

    answers = asyncio.run(cancel_one())
    vectors = [p.vector for i, p in enumerate(POINTS[:6]) if i != 2] + [POINTS[7].vector]
    for vector, hits in zip(vectors, answers, strict=True):
        _check(reader, vector, hits)


def test_a_loop_that_ends_with_answers_on_their_way_costs_the_others_nothing(host: EdgeHost) -> None:
    """A loop that ends with many searches unanswered leaves the child their answers to write to a socket nobody
    reads: the child keeps serving blocking callers and the next loop, with the same process."""
    reader, vector = PRINCIPALS[2], POINTS[5].vector
    pid = _child_pid(host)

    async def leave_many_unanswered() -> list[asyncio.Future[list[SearchHit]]]:
        await host.search_async(reader, vector, 5)
        # ~1 MB of answers, more than a socket's buffer; the loop ends before it reads them.
        unanswered = [asyncio.ensure_future(host.search_async(reader, vector, 50)) for _ in range(400)]
        await asyncio.sleep(0)
        return unanswered

    with contextlib.suppress(Exception):
        asyncio.run(leave_many_unanswered())
    # A child stuck writing to the ended loop would never answer: bounded waits, so that fails rather than hangs.
    _check(reader, vector, _within(30, host.search, reader, vector, 5))
    _check(reader, vector, asyncio.run(asyncio.wait_for(host.search_async(reader, vector, 5), timeout=30)))
    assert _child_pid(host) == pid


def _within(seconds: float, call: Any, *args: Any) -> Any:
    """call(*args) on a daemon thread; its result, or a failure if it takes longer than `seconds`."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(call(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"no answer in {seconds} s"
    return outcome[0]


def test_close_from_another_thread_while_the_loop_waits_ends_every_caller(host: EdgeHost) -> None:
    reader, vector = PRINCIPALS[2], POINTS[6].vector
    child = host._child
    assert child is not None

    async def searches_while_closing() -> list[BaseException | list[SearchHit]]:
        await host.search_async(reader, vector, 5)
        calls = [asyncio.ensure_future(host.search_async(reader, vector, 5)) for _ in range(32)]
        closing = threading.Thread(target=host.close)
        closing.start()
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=60)
        await asyncio.to_thread(closing.join, 60)
        return list(outcomes)

    for outcome in asyncio.run(searches_while_closing()):
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, Unavailable), outcome
        else:
            _check(reader, vector, outcome)
    assert child.process.returncode == 0


def test_each_event_loop_gets_a_socket_and_one_that_ended_has_it_closed(host: EdgeHost) -> None:
    principal, vector = PRINCIPALS[0], POINTS[3].vector

    async def search() -> tuple[asyncio.AbstractEventLoop, list[SearchHit]]:
        return asyncio.get_running_loop(), await host.search_async(principal, vector, 5)

    first_loop, hits = asyncio.run(search())
    _check(principal, vector, hits)
    first_socket = host._channels[first_loop].result().sock
    assert first_socket.fileno() >= 0
    second_loop, hits = asyncio.run(search())
    _check(principal, vector, hits)
    assert first_loop not in host._channels and second_loop in host._channels
    assert first_socket.fileno() == -1  # closed by the host once its loop had ended


def test_close_ends_the_child_and_frees_the_directory_with_every_write_in_it(tmp_path: Path) -> None:
    host = EdgeHost(tmp_path / "edge")
    _fill(host)
    child = host._child
    assert child is not None
    host.close()
    assert child.process.returncode == 0  # it closed the shard and exited on its own
    with pytest.raises(Unavailable, match="closed"):
        host.search(PRINCIPALS[0], POINTS[0].vector, 5)
    direct = EdgeIndex(tmp_path / "edge")  # the directory is free: this process can open it itself
    try:
        for principal in PRINCIPALS:
            _check(principal, POINTS[9].vector, direct.search(principal, POINTS[9].vector, 5))
    finally:
        direct.close()


def test_the_child_ignores_a_terminals_interrupt_and_ends_when_its_server_dies(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: the child keeps serving for the server's shutdown. A server that
    is killed closes the child's socket, and the child exits and frees the directory (no orphan holds it)."""
    path = tmp_path / "edge"
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, str(path)], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
    )
    with server:
        assert server.stdout is not None
        child_pid = int(server.stdout.readline())
        os.kill(child_pid, signal.SIGINT)
        time.sleep(0.5)
        assert _alive(child_pid)
        server.kill()
        server.wait()
        deadline = time.monotonic() + 30
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid)
    direct = EdgeIndex(path)
    try:
        _check(PRINCIPALS[1], POINTS[5].vector, direct.search(PRINCIPALS[1], POINTS[5].vector, 5))
    finally:
        direct.close()


_SERVER_SCRIPT = """
import sys
from pathlib import Path
from typing import Any
from tests.integration.test_edge_host import PRINCIPALS, POINTS, _fill
from retrieval.edge_host import EdgeHost, _frame, _LoopChannel
host = EdgeHost(Path(sys.argv[1]))
_fill(host)
host.search(PRINCIPALS[1], POINTS[5].vector, 5)
print(host._child.process.pid, flush=True)
sys.stdin.read()  # until killed
"""


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, reaped by nobody here since its parent was killed, counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


class _AnsweringPeer:
    """Stands in for the child's process object in the framing test below (only its liveness is read)."""

    alive = True

    def describe_exit(self) -> str:
        return "still running"


def _requests(peer: socket.socket, count: int) -> list[tuple[Any, ...]]:
    """Read `count` request frames from the child's end of a socket pair."""
    data = b""
    requests: list[tuple[Any, ...]] = []
    while len(requests) < count:
        data += peer.recv(1 << 16)
        while len(data) >= 8 and len(data) >= 8 + int.from_bytes(data[:8], "big"):
            size = int.from_bytes(data[:8], "big")
            requests.append(pickle.loads(data[8 : 8 + size]))
            data = data[8 + size :]
    return requests


def _searches_against_a_played_child(
    count: int, play: Callable[[socket.socket, list[tuple[Any, ...]], list[asyncio.Future[Any]]], None]
) -> list[Any]:
    """`count` searches on a loop's channel whose other end is a socket `play` answers as the child would, given
    the requests as read and the callers' futures; each caller's outcome (an answer or an exception)."""

    async def searches() -> list[Any]:
        ours, theirs = socket.socketpair()
        with theirs:
            channel = _LoopChannel(_AnsweringPeer(), asyncio.get_running_loop(), ours)  # type: ignore[arg-type]
            calls = [asyncio.ensure_future(channel.call("search", (i,), {})) for i in range(count)]
            await asyncio.sleep(0.05)
            play(theirs, _requests(theirs, count), calls)
            outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=10)
            channel.close()
            return list(outcomes)

    return asyncio.run(searches())


def test_answers_that_arrive_together_reach_their_callers_in_order_past_a_cancelled_one() -> None:
    """The framing alone, the child played here: three answers in one read, the middle caller cancelled. Its
    answer is dropped, and the third still reaches the third caller."""

    def cancel_the_second_then_answer_all(
        child: socket.socket, asked: list[tuple[Any, ...]], calls: list[asyncio.Future[Any]]
    ) -> None:
        assert [request[1:3] for request in asked] == [("search", (i,)) for i in range(3)]
        calls[1].cancel()
        child.sendall(b"".join(_frame((request[0], True, f"answer {i}")) for i, request in enumerate(asked)))

    first, second, third = _searches_against_a_played_child(3, cancel_the_second_then_answer_all)
    assert (first, third) == ("answer 0", "answer 2")
    assert isinstance(second, asyncio.CancelledError)


def test_an_answer_naming_another_request_is_never_handed_to_a_caller() -> None:
    """Should answers ever fall out of step (a request the child skipped), every waiting caller gets Unavailable,
    never the answer to someone else's search."""

    def skip_the_first(child: socket.socket, asked: list[tuple[Any, ...]], _: list[asyncio.Future[Any]]) -> None:
        child.sendall(_frame((asked[1][0], True, "the second caller's hits")))

    outcomes = _searches_against_a_played_child(2, skip_the_first)
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes


def test_an_answer_that_cannot_be_read_fails_its_own_caller_only() -> None:
    def garble_the_first(child: socket.socket, asked: list[tuple[Any, ...]], _: list[asyncio.Future[Any]]) -> None:
        unreadable = b"not a pickle"
        child.sendall(len(unreadable).to_bytes(8, "big") + unreadable + _frame((asked[1][0], True, "second")))

    first, second = _searches_against_a_played_child(2, garble_the_first)
    assert isinstance(first, Unavailable) and "cannot be read" in str(first)
    assert second == "second"


def _refuse_to_unpickle() -> None:
    raise ValueError("this object does not unpickle in the child")


class _ReadableHereOnly(float):
    """Pickles in the server; unpickling it (in the child) raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_unpickle, ())


def test_a_request_the_child_cannot_read_fails_its_own_caller_and_the_child_serves_on(host: EdgeHost) -> None:
    reader, vector = PRINCIPALS[2], POINTS[8].vector
    pid = _child_pid(host)
    unreadable = [_ReadableHereOnly(x) for x in vector]
    with pytest.raises(Unavailable, match="could not read a request"):
        host.search(reader, unreadable, 5)

    async def unreadable_among_others() -> list[Any]:
        calls = [host.search_async(reader, vector, 5), host.search_async(reader, unreadable, 5)]
        calls.append(host.search_async(reader, vector, 5))
        return list(await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=60))

    before, failed, after = asyncio.run(unreadable_among_others())
    assert isinstance(failed, Unavailable) and "could not read a request" in str(failed)
    _check(reader, vector, before)
    _check(reader, vector, after)
    assert _child_pid(host) == pid


def test_a_child_that_died_while_idle_is_replaced_before_the_next_call_fails(host: EdgeHost) -> None:
    reader, vector = PRINCIPALS[1], POINTS[9].vector
    child = host._child
    assert child is not None
    child.process.kill()
    child.process.wait()
    _check(reader, vector, host.search(reader, vector, 5))  # no caller pays for noticing
    assert _child_pid(host) != child.process.pid
    replaced = host._child
    assert replaced is not None
    replaced.process.kill()
    replaced.process.wait()
    _check(reader, vector, asyncio.run(asyncio.wait_for(host.search_async(reader, vector, 5), timeout=60)))
