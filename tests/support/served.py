"""``miemss-node serve`` in a process of its own, as an operator runs it; stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from tests.support.net import wait_for_port

CLI = [sys.executable, "-m", "miemss_node"]


class ServedNode:
    """A ``serve`` process on ``config``, listening on ``port``; its log is kept in a file.

    Use as a context manager: entering waits until the receiver listens, leaving sends SIGTERM and
    waits for the exit (the exit code is then in :attr:`returncode`, the log in :attr:`log`).
    """

    def __init__(self, config: Path, port: int, *, name: str = "node") -> None:
        self.config = config
        self.port = port
        self.log_path = config.parent / f"{name}.log"
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServedNode:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*CLI, "serve", "--config", str(self.config)], stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        wait_for_port(self.port, process=self._process)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, then wait for the exit (a hung node is killed after 90 s and fails the test)."""
        if self._process is None or self.returncode is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self.returncode = self._process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self.returncode = self._process.wait()
            raise AssertionError(f"serve did not stop on SIGTERM; log: {self.log}") from None

    @property
    def log(self) -> str:
        """What the node logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")
