"""Loopback ports for tests and benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time

#: Tests and benchmarks use loopback ports above 10000 only.
MIN_PORT = 10001


def free_port() -> int:
    """A TCP port above :data:`MIN_PORT` on 127.0.0.1 that was free a moment ago."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port >= MIN_PORT:
            return port


def wait_for_port(port: int, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll until something listens on 127.0.0.1:port; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
