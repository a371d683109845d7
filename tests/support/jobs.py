"""Waiting for and reading a node's jobs in tests."""

from __future__ import annotations

import time

from miemss_node.node import Node
from miemss_node.queue.models import Job


def wait_for_job(node: Node, timeout: float = 30.0) -> int:
    """The id of the node's first job, once the settler has queued it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.sessions() as session:
            job = session.query(Job).first()
            if job is not None:
                return job.id
        time.sleep(0.1)
    raise AssertionError("no job was queued")


def job_of(node: Node, job_id: int) -> Job:
    """A job with its results loaded."""
    with node.sessions() as session:
        job = session.get_one(Job, job_id)
        session.refresh(job, ["results"])
        return job
