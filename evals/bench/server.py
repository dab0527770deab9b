"""A real `tessera serve` in a subprocess, on a given data directory and settings, for the benchmarks.

What is measured here, and why:
- cold start: from launching the process to its first answered query (HTTP 200 on /v1/query), the time a user
  waits after `tessera serve` (interpreter, imports, model load, index open, worker start, first embedding);
  the issue asks for at most 10 s. The time to the first healthy /healthz is kept beside it;
- peak RSS: VmHWM of the server process (and of any children), read from /proc just before it is stopped. In
  the embedded default the API and the ingestion worker are one process, so this is the peak of both; its
  children are the parse sandbox and Qdrant Edge's process (retrieval/edge_host.py), summed apart;
- index size: the bytes allocated on disk by every file under the index directory, after the server stopped
  (its write-ahead log flushed), and their apparent size (preallocated sparse files included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from core.settings import Settings

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
_POLL_S = 0.05
PROBE_QUERY = "Who founded the city?"


class ServerError(RuntimeError):
    """The server did not start, or did not answer its first query."""


@dataclass(frozen=True)
class ServerStats:
    """What one server run measured; see the module docstring."""

    cold_start_s: float  # launch -> first answered query
    healthy_s: float  # launch -> /healthz answers
    peak_rss_bytes: int  # VmHWM of the server process
    children_peak_rss_bytes: int  # VmHWM summed over its child processes (parse sandbox, Edge's process)
    index_bytes: int  # allocated on disk
    index_apparent_bytes: int  # the files' sizes, preallocated space included
    index_path: str
    single_process: bool  # API and ingestion worker in one process (the embedded queue)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cold_start_s": round(self.cold_start_s, 3),
            "healthy_s": round(self.healthy_s, 3),
            "peak_rss_mib": round(self.peak_rss_bytes / 2**20, 1),
            "children_peak_rss_mib": round(self.children_peak_rss_bytes / 2**20, 1),
            "index_mib": round(self.index_bytes / 2**20, 2),
            "index_apparent_mib": round(self.index_apparent_bytes / 2**20, 2),
            "index_path": self.index_path,
            "single_process": self.single_process,
        }


def free_port() -> int:
    """A TCP port free on loopback now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak resident set, VmRSS: current), in KiB; 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def child_pids(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    tasks = Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            for child in (task / "children").read_text(encoding="ascii").split():
                found.append(int(child))
    except (OSError, ValueError):
        return found
    return found + [grandchild for child in found for grandchild in child_pids(child)]


def tree_bytes(path: Path) -> tuple[int, int]:
    """(allocated, apparent) bytes of every regular file under `path`; (0, 0) when it does not exist. The engine
    preallocates sparse files (write-ahead log, storage pages), so the two differ widely on a small index."""
    allocated = apparent = 0
    if path.exists():
        for entry in path.rglob("*"):
            if entry.is_file() and not entry.is_symlink():
                stat = entry.stat()
                allocated += stat.st_blocks * 512
                apparent += stat.st_size
    return allocated, apparent


def index_dir(settings: Settings) -> Path | None:
    """Where the embedded engine keeps the index (None for a Qdrant server: not on this machine's disk)."""
    if settings.qdrant_url:
        return None
    return settings.edge_path if settings.embedded_engine == "edge" else settings.qdrant_path


class BenchServer:
    """`tessera serve` on `settings.data_dir`, with `env` added to this process's environment.

    Use as a context manager: entering launches it and waits for its first answered query (`probe_token`);
    leaving stops it with SIGTERM (uvicorn's graceful shutdown) and records `stats`.
    """

    def __init__(
        self, settings: Settings, env: dict[str, str], probe_token: str, log_path: Path, host: str = "127.0.0.1"
    ) -> None:
        self.settings = settings
        self.env = env
        self.probe_token = probe_token
        self.log_path = log_path
        self.host = host
        self.port = free_port()
        self.base_url = f"http://{host}:{self.port}"
        self.stats: ServerStats | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._launched = 0.0
        self._healthy_s = 0.0
        self._cold_start_s = 0.0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServerError("the server is not running")
        return self._process.pid

    def command(self) -> list[str]:
        """`tessera serve` through this interpreter (the console script's own entry point, `api.cli:main`)."""
        return [
            sys.executable,
            "-m",
            "api.cli",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]

    def __enter__(self) -> BenchServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        environment = {**os.environ, **self.env}
        self._launched = time.perf_counter()
        self._process = subprocess.Popen(
            self.command(), env=environment, stdout=self._log, stderr=subprocess.STDOUT, cwd=Path.cwd()
        )
        try:
            self._wait_for_first_answer()
        except BaseException:
            self.stop()
            raise

    def _check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise ServerError(f"the server exited with code {self._process.returncode}; see {self.log_path}")

    def _wait_for_first_answer(self) -> None:
        deadline = self._launched + START_TIMEOUT_S
        headers = {"Authorization": f"Bearer {self.probe_token}"}
        with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
            while True:
                self._check_alive()
                if time.perf_counter() > deadline:
                    raise ServerError(f"the server did not become healthy in {START_TIMEOUT_S:.0f}s")
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(_POLL_S)
            self._healthy_s = time.perf_counter() - self._launched
            while True:
                self._check_alive()
                response = client.post("/v1/query", json={"query": PROBE_QUERY}, headers=headers)
                if response.status_code == 200:
                    break
                if response.status_code != 503 or time.perf_counter() > deadline:
                    raise ServerError(f"the first query failed: HTTP {response.status_code} {response.text[:300]}")
                time.sleep(_POLL_S)
            self._cold_start_s = time.perf_counter() - self._launched

    @property
    def cold_start_s(self) -> float:
        """Seconds from launch to the first answered query (0 until it answered)."""
        return self._cold_start_s

    def rss_now_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def stop(self) -> ServerStats | None:
        """Read the peak RSS, stop the server, measure the index. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return self.stats
        peak_kib = status_kib(process.pid, "VmHWM")
        children_kib = sum(status_kib(child, "VmHWM") for child in child_pids(process.pid))
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None
        where = index_dir(self.settings)
        allocated, apparent = tree_bytes(where) if where is not None else (0, 0)
        self.stats = ServerStats(
            cold_start_s=self._cold_start_s,
            healthy_s=self._healthy_s,
            peak_rss_bytes=peak_kib * 1024,
            children_peak_rss_bytes=children_kib * 1024,
            index_bytes=allocated,
            index_apparent_bytes=apparent,
            index_path=str(where) if where is not None else "(Qdrant server)",
            single_process=self.settings.queue == "embedded",
        )
        return self.stats
