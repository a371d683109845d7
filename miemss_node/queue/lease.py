"""A heartbeat that keeps a lease (a job's or a delivery's) while the work it covers runs."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

logger = logging.getLogger(__name__)


def lease_owner_id() -> str:
    """A name unique to one worker or sender: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper:
    """Calls ``renew`` every ``interval_seconds`` in a background thread while the ``with`` block runs.

    ``renew`` returns False once the lease is no longer ours (it expired and someone else took the
    work): the keeper then stops and :attr:`lost` says so, so the work can stop early. A renewal that
    raises (the database is briefly away) is logged and tried again at the next beat.
    """

    def __init__(self, renew: Callable[[], bool], interval_seconds: float, *, name: str) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0")
        self._renew = renew
        self._interval = interval_seconds
        self._name = name
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease held by someone else."""
        return self._lost.is_set()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                held = self._renew()
            except Exception:  # noqa: BLE001 - a failed heartbeat is retried at the next beat
                logger.warning("renewal of %s failed; trying again", self._name, extra={"action": "lease.renew_failed"})
                continue
            if not held:
                logger.warning("%s was lost to another owner", self._name, extra={"action": "lease.lost"})
                self._lost.set()
                return
