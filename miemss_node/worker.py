"""Claims a job, runs the pipeline on the study's images, encodes the results, queues deliveries."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from io import BytesIO

from pydicom import Dataset
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import DEFAULT_RESULT_TYPES, Config
from miemss_node.encode.study import EncodeContext, encode_study
from miemss_node.encode.templates import load_templates
from miemss_node.errors import DecodeError, MiemssError, StageError
from miemss_node.pipeline.base import ImageAnalysis, Report
from miemss_node.pipeline.caption import study_caption
from miemss_node.pipeline.decode import is_image_dataset, read_dicom_file
from miemss_node.pipeline.models import NO_MODELS, ModelSet
from miemss_node.pipeline.report import build_report
from miemss_node.pipeline.runner import analyse_dataset
from miemss_node.queue import repository
from miemss_node.queue.models import Job
from miemss_node.queue.retry import RetryPolicy
from miemss_node.storage import StorageLayout, write_atomically
from miemss_node.thumbnails import write_thumbnails

logger = logging.getLogger(__name__)


class NothingToProcess(MiemssError):
    """The study has no image this node can decode: its instances stay stored, nothing is sent."""


@dataclass(kw_only=True)
class StudyWork:
    """What one job has read and analysed so far."""

    sources: list[Dataset] = field(default_factory=list)
    analyses: list[ImageAnalysis] = field(default_factory=list)
    #: (SOP Instance UID, reason) for each instance not processed.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def worker_id() -> str:
    """A name unique to this worker: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs queued jobs one at a time."""

    def __init__(self, sessions: sessionmaker[Session], config: Config, models: ModelSet = NO_MODELS) -> None:
        self.sessions = sessions
        self.config = config
        #: Loaded once per worker process (see ``Node.start``) and shared by its worker threads.
        self.models = models
        self.owner = worker_id()
        self.policy = RetryPolicy(
            max_attempts=config.worker.max_attempts, backoff_seconds=config.worker.retry_backoff_seconds
        )

    def run_once(self) -> int:
        """Claim and run one job; returns 1 when a job ran, 0 when none was due."""
        with self.sessions.begin() as session:
            job = repository.claim_job(
                session, owner=self.owner, lease_seconds=self.config.worker.lease_seconds, now=utcnow()
            )
            if job is None:
                return 0
            study = repository.study_of_job(session, job)
            instances = [(i.sop_instance_uid, i.path) for i in repository.study_instances(session, study.id)]
            study_uid = study.study_instance_uid
        extra = {"job_id": job.id, "study_uid": study_uid, "worker": self.owner}
        logger.info("job %d started (attempt %d)", job.id, job.attempts, extra={"action": "job.started", **extra})
        started = time.perf_counter()
        timings: list[tuple[str, float]] = []
        with LeaseKeeper(self.sessions, job.id, self.owner, self.config.worker.lease_seconds):
            try:
                results = self._process(job, study_uid, instances, timings)
            except NothingToProcess as exc:
                self._finish(job, [], extra, started, note=str(exc))
                return 1
            except (MiemssError, OSError, ValueError, RuntimeError, MemoryError) as exc:
                self._fail(job, exc, extra)
                return 1
        self._finish(job, results, extra, started, timings=timings)
        return 1

    def result_kinds(self) -> frozenset[str]:
        """The result types to encode: every type some destination gets (the default with none)."""
        wanted = {kind for destination in self.config.destinations for kind in destination.result_types}
        return frozenset(wanted or DEFAULT_RESULT_TYPES)

    def _process(
        self, job: Job, study_uid: str, instances: list[tuple[str, str]], timings: list[tuple[str, float]]
    ) -> list[repository.ResultRecord]:
        """Analyse, encode and write a job's results; ``timings`` receives (stage, seconds) pairs."""
        work = self._analyse(instances)
        if not work.analyses:
            reasons = "; ".join(f"{uid}: {reason}" for uid, reason in work.skipped)
            raise NothingToProcess(f"no processable image in study {study_uid} ({reasons})")
        runs = self.models.runs
        report = build_report(work.analyses, caption=study_caption(work.analyses), models=runs)
        report = with_skipped_instances(report, work.skipped)
        context = EncodeContext(
            job_key=f"{study_uid}/{job.version}",
            seg_series_number=self.config.results.seg_series_number,
            sr_series_number=self.config.results.sr_series_number,
            sc_series_number=self.config.results.sc_series_number,
            pm_series_number=self.config.results.pm_series_number,
            pdf_series_number=self.config.results.pdf_series_number,
            ko_series_number=self.config.results.ko_series_number,
            kinds=self.result_kinds(),
            institution_name=self.config.results.institution_name or None,
            # The report's models: these and the reference model that scored the patches, if any.
            models=report.models,
        )
        timings.extend((stage, seconds) for a in work.analyses for stage, seconds in a.stage_seconds.items())
        encoding = time.perf_counter()
        encoded = encode_study(work.sources, work.analyses, report, context)
        timings.append(("encode", time.perf_counter() - encoding))
        self._write_thumbnails(job, study_uid, work, context)
        return [self._write_result(job, study_uid, item.kind, item.dataset) for item in encoded]

    def _write_thumbnails(self, job: Job, study_uid: str, work: StudyWork, context: EncodeContext) -> None:
        """Save the dashboard's thumbnails beside the results; a failure only costs the pictures."""
        folder = StorageLayout(self.config.node.storage_dir).thumbnail_dir(study_uid, job.id)
        try:
            capture = load_templates(context.templates_dir).capture
            write_thumbnails(folder, work.sources, work.analyses, capture)
        except (OSError, ValueError, MiemssError) as exc:
            logger.warning(
                "job %d: thumbnails not written: %s",
                job.id,
                exc,
                extra={"action": "job.thumbnails_failed", "job_id": job.id},
            )

    def _analyse(self, instances: list[tuple[str, str]]) -> StudyWork:
        work = StudyWork()
        storage = self.config.node.storage_dir
        for sop_uid, path in instances:
            try:
                ds = read_dicom_file(StorageLayout(storage).resolve(path))
                if not is_image_dataset(ds):
                    work.skipped.append((sop_uid, "not an image (stored, not processed)"))
                    continue
                max_frames = self.config.worker.max_frames or None
                analyses = analyse_dataset(ds, self.config.pipeline, self.models, max_frames=max_frames)
            except (DecodeError, StageError) as exc:
                # One bad image must not cost the study its other images' results.
                logger.warning(
                    "instance %s not processed: %s",
                    sop_uid,
                    exc,
                    extra={"action": "job.instance_skipped", "sop_instance_uid": sop_uid},
                )
                work.skipped.append((sop_uid, str(exc)))
                continue
            work.sources.append(ds)
            work.analyses.extend(analyses)
        return work

    def _write_result(self, job: Job, study_uid: str, kind: str, ds: Dataset) -> repository.ResultRecord:
        layout = StorageLayout(self.config.node.storage_dir)
        relative = layout.result_path(study_uid, job.id, kind, str(ds.SOPInstanceUID))
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_atomically(layout.resolve(relative), buffer.getvalue())
        return repository.ResultRecord(
            kind=kind, sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID), path=relative.as_posix()
        )

    def _finish(
        self,
        job: Job,
        results: list[repository.ResultRecord],
        extra: dict[str, object],
        started: float,
        note: str = "",
        timings: list[tuple[str, float]] | None = None,
    ) -> None:
        # A destination gets a delivery only when some result is of a type it takes.
        kinds = {result.kind for result in results}
        destinations = [d.name for d in self.config.destinations if kinds & set(d.result_types)]
        with self.sessions.begin() as session:
            recorded = repository.finish_job_encoded(
                session,
                job_id=job.id,
                owner=self.owner,
                results=results,
                destinations=destinations,
                now=utcnow(),
                note=note,
            )
            if recorded and timings:
                # Read by /metrics in the node's main process (workers run in other processes).
                repository.record_stage_durations(session, job_id=job.id, durations=timings, now=utcnow())
        seconds = time.perf_counter() - started
        if not recorded:
            logger.warning("job %d lost its lease before finishing", job.id, extra={"action": "job.lease_lost", **extra})
            return
        logger.info(
            "job %d encoded %d result(s) in %.2f s%s",
            job.id,
            len(results),
            seconds,
            f" ({note})" if note else "",
            extra={"action": "job.encoded", "seconds": round(seconds, 3), **extra},
        )

    def _fail(self, job: Job, exc: BaseException, extra: dict[str, object]) -> None:
        error = f"{type(exc).__name__}: {exc}"
        with self.sessions.begin() as session:
            state = repository.fail_job(
                session, job_id=job.id, owner=self.owner, error=error, policy=self.policy, retryable=True, now=utcnow()
            )
        level = logging.ERROR if state is not None and state.value == "failed" else logging.INFO
        logger.log(
            level,
            "job %d attempt %d failed (%s): %s",
            job.id,
            job.attempts,
            state.value if state else "lease lost",
            error,
            extra={"action": "job.failed" if level == logging.ERROR else "job.retry", **extra},
            exc_info=level == logging.ERROR,
        )


def with_skipped_instances(report: Report, skipped: list[tuple[str, str]]) -> Report:
    """Add to the report text which instances were not analysed and why, so the reader knows."""
    if not skipped:
        return report
    lines = [f"Instance {uid} was not analysed: {reason}." for uid, reason in skipped]
    return replace(report, text="\n".join([report.text, *lines]))


class LeaseKeeper:
    """Renews a job's lease in the background while the job runs (a heartbeat)."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, owner: str, lease_seconds: float) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                with self.sessions.begin() as session:
                    held = repository.renew_lease(
                        session, job_id=self.job_id, owner=self.owner, lease_seconds=self.lease_seconds, now=utcnow()
                    )
            except Exception:  # noqa: BLE001 - a failed heartbeat is retried at the next beat
                logger.warning("lease renewal of job %d failed", self.job_id, extra={"action": "job.lease_renew_failed"})
                continue
            if not held:
                return
