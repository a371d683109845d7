"""Claims a job, runs the pipeline on the study's images, encodes the results, queues deliveries."""

from __future__ import annotations

import errno
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from io import BytesIO

from pydicom import Dataset
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import DEFAULT_RESULT_TYPES, Config, Destination
from miemss_node.doorbell import Bell
from miemss_node.encode.context import PredecessorDocument, Verification
from miemss_node.encode.ko import key_image_index
from miemss_node.encode.overlay import remember_overlay
from miemss_node.encode.study import EncodeContext, encode_study
from miemss_node.encode.templates import load_templates
from miemss_node.encode.uids import series_uid
from miemss_node.errors import (
    ConfigError,
    EncodeError,
    MiemssError,
    OutOfSpaceError,
    TemplateError,
    describe_error,
)
from miemss_node.images import (
    ANALYSIS_IMPORTS,
    ENCODING_IMPORTS,
    ImageOutcome,
    ImagePool,
    analyse_stored_image,
    import_deferred,
    ordered_runs,
)
from miemss_node.pipeline.base import ImageAnalysis, ModelRun, Report
from miemss_node.pipeline.caption import caption_key_image, study_caption
from miemss_node.pipeline.decode import read_dicom_file
from miemss_node.pipeline.models import NO_MODELS, ModelSet
from miemss_node.pipeline.report import build_report
from miemss_node.queue import repository
from miemss_node.queue.lease import LeaseKeeper, lease_owner_id
from miemss_node.queue.models import Job, JobState
from miemss_node.queue.retry import PROGRAMMING_ERRORS, RetryDecision, RetryPolicy
from miemss_node.review.findings import (
    all_rejected,
    finding_records,
    keep_accepted,
    review_statement,
    reviewed_report,
)
from miemss_node.review.reviewers import reviewer_named
from miemss_node.storage import StorageLayout, free_bytes, write_atomically
from miemss_node.thumbnails import write_thumbnails
from miemss_node.warmup import warm_up_encoders

logger = logging.getLogger(__name__)


class NothingToProcess(MiemssError):
    """The study has no image this node can decode: its instances stay stored, nothing is sent."""


#: Job errors that fail at once: building our objects or reading our templates fails the same way
#: again, and so does a bug in our code. Everything else is retried up to ``max_attempts``.
PERMANENT_JOB_ERRORS: tuple[type[BaseException], ...] = (EncodeError, TemplateError, ConfigError, *PROGRAMMING_ERRORS)

#: Verifying Organization of a reviewed SR when neither the reviewer nor ``[results]`` names one.
UNKNOWN_ORGANIZATION = "Organization not configured"

#: Threads that write a job's result files, each waiting on its own fsyncs.
RESULT_WRITERS = 4

#: Job errors that wait, without using up attempts, until the resource is back.
WAITING_JOB_ERRORS: tuple[type[BaseException], ...] = (OutOfSpaceError,)


@dataclass(kw_only=True)
class StudyWork:
    """What one job has read and analysed so far."""

    sources: list[Dataset] = field(default_factory=list)
    analyses: list[ImageAnalysis] = field(default_factory=list)
    #: (SOP Instance UID, reason) for each instance not processed.
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Worker:
    """Runs queued jobs one at a time; a job's images one after the other, or side by side in a pool."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: Config,
        models: ModelSet = NO_MODELS,
        *,
        image_processes: int = 1,
        worker_processes: int = 1,
        results_bell: Bell | None = None,
    ) -> None:
        """``image_processes`` > 1 analyses a job's images in that many processes of their own, which
        load the ViT and chest models themselves (see :mod:`~miemss_node.images`); ``models`` then
        needs only the BLIP. ``worker_processes`` jobs run at once on the machine and share its cores.
        ``results_bell`` is rung as soon as a job's results are recorded (:mod:`~miemss_node.doorbell`).
        """
        self.results_bell = results_bell
        self.sessions = sessions
        self.config = config
        #: Loaded once per worker process (see ``Node.start``) and shared by its worker threads.
        self.models = models
        self.pool = (
            ImagePool(config, image_processes, worker_processes=worker_processes) if image_processes > 1 else None
        )
        self.owner = lease_owner_id()
        self.policy = RetryPolicy(
            max_attempts=config.worker.max_attempts,
            backoff_seconds=config.worker.retry_backoff_seconds,
            permanent=PERMANENT_JOB_ERRORS,
            waiting=WAITING_JOB_ERRORS,
        )
        #: Checked once here; a broken template stops the worker before it takes any job.
        self.templates = load_templates()

    def warm(self) -> None:
        """Import what the first job would import on first use, encode a made-up film once (first-use
        costs of the encoders), and start the image pool's processes, so that the first job waits for
        none of them."""
        import_deferred(ENCODING_IMPORTS if self.pool is not None else (*ANALYSIS_IMPORTS, *ENCODING_IMPORTS))
        warm_up_encoders(self.result_kinds())
        if self.pool is not None:
            self.pool.warm()

    def close(self) -> None:
        """Stop the image pool's processes."""
        if self.pool is not None:
            self.pool.close()

    def model_runs(self) -> tuple[ModelRun, ...]:
        """The models that run on a job's images, wherever they are loaded."""
        if self.pool is None:
            return self.models.runs
        return ordered_runs((*self.models.runs, *self.pool.model_runs()))

    def run_once(self) -> int:
        """Claim and run one job; returns 1 when a job ran, 0 when none was due.

        This is the job's error boundary: whatever an attempt raises ends the attempt, with its
        cause recorded in the job, and the retry policy decides whether and when it runs again.
        """
        with self.sessions.begin() as session:
            job = repository.claim_job(
                session, owner=self.owner, lease_seconds=self.config.worker.lease_seconds, now=utcnow()
            )
            if job is None:
                return 0
            study = repository.study_of_job(session, job)
            plan = repository.review_plan(session, job)
            # A reviewed version is made from the images the reviewed job analysed, not later ones.
            received_by = None
            if job.reviewed_job_id is not None:
                received_by = repository.job_encoded_at(session, job.reviewed_job_id)
            stored = repository.study_instances(session, study.id, received_by=received_by)
            instances = [(i.sop_instance_uid, i.path) for i in stored]
            study_uid = study.study_instance_uid
            # A reviewed version supersedes the version reviewed; any other the study's latest.
            if plan is not None and job.reviewed_job_id is not None:
                previous = repository.job_report(session, job.reviewed_job_id)
            else:
                previous = repository.previous_report(session, job)
            predecessor = None if previous is None else predecessor_document(study_uid, *previous)
        extra = {"job_id": job.id, "study_uid": study_uid, "worker": self.owner}
        logger.info("job %d started (attempt %d)", job.id, job.attempts, extra={"action": "job.started", **extra})
        started = time.perf_counter()
        timings: list[tuple[str, float]] = []
        lease = self.config.worker.lease_seconds
        with LeaseKeeper(lambda: self._renew(job.id), lease / 3, name=f"lease of job {job.id}"):
            try:
                self._check_free_space()
                results, findings, work = self._process(job, study_uid, instances, timings, predecessor, plan)
            except NothingToProcess as exc:
                self._finish(job, [], extra, started, note=str(exc), plan=plan)
                return 1
            except Exception as exc:  # noqa: BLE001 - the job's error boundary: recorded, then the policy decides
                self._fail(job, exc, extra)
                return 1
        self._finish(job, results, extra, started, timings=timings, plan=plan, findings=findings)
        if self.results_bell is not None:
            self.results_bell.set()  # the senders start now, not after the thumbnails or at their next poll
        # After the results are recorded, so the sender starts while the dashboard's pictures are
        # drawn (0.1-0.2 s of a 2k film's latency); they are not part of what is delivered.
        self._write_thumbnails(job, study_uid, work)
        return 1

    def _renew(self, job_id: int) -> bool:
        with self.sessions.begin() as session:
            return repository.renew_lease(
                session, job_id=job_id, owner=self.owner, lease_seconds=self.config.worker.lease_seconds, now=utcnow()
            )

    def _check_free_space(self) -> None:
        """Raise OutOfSpaceError while the storage disk has less than ``[node] min_free_disk_mb`` free."""
        minimum = self.config.node.min_free_disk_mb * 2**20
        free = free_bytes(self.config.node.storage_dir)
        if free < minimum:
            raise OutOfSpaceError(
                f"{free / 2**20:.0f} MB free on the storage disk, below [node] min_free_disk_mb = "
                f"{self.config.node.min_free_disk_mb}; the job waits until there is room",
                free_bytes=free,
            )

    def result_kinds(self, plan: repository.ReviewPlan | None = None) -> frozenset[str]:
        """The result types to encode: every type some destination gets (the default with none).

        A reviewed version is for the destinations whose results were held; when every finding was
        rejected it is the short SR that says so.
        """
        destinations = self.config.destinations if plan is None else self._released(plan)
        if plan is not None and all_rejected(plan):
            return frozenset({"SR"})
        wanted = {kind for destination in destinations for kind in destination.result_types}
        return frozenset(wanted or DEFAULT_RESULT_TYPES)

    def _released(self, plan: repository.ReviewPlan) -> list[Destination]:
        """The configured destinations a review released held results for."""
        found = (self.config.destination(name) for name in plan.destinations)
        return [destination for destination in found if destination is not None]

    def _verification(self, plan: repository.ReviewPlan) -> tuple[Verification, str]:
        """The SR's Verifying Observer for a review, and the review in words."""
        reviewer = reviewer_named(self.config.reviewers, plan.reviewer)
        # A reviewer removed from the config since keeps their name (a single-component Person Name).
        person = reviewer.person_name if reviewer is not None else f"{plan.reviewer}^"
        organization = (
            (reviewer.organization if reviewer is not None else "")
            or self.config.results.institution_name
            or UNKNOWN_ORGANIZATION
        )
        verification = Verification(observer_name=person, organization=organization, verified_at=plan.decided_at)
        return verification, review_statement(plan, person, organization)

    def _process(
        self,
        job: Job,
        study_uid: str,
        instances: list[tuple[str, str]],
        timings: list[tuple[str, float]],
        predecessor: PredecessorDocument | None,
        plan: repository.ReviewPlan | None = None,
    ) -> tuple[list[repository.ResultRecord], list[repository.FindingRecord], StudyWork]:
        """Analyse, encode and write a job's results; ``timings`` receives (stage, seconds) pairs.

        Returns the written results, the findings a reviewer may decide on (none for a reviewed
        version, which holds only the accepted findings of the version reviewed), and the analysed
        study (for the dashboard's thumbnails, written once the results are on their way).
        """
        kinds = self.result_kinds(plan)
        work = self._analyse(instances, draw_overlays=bool(kinds & {"SC", "PDF"}))
        if not work.analyses:
            reasons = "; ".join(f"{uid}: {reason}" for uid, reason in work.skipped)
            raise NothingToProcess(f"no processable image in study {study_uid} ({reasons})")
        findings = finding_records(work.analyses) if plan is None else []
        verification = statement = None
        if plan is not None:
            work.analyses = keep_accepted(work.analyses, plan)
            verification, statement = self._verification(plan)
        # One caption per study, of its key image (each costs seconds on a CPU).
        work.analyses = caption_key_image(work.analyses, key_image_index(work.analyses), self.models.blip)
        report = build_report(work.analyses, caption=study_caption(work.analyses), models=self.model_runs())
        report = with_skipped_instances(report, work.skipped)
        if statement is not None:
            report = reviewed_report(report, statement)
        context = EncodeContext(
            job_key=job_key(study_uid, job.version),
            series_numbers=self.config.results.series_number_map(),
            version=job.version,
            predecessor=predecessor,
            kinds=kinds,
            institution_name=self.config.results.institution_name or None,
            # The report's models: these and the reference model that scored the patches, if any.
            models=report.models,
            verification=verification,
        )
        timings.extend((stage, seconds) for a in work.analyses for stage, seconds in a.stage_seconds.items())
        encoding = time.perf_counter()
        encoded = encode_study(work.sources, work.analyses, report, context)
        timings.append(("encode", time.perf_counter() - encoding))
        self._check_free_space()
        # Side by side: each result is fsynced twice (the file, then its folder), and fsync lets go of
        # the GIL; a 4-image study's 9 results took 0.3 s one after the other.
        with ThreadPoolExecutor(max_workers=RESULT_WRITERS, thread_name_prefix="result-writer") as writers:
            written = writers.map(lambda item: self._write_result(job, study_uid, item.kind, item.dataset), encoded)
            results = list(written)
        return results, findings, work

    def _write_thumbnails(self, job: Job, study_uid: str, work: StudyWork) -> None:
        """Save the dashboard's thumbnails beside the results; a failure only costs the pictures."""
        folder = StorageLayout(self.config.node.storage_dir).thumbnail_dir(study_uid, job.id)
        try:
            write_thumbnails(folder, work.sources, work.analyses, self.templates.capture)
        except (OSError, ValueError, MiemssError) as exc:
            logger.warning(
                "job %d: thumbnails not written: %s",
                job.id,
                exc,
                extra={"action": "job.thumbnails_failed", "job_id": job.id},
            )

    def _analyse(self, instances: list[tuple[str, str]], *, draw_overlays: bool = False) -> StudyWork:
        """Analyse the study's instances (in the pool when there is one) and read their headers.

        ``draw_overlays``: the results include an SC or a PDF, whose overlays the pool's processes
        draw too, side by side, instead of this process one after the other."""
        layout = StorageLayout(self.config.node.storage_dir)
        files = [(uid, layout.resolve(path)) for uid, path in instances]
        max_frames = self.config.worker.max_frames or None
        outcomes: list[ImageOutcome]
        if self.pool is None:
            outcomes = [
                analyse_stored_image(uid, path, self.config.pipeline, self.models, max_frames) for uid, path in files
            ]
        else:
            capture = self.templates.capture
            outcomes = self.pool.analyse(files, max_frames, capture if draw_overlays else None)
            for outcome in outcomes:
                for analysis, overlay in zip(outcome.analyses, outcome.overlays, strict=False):
                    remember_overlay(analysis, capture, overlay)
        work = StudyWork()
        for outcome, (sop_uid, path) in zip(outcomes, files, strict=True):
            if outcome.skipped is not None:
                if outcome.skip_level is not None:
                    # One bad image must not cost the study its other images' results.
                    logger.log(
                        outcome.skip_level,
                        "instance %s not processed: %s",
                        sop_uid,
                        outcome.skipped,
                        extra={"action": "job.instance_skipped", "sop_instance_uid": sop_uid},
                    )
                work.skipped.append((sop_uid, outcome.skipped))
                continue
            # The encoders need the header only; the pixels were decoded once, by the analysis.
            work.sources.append(read_dicom_file(path, header_only=True))
            work.analyses.extend(outcome.analyses)
        return work

    def _write_result(self, job: Job, study_uid: str, kind: str, ds: Dataset) -> repository.ResultRecord:
        layout = StorageLayout(self.config.node.storage_dir)
        relative = layout.result_path(study_uid, job.id, kind, str(ds.SOPInstanceUID))
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        try:
            write_atomically(layout.resolve(relative), buffer.getvalue())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError(f"the storage disk is full writing {relative}; the job waits") from exc
            raise
        return repository.ResultRecord(
            kind=kind,
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            path=relative.as_posix(),
        )

    def _finish(
        self,
        job: Job,
        results: list[repository.ResultRecord],
        extra: dict[str, object],
        started: float,
        note: str = "",
        timings: list[tuple[str, float]] | None = None,
        plan: repository.ReviewPlan | None = None,
        findings: list[repository.FindingRecord] | None = None,
    ) -> None:
        # A destination gets a delivery only when some result is of a type it takes.
        kinds = {result.kind for result in results}
        if plan is None:
            wanted = [d for d in self.config.destinations if kinds & set(d.result_types)]
            destinations = [d.name for d in wanted if not d.review]
            held = [d.name for d in wanted if d.review]
        else:
            # The reviewed version goes where results were held, unless every finding was rejected
            # and the destination asked for nothing then.
            nothing = all_rejected(plan)
            destinations = [
                d.name
                for d in self._released(plan)
                if kinds & set(d.result_types) and not (nothing and d.all_rejected == "nothing")
            ]
            held = []
        with self.sessions.begin() as session:
            recorded = repository.finish_job_encoded(
                session,
                job_id=job.id,
                owner=self.owner,
                results=results,
                destinations=destinations,
                now=utcnow(),
                note=note,
                held=held,
                findings=findings,
            )
            if recorded and timings:
                # Read by /metrics in the node's main process (workers run in other processes).
                repository.record_stage_durations(session, job_id=job.id, durations=timings, now=utcnow())
        seconds = time.perf_counter() - started
        if not recorded:
            logger.warning(
                "job %d lost its lease before finishing", job.id, extra={"action": "job.lease_lost", **extra}
            )
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
        """End a failed attempt: record its cause and let the retry policy decide what comes next."""
        error = describe_error(exc)
        decision = self.policy.decide(exc, job.attempts)
        with self.sessions.begin() as session:
            state = repository.fail_job(
                session,
                job_id=job.id,
                owner=self.owner,
                error=error,
                decision=decision,
                delay_seconds=self.policy.delay(max(job.attempts, 1)),
                now=utcnow(),
            )
        if state is None:
            logger.warning(
                "job %d lost its lease before failing: %s", job.id, error, extra={"action": "job.lease_lost", **extra}
            )
        elif state is JobState.FAILED:
            logger.error(
                "job %d attempt %d failed for good: %s",
                job.id,
                job.attempts,
                error,
                extra={"action": "job.failed", "decision": decision.value, **extra},
                exc_info=exc,
            )
        elif decision is RetryDecision.WAIT:
            logger.warning("job %d waits: %s", job.id, error, extra={"action": "job.waiting", **extra})
        else:
            logger.info(
                "job %d attempt %d failed, will retry: %s",
                job.id,
                job.attempts,
                error,
                extra={"action": "job.retry", **extra},
            )


def job_key(study_uid: str, version: int) -> str:
    """The key a job's result UIDs derive from: the study and the version of its results."""
    return f"{study_uid}/{version}"


def predecessor_document(
    study_uid: str, version: int, sop_class_uid: str, sop_instance_uid: str
) -> PredecessorDocument:
    """The SR that version ``version`` of a study's results sent (its series UID is derived from the job)."""
    return PredecessorDocument(
        study_instance_uid=study_uid,
        series_instance_uid=str(series_uid(job_key(study_uid, version), "SR")),
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
    )


def with_skipped_instances(report: Report, skipped: list[tuple[str, str]]) -> Report:
    """Add to the report text which instances were not analysed and why, so the reader knows."""
    if not skipped:
        return report
    lines = [f"Instance {uid} was not analysed: {reason}." for uid, reason in skipped]
    return replace(report, text="\n".join([report.text, *lines]))
