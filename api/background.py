"""Run the HTTP server in a thread of this process: for the demo, the measurement script and tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.app import create_app
from core.settings import Settings

_START_TIMEOUT_S = 120.0


@contextmanager
def serving(settings: Settings, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve Tessera on host:port (0: any free port) until the block ends; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="tessera-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Tessera server did not start; see the log above")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(30)
