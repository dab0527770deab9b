"""Runs hostile-input work (parsing an upload) in a child process with a memory cap, a time limit and no
network, so that a document that blows a limit or crashes its parser fails alone and the worker lives on.

Children are forked from a fork server that was started clean (no model, no worker threads) and has the
parser loaded (ingest/parse_server.py), so each starts warm in tens of milliseconds. In the child:
- RLIMIT_DATA caps its data segment (heap and private anonymous mappings: what parsing allocates; a
  MemoryError past it). Not RLIMIT_AS: the libraries the parser loads map about 1.9 GiB of address space
  they never touch (VmSize), against 0.75 GiB of data (VmData). RLIMIT_CPU backs up the parent's wall-clock
  limit, and the child dies with its parent (PR_SET_PDEATHSIG);
- the network is cut: a new, empty network namespace where the process may make one (as root, or with
  user namespaces), otherwise every socket but a Unix one refuses to connect or send.
The parent waits up to the time limit, then kills it.

A child may serve several documents in a row, but only of one key: the pipeline's key is the document's tenant
and owner (ChildPool). A hostile document can then reach only later documents of the same owner, who could
have written anything into those directly; never another owner's, never another tenant's. Each document keeps
its own limits: the CPU limit is renewed per task, a child that kept more than a quarter of its memory
headroom (what a fresh child has under the cap) is not reused, and a document that runs out of memory in a
reused child is tried again in a fresh one before it is refused. A fresh child per document (forked from a
660 MiB fork server) kept the machine at ~40% system time during dbpedia ingestion.

multiprocessing makes every child import the parent's main module (`tessera`, the CLI with its imports)
before running its target: 0.3-0.5 s a document here, ten times the parse of a short text. The children of
this module skip that (they are told no main module); their targets live in importable modules.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.spawn
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from core.errors import DocumentRejected

log = logging.getLogger(__name__)
T = TypeVar("T")

_PRELOAD = ["ingest.parse_server"]
_CHILD_NAME = "tessera-sandbox"
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1
_JOIN_TIMEOUT_S = 5.0
_STOP_GRACE_S = 1.0
_MIN_ROOM_LEFT = 0.75
_IDLE_EXIT_S = 300.0  # a child waiting this long for work ends itself (its pool forgets it sooner)
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(_PRELOAD)
_preparation_data = multiprocessing.spawn.get_preparation_data


def _preparation_without_main(name: str) -> dict[str, Any]:
    """What a new child is told to set up; for this module's children, without the parent's main module."""
    data: dict[str, Any] = _preparation_data(name)
    if name == _CHILD_NAME:
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


multiprocessing.spawn.get_preparation_data = _preparation_without_main


@dataclass(frozen=True)
class ChildLimits:
    memory_bytes: int
    seconds: float


class ChildCrashed(Exception):
    """The child died without an answer (a signal, the kernel's OOM killer, a native crash). Possibly not the
    document's fault, so the task retries it, up to its attempt limit."""


def start_server() -> None:
    """Start the fork server now (it loads the parser in the background) rather than at the first upload."""
    multiprocessing.forkserver.ensure_running()


def run_isolated(target: Callable[..., T], *args: Any, limits: ChildLimits, what: str) -> T:
    """`target(*args)` in a fresh child that ends with it; its result, or the DocumentRejected it raised.
    DocumentRejected when the child passes a limit; ChildCrashed when it dies without an answer. `target` must
    be importable."""
    child = _Child.start(key="", limits=limits)
    try:
        result: T = _answer(child.ask(target, args, what), limits, what)
    finally:
        child.stop()
    return result


class _Child:
    """A sandbox child serving tasks over a duplex pipe (see _serve)."""

    def __init__(self, key: str, limits: ChildLimits, process: Any, connection: Connection) -> None:
        self.key = key
        self.limits = limits
        self.process = process
        self.connection = connection
        self.uses = 0
        self.last_used = time.monotonic()
        self.room_left = 1.0  # the share of a fresh child's memory headroom this one still has

    @classmethod
    def start(cls, key: str, limits: ChildLimits) -> _Child:
        parent_end, child_end = _context.Pipe(duplex=True)
        process = _context.Process(target=_serve, args=(child_end, limits, _IDLE_EXIT_S), name=_CHILD_NAME, daemon=True)
        process.start()
        child_end.close()
        return cls(key, limits, process, parent_end)

    def ask(self, target: Callable[..., Any], args: tuple[Any, ...], what: str) -> tuple[str, Any]:
        """Run one task; (kind, value) as _serve sent it. DocumentRejected past the time limit and ChildCrashed
        when the child dies, both after stopping it."""
        self.uses += 1
        try:
            self.connection.send((target, args))
            answered = self.connection.poll(self.limits.seconds)
            outcome = _receive(self.connection) if answered else None
        except (OSError, EOFError):
            answered, outcome = True, None
        if outcome is None:
            if not answered:
                self.process.kill()
            self.stop()
            if not answered:
                raise DocumentRejected(f"{what} took longer than the limit of {self.limits.seconds:.0f} s")
            raise ChildCrashed(f"{what} crashed ({_describe_exit(self.process.exitcode)})")
        kind, value, peak_rss_bytes, self.room_left = outcome
        self.last_used = time.monotonic()
        log.debug("%s: %s, peak RSS %.0f MiB, task %d of this child", what, kind, peak_rss_bytes / 2**20, self.uses)
        return kind, value

    def reusable(self, max_uses: int) -> bool:
        return self.uses < max_uses and self.room_left >= _MIN_ROOM_LEFT and self.process.is_alive()

    def stop(self) -> None:
        """End the child: closing the pipe ends one that is waiting; one that is not is killed."""
        self.connection.close()
        self.process.join(_STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(_JOIN_TIMEOUT_S)


def _answer(outcome: tuple[str, Any], limits: ChildLimits, what: str) -> Any:
    kind, value = outcome
    if kind == "ok":
        return value
    if kind == "rejected":
        raise DocumentRejected(value)
    if kind == "memory":
        raise DocumentRejected(f"{what} needed more than the memory limit of {limits.memory_bytes // 2**20} MiB")
    raise ChildCrashed(f"{what} failed: {value}")


class ChildPool:
    """Sandbox children kept between tasks of the same key, at most `max_uses` tasks each, idle at most
    `idle_s`; at most `max_idle` wait in all (the oldest ends first). Thread-safe: concurrent tasks of one key
    get a child each."""

    def __init__(self, *, max_uses: int = 200, idle_s: float = 30.0, max_idle: int = 8) -> None:
        if max_uses < 1 or max_idle < 0 or idle_s <= 0:
            raise ValueError("max_uses must be at least 1, max_idle at least 0 and idle_s positive")
        if idle_s >= _IDLE_EXIT_S:
            raise ValueError(f"idle_s must stay below the children's own idle exit ({_IDLE_EXIT_S:.0f} s)")
        self.max_uses = max_uses
        self.idle_s = idle_s
        self.max_idle = max_idle
        self._idle: list[_Child] = []  # oldest first
        self._lock = threading.Lock()
        self.started = 0  # children started (to see the reuse work)

    def run(self, key: str, target: Callable[..., T], *args: Any, limits: ChildLimits, what: str) -> T:
        """`target(*args)` in a child of `key` (a waiting one, else a fresh one); like run_isolated."""
        child = self._take(key, limits)
        try:
            outcome = child.ask(target, args, what)
        except BaseException:
            child.stop()
            raise
        kind = outcome[0]
        if kind in ("ok", "rejected"):
            self._give_back(child)
        else:  # out of memory, or an unexpected error: what is left in the child is not trusted
            child.stop()
            if kind == "memory" and child.uses > 1:
                # What earlier tasks left behind may have made the difference: the document gets a fresh child.
                return run_isolated(target, *args, limits=limits, what=what)
        result: T = _answer(outcome, limits, what)
        return result

    def _take(self, key: str, limits: ChildLimits) -> _Child:
        expired: list[_Child] = []
        chosen: _Child | None = None
        now = time.monotonic()
        with self._lock:
            for child in list(self._idle):
                if now - child.last_used > self.idle_s:
                    self._idle.remove(child)
                    expired.append(child)
                elif chosen is None and child.key == key and child.limits == limits:
                    self._idle.remove(child)
                    chosen = child
        for child in expired:
            child.stop()
        if chosen is not None and chosen.process.is_alive():
            return chosen
        if chosen is not None:
            chosen.stop()
        self.started += 1
        return _Child.start(key, limits)

    def _give_back(self, child: _Child) -> None:
        if not child.reusable(self.max_uses):
            child.stop()
            return
        evicted: list[_Child] = []
        with self._lock:
            self._idle.append(child)
            while len(self._idle) > self.max_idle:
                evicted.append(self._idle.pop(0))
        for old in evicted:
            old.stop()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.stop()


def _receive(receiver: Connection) -> tuple[str, Any, int, float] | None:
    try:
        outcome: tuple[str, Any, int, float] = receiver.recv()
    except (EOFError, OSError):
        return None  # the child died before (or while) answering
    return outcome


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _serve(connection: Connection, limits: ChildLimits, idle_exit_s: float) -> None:
    """The child: confine itself once, then run (target, args) requests until the pipe closes, a None request
    comes, it waits `idle_exit_s` for work, or a task runs out of memory (what is left is not trusted)."""
    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    cut_network()
    headroom = max(1, limits.memory_bytes - _data_segment_bytes())
    while connection.poll(idle_exit_s):
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        target, args = request
        _renew_cpu_limit(limits.seconds)
        try:
            outcome: tuple[str, Any] = ("ok", target(*args))
        except DocumentRejected as exc:
            outcome = ("rejected", str(exc))
        except MemoryError:
            outcome = ("memory", None)
        except BaseException as exc:  # reported to the parent, which decides
            outcome = ("error", repr(exc)[:2000])
        peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        room_left = (limits.memory_bytes - _data_segment_bytes()) / headroom
        try:
            connection.send((*outcome, peak_rss_bytes, room_left))
        except MemoryError:
            connection.send(("memory", None, peak_rss_bytes, 0.0))
            return
        if outcome[0] == "memory":
            return


def _data_segment_bytes() -> int:
    """This process's data segment (VmData), what RLIMIT_DATA caps; Python seldom gives it back."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def _renew_cpu_limit(seconds: float) -> None:
    """RLIMIT_CPU counts the process's whole life: give this task its own budget on top of what was used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime) + int(seconds) + 5
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def cut_network() -> str:
    """Leave this process without a network; returns how ("namespace" or "sockets")."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET) == 0 or libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        return "namespace"  # a fresh namespace: not even loopback is up
    _refuse_sockets()
    return "sockets"


def _refuse_sockets() -> None:
    original = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex", "sendto", "bind")}
    for name in original:

        def guarded(self: socket.socket, *args: Any, _name: str = name, **kwargs: Any) -> Any:
            if self.family == socket.AF_UNIX:
                return original[_name](self, *args, **kwargs)
            raise PermissionError("no network while parsing an upload")

        setattr(socket.socket, name, guarded)
