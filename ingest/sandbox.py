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
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
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
    """`target(*args)` in a child; its result, or the DocumentRejected it raised. DocumentRejected when the
    child passes a limit; ChildCrashed when it dies without an answer. `target` must be importable."""
    receiver, sender = _context.Pipe(duplex=False)
    child = _context.Process(target=_child_main, args=(sender, target, args, limits), name=_CHILD_NAME, daemon=True)
    child.start()
    sender.close()
    try:
        answered = receiver.poll(limits.seconds)
        outcome = _receive(receiver) if answered else None
    finally:
        receiver.close()
        if child.is_alive() and not answered:
            child.kill()
        child.join(_JOIN_TIMEOUT_S)
        if child.is_alive():
            child.kill()
            child.join(_JOIN_TIMEOUT_S)
    if not answered:
        raise DocumentRejected(f"{what} took longer than the limit of {limits.seconds:.0f} s")
    if outcome is None:
        raise ChildCrashed(f"{what} crashed ({_describe_exit(child.exitcode)})")
    kind, value, peak_rss_bytes = outcome
    log.debug("%s: %s, peak RSS %.0f MiB", what, kind, peak_rss_bytes / 2**20)
    if kind == "ok":
        result: T = value
        return result
    if kind == "rejected":
        raise DocumentRejected(value)
    if kind == "memory":
        raise DocumentRejected(f"{what} needed more than the memory limit of {limits.memory_bytes // 2**20} MiB")
    raise ChildCrashed(f"{what} failed: {value}")


def _receive(receiver: Connection) -> tuple[str, Any, int] | None:
    try:
        outcome: tuple[str, Any, int] = receiver.recv()
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


def _child_main(sender: Connection, target: Callable[..., Any], args: tuple[Any, ...], limits: ChildLimits) -> None:
    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    cpu_seconds = int(limits.seconds) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    cut_network()
    try:
        outcome: tuple[str, Any] = ("ok", target(*args))
    except DocumentRejected as exc:
        outcome = ("rejected", str(exc))
    except MemoryError:
        outcome = ("memory", None)
    except BaseException as exc:  # reported to the parent, which decides
        outcome = ("error", repr(exc)[:2000])
    peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        sender.send((*outcome, peak_rss_bytes))
    except MemoryError:
        sender.send(("memory", None, peak_rss_bytes))


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
