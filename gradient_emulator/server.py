"""Serving the emulator with uvicorn: in a background thread (tests, demo) or blocking (CLI)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from .app import create_app
from .state import EmulatorState


class EmulatorServer:
    """uvicorn in a daemon thread on ``host``:``port`` (port 0 picks a free port).

    Use as a context manager, or call ``start()`` / ``stop()`` for long-lived use.
    """

    def __init__(
        self,
        vendor_api_key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state: EmulatorState | None = None,
        rate_limit_per_second: int = 100,
        startup_timeout: float = 10.0,
        log_level: str = "warning",
    ) -> None:
        self.state = state if state is not None else EmulatorState()
        self.app = create_app(vendor_api_key, state=self.state, rate_limit_per_second=rate_limit_per_second)
        self.host = host
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator server is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmulatorServer:
        if self.running:
            return self
        self._socket = self._bind()
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="gradient-emulator", daemon=True
        )
        self._thread.start()
        self._wait_until_started()
        return self

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        return sock

    def _wait_until_started(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._server is not None and self._server.started:
                return
            if self._thread is not None and not self._thread.is_alive():
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("the Gradient emulator did not start")

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            self.state.faults.release_held()
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        self.port = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    host: str,
    port: int,
    vendor_api_key: str,
    *,
    rate_limit_per_second: int = 100,
    log_level: str = "info",
) -> None:
    """Run the emulator in the foreground until interrupted (for the project's CLI)."""
    app = create_app(vendor_api_key, rate_limit_per_second=rate_limit_per_second)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="off")
