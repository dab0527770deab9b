"""Qdrant Edge in a child process of its own: the embedded default's VectorIndex.

qdrant-edge-py holds the GIL through every call (a search, an upsert, the minutes of an HNSW build), so in the
server's process each search stopped every other request's Python for its 1-2 ms: under 16 clients at 100k chunks
the engine's calls were 47 % of the samples in which the GIL was held (py-spy). Here the shard lives in a child,
with its own GIL, and the server's threads and event loop wait for its answers on a socket, holding nothing.
16 clients at 100k chunks, alternated runs: 276/246 against 208/185 queries/s (docs/performance.md).

The child serves one request at a time, in the order they arrive, from any of its sockets: one for blocking
callers (ingestion threads, the CLI), taken in turn under a lock, and one per event loop that awaits searches
(`search_async`), read by the loop itself so that an answer costs no hop between threads. A loop's socket is made
when the loop first asks and handed to the child over the blocking one (SCM_RIGHTS); the child writes to it without
blocking, so a loop that stalls or has ended holds up nobody else, and the host closes it once the loop has ended.
Every request carries an id and its answer names it: an answer that names another request fails every caller
waiting on that socket with Unavailable, never reaching the wrong one; an answer that cannot be read fails its own
caller only.

The child ends with the server: when the server's end of the blocking socket closes (a clean close, or the server's
death, which closes every descriptor it held), it finishes the request in hand, closes the shard and exits. Not
PR_SET_PDEATHSIG, which fires when the *thread* that started the child ends, and a restart may come from any pool
thread. It ignores SIGINT, which a terminal sends to the server's whole process group: the server's shutdown still
needs it. If it dies first, what was waiting for it fails with Unavailable and the next call starts a new one on
the same directory (Edge's write-ahead log keeps every write it acknowledged).

Requests and answers are pickles between two processes of this program, never from outside.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from core.access import Principal
from core.errors import Unavailable
from core.index import SearchMode
from core.records import ChunkPoint, SearchHit, StoredChunk, StoredVector

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!Q")  # each frame: its length, then a pickle
_ATTACH = "attach"  # a request that carries a new socket for the child to serve
_STOP_TIMEOUT_S = 30.0  # close flushes the shard
# What a parent may ask of the child's EdgeIndex: the VectorIndex methods, nothing else.
_METHODS = frozenset(
    {
        "ensure_ready",
        "upsert",
        "publish",
        "set_acl",
        "delete_document",
        "delete_version",
        "count_document",
        "chunks",
        "check",
        "search",
        "optimize",
        "vectors",
    }
)


def _frame(payload: Any) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _complete_frames(buffer: bytearray) -> Iterator[bytes]:
    """Each complete frame's pickle in `buffer`, in order, removed from it as it is taken; a partial one stays."""
    while len(buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer)
        end = _HEADER.size + size
        if len(buffer) < end:
            return
        data = bytes(buffer[_HEADER.size : end])
        del buffer[:end]
        yield data


_ids = itertools.count(1)  # request ids, unique in this process: an answer must name the request it answers


class _OutOfStep(Exception):
    """An answer that names another request than the one it should answer."""


def _unpickled(data: bytes | bytearray) -> tuple[int | None, bool, Any]:
    """An answer frame's (request id, succeeded, value). One that does not unpickle is still one answer, the next
    in order: (None, False, Unavailable), and the caller it belongs to gets the Unavailable."""
    try:
        answer: tuple[int, bool, Any] = pickle.loads(data)
    except Exception as exc:
        return None, False, Unavailable(f"the vector index sent an answer that cannot be read: {exc!r}")
    return answer


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError
        chunks += chunk
    return bytes(chunks)


class _Child:
    """One child process and the blocking socket to it."""

    def __init__(self, path: Path) -> None:
        parent_end, child_end = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])  # where `retrieval` is importable from
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "retrieval.edge_host", str(child_end.fileno()), str(path)],
                pass_fds=[child_end.fileno()],
                env=environment,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.sock = parent_end  # blocking, with no timeout: a call may be an HNSW build of minutes
        self.lock = threading.Lock()  # one blocking request on the socket at a time
        self.alive = True

    def running(self) -> bool:
        """Still usable: no error on its socket, and the process has not exited (a child that died while idle
        is noticed here, before a caller's request would meet its closed socket)."""
        return self.alive and self.process.poll() is None

    def describe_exit(self) -> str:
        code = self.process.poll()
        return "still running" if code is None else f"exit status {code}"

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], fds: Sequence[int] = ()) -> Any:
        request_id = next(_ids)
        frame = _frame((request_id, method, args, kwargs))  # a request that does not pickle fails here, alone
        with self.lock:
            if not self.alive:
                raise Unavailable(f"the vector index process ended ({self.describe_exit()})")
            try:
                if fds:
                    socket.send_fds(self.sock, [frame], list(fds))
                else:
                    self.sock.sendall(frame)
                (size,) = _HEADER.unpack(_receive_exactly(self.sock, _HEADER.size))
                answered_id, succeeded, value = _unpickled(_receive_exactly(self.sock, size))
                if answered_id not in (request_id, None):
                    raise _OutOfStep(f"request {request_id} was answered for request {answered_id}")
            except (OSError, EOFError, _OutOfStep) as exc:
                self.alive = False
                raise Unavailable(f"the vector index process ended ({self.describe_exit()}): {exc!r}") from exc
            except BaseException:
                # Interrupted between a request and its answer (KeyboardInterrupt, say): the answer would be read
                # as the next caller's. This child serves nobody again; the next call starts another.
                self.alive = False
                raise
        if not succeeded:
            raise value
        return value

    def stop(self) -> None:
        self.alive = False
        # Shut down first: a caller blocked reading an answer wakes at once (Unavailable), and the child sees the
        # end of its blocking socket, closes the shard and exits. Closed only then, under the lock, so that no
        # caller is between loading the descriptor and using it.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with self.lock:
            self.sock.close()
        try:
            self.process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the vector index process did not stop in %.0fs; killing it", _STOP_TIMEOUT_S)
            self.process.kill()
            self.process.wait()


class _LoopChannel:
    """One event loop's socket to the child, read and written by the loop itself (no transport: a loop that ends
    leaves nothing half-open behind; the host closes the socket). The child answers a socket's requests in order,
    so each answer belongs to the oldest request still waiting."""

    def __init__(self, child: _Child, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.child = child
        self.loop = loop
        self.sock = sock
        self.sock.setblocking(False)
        self.waiting: collections.deque[tuple[int, asyncio.Future[Any]]] = collections.deque()
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.lost: Exception | None = None
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(Unavailable(f"the vector index process ended ({self.child.describe_exit()})"))
            return
        self.incoming += data
        for answer in _complete_frames(self.incoming):
            answered_id, succeeded, value = _unpickled(answer)
            request_id, future = self.waiting.popleft()
            if answered_id not in (request_id, None):  # never hand a caller another request's answer
                self.waiting.appendleft((request_id, future))
                self._end(Unavailable(f"the vector index process answered request {answered_id} for {request_id}"))
                return
            if future.done():  # its caller was cancelled and waits no more
                continue
            try:
                if succeeded:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            except Exception as exc:  # an exception a future refuses (StopIteration): the caller still hears
                future.set_exception(Unavailable(f"the vector index failed: {value!r} ({exc!r})"))

    def _write(self, frame: bytes) -> None:
        if not self.outgoing:
            try:
                frame = frame[self.sock.send(frame) :]
            except BlockingIOError:
                pass
            except OSError as exc:
                self._end(Unavailable(f"the vector index process ended ({self.child.describe_exit()}): {exc!r}"))
                return
            if not frame:
                return
            self.loop.add_writer(self.sock.fileno(), self._writable)
        self.outgoing += frame

    def _writable(self) -> None:
        try:
            del self.outgoing[: self.sock.send(self.outgoing)]
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(Unavailable(f"the vector index process ended ({self.child.describe_exit()}): {exc!r}"))
            return
        if not self.outgoing:
            self.loop.remove_writer(self.sock.fileno())

    def _end(self, error: Exception, *, child_ended: bool = True) -> None:
        """On the loop: stop reading and writing, close the socket, fail every caller still waiting."""
        if self.lost is None:
            self.lost = error
            if child_ended:
                self.child.alive = False
            if not self.loop.is_closed():
                self.loop.remove_reader(self.sock.fileno())
                self.loop.remove_writer(self.sock.fileno())
            self.sock.close()
        while self.waiting:
            _, future = self.waiting.popleft()
            if not future.done():
                with contextlib.suppress(RuntimeError):  # a loop that has closed runs no callback again
                    future.set_exception(self.lost)

    def close(self) -> None:
        """Close from any thread: here when called on the loop or when the loop no longer runs (nothing else will
        read the socket then), else handed to the loop, which owns the socket while it runs."""
        end = partial(self._end, Unavailable("the vector index was closed"), child_ended=False)
        try:
            on_the_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_the_loop = False
        if on_the_loop or not self.loop.is_running():
            end()
            return
        try:
            self.loop.call_soon_threadsafe(end)
        except RuntimeError:  # the loop closed in between: nothing reads the socket now
            end()

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.lost is not None:
            raise self.lost
        request_id = next(_ids)
        frame = _frame((request_id, method, args, kwargs))  # a request that does not pickle fails here, alone
        future = self.loop.create_future()
        self.waiting.append((request_id, future))
        self._write(frame)
        return await future


class EdgeHost:
    """VectorIndex on Qdrant Edge in a child process (see the module's docstring). Errors the engine raises in
    the child arrive as the same exceptions; a child that dies fails what waited for it with Unavailable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # guards the child's (re)start and the loops' channels
        self._child: _Child | None = None
        # Each loop's channel, as the task that makes it: callers that arrive while it is being made await it too.
        self._channels: dict[asyncio.AbstractEventLoop, asyncio.Task[_LoopChannel]] = {}
        self._closed = False
        self._running()  # start the child now: it imports and loads the shard while the server loads the rest

    def _running(self) -> _Child:
        """The child, started anew if it has ended: the old one stopped first, since one process holds the
        directory (it stops at once: it writes to no socket it could wait on but the blocking one)."""
        with self._lock:
            if self._closed:
                raise Unavailable("the vector index is closed")
            child = self._child
            if child is None or not child.running():
                if child is not None:
                    log.warning("the vector index process ended (%s); starting another", child.describe_exit())
                    self._drop_channels()
                    child.stop()
                child = self._child = _Child(self.path)
            return child

    def _drop_channels(self) -> None:
        for making in self._channels.values():
            self._drop_channel(making)
        self._channels.clear()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._running().call(method, args, kwargs)

    async def _channel(self) -> _LoopChannel:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._closed:
                    raise Unavailable("the vector index is closed")
                child = self._child
                if child is not None and child.running():
                    making = self._channel_to(child, loop)
                    break
            await loop.run_in_executor(None, self._running)  # a (re)start waits for a process: not on the loop
        return await asyncio.shield(making)

    def _channel_to(self, child: _Child, loop: asyncio.AbstractEventLoop) -> asyncio.Task[_LoopChannel]:
        """Under the lock: this loop's channel to `child`, made (as a task) if it has none that works."""
        making = self._channels.get(loop)
        if making is not None and making.done():
            made = None if making.cancelled() or making.exception() else making.result()
            if made is None or made.child is not child or made.lost is not None:
                if made is not None:
                    made.close()
                making = None
        if making is None:
            for gone in [other for other in self._channels if other.is_closed()]:  # loops that have ended
                self._drop_channel(self._channels.pop(gone))
            making = self._channels[loop] = loop.create_task(self._attach(child, loop))
        return making

    @staticmethod
    def _drop_channel(making: asyncio.Task[_LoopChannel]) -> None:
        if making.done() and not making.cancelled() and making.exception() is None:
            making.result().close()

    @staticmethod
    async def _attach(child: _Child, loop: asyncio.AbstractEventLoop) -> _LoopChannel:
        """A new socket to the child for this loop, handed to it over the blocking socket."""
        ours, theirs = socket.socketpair()
        claimed = threading.Lock()  # whoever takes it closes `theirs`: the job once it has run, else the coroutine

        def attach() -> None:  # on a pool thread: the blocking socket may be busy with another caller's write
            if not claimed.acquire(blocking=False):
                return  # the coroutine gave up before this started, and closed it
            try:
                child.call(_ATTACH, (), {}, fds=[theirs.fileno()])
            finally:
                theirs.close()  # here, not in the coroutine: a cancelled one must not close it before it is sent

        try:
            await loop.run_in_executor(None, attach)
        except BaseException:
            ours.close()  # the child, if it got the other end, sees it close and forgets it
            if claimed.acquire(blocking=False):
                theirs.close()  # the job never started, and now will not
            raise
        return _LoopChannel(child, loop, ours)

    def ensure_ready(self, dimension: int) -> None:
        self._call("ensure_ready", dimension)

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        self._call("upsert", list(points))

    def publish(self, tenant: str, document_id: str, version: int, chunk_count: int) -> None:
        self._call("publish", tenant, document_id, version, chunk_count)

    def set_acl(self, tenant: str, document_id: str, acl_tokens: Sequence[str]) -> None:
        self._call("set_acl", tenant, document_id, list(acl_tokens))

    def delete_document(self, tenant: str, document_id: str) -> None:
        self._call("delete_document", tenant, document_id)

    def delete_version(self, tenant: str, document_id: str, version: int, from_chunk: int = 0) -> None:
        self._call("delete_version", tenant, document_id, version, from_chunk)

    def count_document(self, tenant: str, document_id: str, version: int | None = None) -> int:
        return int(self._call("count_document", tenant, document_id, version))

    def chunks(self) -> list[StoredChunk]:
        return list(self._call("chunks"))

    def check(self) -> None:
        self._call("check")

    def search(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        return list(self._call("search", principal, list(vector), limit, mode=mode, text=text))

    async def search_async(
        self,
        principal: Principal,
        vector: Sequence[float],
        limit: int,
        *,
        mode: SearchMode = SearchMode.DENSE,
        text: str = "",
    ) -> list[SearchHit]:
        channel = await self._channel()
        return list(await channel.call("search", (principal, list(vector), limit), {"mode": mode, "text": text}))

    def optimize(self) -> bool:
        return bool(self._call("optimize"))

    def vectors(self, tenant: str) -> list[StoredVector]:
        return list(self._call("vectors", tenant))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
            try:
                self._drop_channels()
            finally:
                if child is not None:
                    child.stop()


# The child.


class _Peer:
    """One socket the child serves: requests read into `incoming`; answers queued in `outgoing` where the socket
    is an event loop's (non-blocking: a loop that stalls or has ended must not stop the child serving the others)."""

    def __init__(self, sock: socket.socket, *, blocking: bool) -> None:
        self.sock = sock
        self.blocking = blocking
        sock.setblocking(blocking)
        self.incoming = bytearray()
        self.outgoing = bytearray()

    def requests(self) -> Iterator[tuple[int, str, tuple[Any, ...], dict[str, Any]] | Exception]:
        """Each complete request, in order; one that does not unpickle here (a class only the server has) as the
        exception, which is answered in its place so that every later answer stays in step."""
        for data in _complete_frames(self.incoming):
            try:
                request: tuple[int, str, tuple[Any, ...], dict[str, Any]] | Exception = pickle.loads(data)
            except Exception as exc:
                request = exc
            yield request

    def send(self, frame: bytes) -> None:
        """Send or queue an answer; OSError when the other end is gone."""
        if self.blocking:
            self.sock.sendall(frame)  # the server reads it at once: its caller waits for it
            return
        self.outgoing += frame
        self.flush()

    def flush(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.outgoing:
                del self.outgoing[: self.sock.send(self.outgoing)]


def _serve(sock: socket.socket, path: Path) -> None:
    """Answer requests from the blocking socket and every socket attached through it, one at a time, until the
    blocking socket closes; then close the shard. An attached socket whose other end is gone is forgotten."""
    from retrieval.edge_index import EdgeIndex  # here: the server's import of this module does not need it

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    index = EdgeIndex(path)
    selector = selectors.DefaultSelector()
    main = _Peer(sock, blocking=True)
    selector.register(sock, selectors.EVENT_READ, main)

    def forget(peer: _Peer) -> None:
        selector.unregister(peer.sock)
        peer.sock.close()

    try:
        while True:
            for key, events in selector.select():
                peer: _Peer = key.data
                if events & selectors.EVENT_WRITE:
                    try:
                        peer.flush()
                    except OSError:
                        forget(peer)
                        continue
                if events & selectors.EVENT_READ:
                    try:
                        if peer is main:
                            data, fds, _, _ = socket.recv_fds(peer.sock, 1 << 20, 4)
                        else:
                            data, fds = peer.sock.recv(1 << 20), []
                    except BlockingIOError:
                        continue
                    except OSError:
                        data, fds = b"", []
                    if not data:
                        if peer is main:
                            return
                        forget(peer)
                        continue
                    for fd in fds:
                        attached = _Peer(socket.socket(fileno=fd), blocking=False)
                        selector.register(attached.sock, selectors.EVENT_READ, attached)
                    peer.incoming += data
                    try:
                        for request in peer.requests():
                            if isinstance(request, Exception):  # answered as "the next answer, failed"
                                unread = Unavailable(f"the vector index could not read a request: {request!r}")
                                peer.send(_frame((None, False, unread)))
                            else:
                                peer.send(_reply(index, *request))
                    except OSError:  # its other end is gone (a loop that ended)
                        if peer is main:
                            return
                        forget(peer)
                        continue
                wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.outgoing else 0)
                if wanted != key.events:
                    selector.modify(peer.sock, wanted, peer)
    finally:
        index.close()


def _reply(index: Any, request_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    if method == _ATTACH:
        return _frame((request_id, True, None))
    try:
        if method not in _METHODS:
            raise ValueError(f"the vector index process does not do {method!r}")
        outcome: tuple[int, bool, Any] = (request_id, True, getattr(index, method)(*args, **kwargs))
    except Exception as exc:  # sent to the caller, who raises it
        outcome = (request_id, False, exc)
    try:
        frame = _frame(outcome)
        if not outcome[1]:
            pickle.loads(frame[_HEADER.size :])  # an exception must also unpickle on the other side
        return frame
    except Exception as exc:  # one that does not still reaches its caller, as Unavailable
        return _frame((request_id, False, Unavailable(f"the vector index failed: {outcome[2]!r} ({exc!r})")))


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])), Path(sys.argv[2]))
