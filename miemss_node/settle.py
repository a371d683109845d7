"""Study assembly: a study is complete once no instance has arrived for ``settle_seconds``.

DICOM has no "study finished" message, so a quiet period decides (Orthanc's StableAge works the
same way). Each settled version of a study gets exactly one queued job.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import StudySettings, WorkerSettings
from miemss_node.doorbell import Bell
from miemss_node.queue import repository

logger = logging.getLogger(__name__)

#: The shortest pause between idle passes (a study due now is taken by the next pass).
MIN_PAUSE_SECONDS = 0.01


class Settler:
    """Queues jobs for quiet studies and re-queues jobs whose worker lost its lease."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        study: StudySettings,
        worker: WorkerSettings,
        *,
        jobs_bell: Bell | None = None,
    ) -> None:
        """``jobs_bell`` is rung when a pass queued or reclaimed a job (:mod:`~miemss_node.doorbell`)."""
        self.sessions = sessions
        self.jobs_bell = jobs_bell
        self.study = study
        self.worker = worker
        #: The longest pause between passes: a quarter of the settle time, 50 ms to 1 s.
        self.poll_seconds = min(1.0, max(study.settle_seconds / 4, 0.05))

    def idle_seconds(self) -> float:
        """How long to pause after an idle pass: until the next study is due, at most ``poll_seconds``.

        A study is queued when it is due, not up to a poll later: that wait was a quarter of a
        1-image study's node overhead (``benchmarks/latency.py``).
        """
        with self.sessions() as session:
            earliest = repository.earliest_unsettled_arrival(session)
        if earliest is None:
            return self.poll_seconds
        due_in = (earliest - utcnow()).total_seconds() + self.study.settle_seconds
        return min(self.poll_seconds, max(MIN_PAUSE_SECONDS, due_in))

    def run_once(self) -> int:
        """One pass: reclaim expired leases, then settle due studies; returns the jobs touched."""
        now = utcnow()
        with self.sessions.begin() as session:
            reclaimed = repository.reclaim_expired_leases(session, now=now)
            for job in reclaimed:
                logger.info(
                    "job %d lost its lease; now %s",
                    job.id,
                    job.state.value,
                    extra={"action": "job.lease_expired", "job_id": job.id, "state": job.state.value},
                )
        with self.sessions.begin() as session:
            jobs = repository.settle_due_studies(
                session,
                now=now,
                settle_seconds=self.study.settle_seconds,
                max_attempts=self.worker.max_attempts,
                reprocess_late_instances=self.study.reprocess_late_instances,
            )
            queued = [(job.id, job.version, repository.study_of_job(session, job).study_instance_uid) for job in jobs]
        for job_id, version, study_uid in queued:
            logger.info(
                "study %s settled; job %d (version %d) queued",
                study_uid,
                job_id,
                version,
                extra={"action": "job.queued", "job_id": job_id, "study_uid": study_uid},
            )
        touched = len(reclaimed) + len(queued)
        if touched and self.jobs_bell is not None:
            self.jobs_bell.set()
        return touched
