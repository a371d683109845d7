"""Doorbells: a loop that made work for another rings it, so that the other need not wait for its poll.

The settler rings the workers when it queues a job (or reclaims a lost one), and a worker rings the
senders when it has finished one. Every loop still polls (``[worker]`` and ``[delivery]
poll_seconds``): a bell is a shortcut only, and work made elsewhere (by a worker on another host, a
review on the dashboard, a retry falling due) is found by the poll as before. Without bells, each of
the two hand-overs added half a poll to a study's latency on average: about 0.25 s with the default
0.25 s polls. Loops that share a bell (one sender per destination) may miss a ring rung just as
another of them starts a pass; they then find the work at their poll, as before.

Between ``serve`` and its worker processes the bells are multiprocessing events; within one process
they are threading events, so a node without worker processes makes no semaphores.
"""

from __future__ import annotations

import multiprocessing
import threading
from dataclasses import dataclass
from typing import Protocol


class Bell(Protocol):
    """What a loop needs of an event: ring it, and wait for it with a timeout."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class Doorbells:
    """The bells of one node and its worker processes."""

    #: Rung when a job may be due: a study settled, or a lost job's lease was reclaimed.
    jobs: Bell
    #: Rung when a worker has finished a job: its deliveries may be due.
    results: Bell

    @classmethod
    def between_processes(cls) -> Doorbells:
        """Bells that worker processes spawned with them can ring and hear."""
        context = multiprocessing.get_context("spawn")
        return cls(jobs=context.Event(), results=context.Event())

    @classmethod
    def in_process(cls) -> Doorbells:
        """Bells for loops that are all threads of one process."""
        return cls(jobs=threading.Event(), results=threading.Event())

    def ring_all(self) -> None:
        """Wake every loop that waits on a bell (a node stopping: each sees it and ends)."""
        self.jobs.set()
        self.results.set()
