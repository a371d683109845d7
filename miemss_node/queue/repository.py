"""Every query the node runs, each a small function taking a session.

The callers own the transaction (``with sessions.begin() as session``), so a function's writes commit
together with the caller's. Claims work on SQLite and PostgreSQL alike: candidates are selected
(``FOR UPDATE SKIP LOCKED`` where the database has it) and then taken with a conditional UPDATE
whose row count says whether this caller won.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, case, delete, func, select, update
from sqlalchemy import Result as Result_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from miemss_node.queue.models import (
    ConflictKind,
    Delivery,
    DeliveryState,
    Finding,
    FindingDecision,
    Instance,
    Job,
    JobEvent,
    JobState,
    ReceiveConflict,
    Result,
    Review,
    SentObject,
    StageDuration,
    Study,
)
from miemss_node.queue.retry import RetryDecision


@dataclass(frozen=True, kw_only=True)
class InstanceRecord:
    """What the receiver knows about an instance it has just written to disk."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    calling_ae_title: str
    #: SHA-256 of the dataset bytes ("" when unknown).
    digest: str = ""
    #: The patient key of the instance (see ``Study.patient_key``; "" when unknown).
    patient_key: str = ""


@dataclass(frozen=True, kw_only=True)
class ResultRecord:
    """A result object the worker has written to disk."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str


@dataclass(frozen=True, kw_only=True)
class FindingRecord:
    """A region a job flagged, as recorded for review (see ``Finding``)."""

    number: int
    sop_instance_uid: str
    frame_number: int | None
    label: int
    kind: str
    pathology: str | None
    location: str
    area_px: int
    area_mm2: float | None
    mean_score: float
    max_score: float
    bbox: str


#: Delivery states that still wait for something: the sender, or a reviewer.
OPEN_DELIVERY_STATES = (DeliveryState.PENDING, DeliveryState.AWAITING_REVIEW)

#: Delivery states that count as done when a job's state is decided: a held delivery a reviewer
#: decided on is replaced by the reviewed version's delivery.
DONE_DELIVERY_STATES = frozenset({DeliveryState.DELIVERED, DeliveryState.REVIEWED})


def instance_exists(session: Session, sop_instance_uid: str) -> bool:
    """True when this SOP Instance UID is already recorded."""
    return find_instance(session, sop_instance_uid) is not None


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    """The recorded instance of this SOP Instance UID, with its study loaded, or None."""
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def _insert(session: Session, table: type) -> Any:
    """An INSERT for this database that can say ON CONFLICT DO NOTHING (SQLite, PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def ensure_study(session: Session, *, study_instance_uid: str, patient_key: str, now: datetime) -> Study:
    """The study of this UID, created if missing (safe against a concurrent creation).

    A study recorded before patient keys existed takes the given key.
    """
    session.execute(
        _insert(session, Study)
        .values(
            study_instance_uid=study_instance_uid,
            first_received_at=now,
            last_received_at=now,
            unsettled=False,
            patient_key=patient_key or None,
        )
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
    )
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid).execution_options(populate_existing=True)
    ).one()
    if study.patient_key is None and patient_key:
        study.patient_key = patient_key
    return study


def claim_instance(session: Session, study: Study, record: InstanceRecord, now: datetime) -> bool:
    """Insert the instance's row unless its SOP Instance UID is recorded; True when this call did.

    The row is the claim: a concurrent receiver of the same UID waits for this transaction and then
    finds the row, so only the claimant places a file (database first, then the file).
    """
    inserted = session.execute(
        _insert(session, Instance)
        .values(
            study_id=study.id,
            sop_instance_uid=record.sop_instance_uid,
            sop_class_uid=record.sop_class_uid,
            series_instance_uid=record.series_instance_uid,
            transfer_syntax_uid=record.transfer_syntax_uid,
            path=record.path,
            size_bytes=record.size_bytes,
            digest=record.digest or None,
            calling_ae_title=record.calling_ae_title,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(Instance.id)
    ).scalar()
    if inserted is None:
        return False
    study.last_received_at = now
    study.unsettled = True
    return True


def record_instance(session: Session, record: InstanceRecord, now: datetime) -> None:
    """Record a stored instance and mark its study as having unsettled instances."""
    study = ensure_study(
        session, study_instance_uid=record.study_instance_uid, patient_key=record.patient_key, now=now
    )
    claim_instance(session, study, record, now)


def record_conflict(
    session: Session,
    *,
    kind: ConflictKind,
    study_instance_uid: str,
    stored_study_instance_uid: str | None,
    sop_instance_uid: str,
    detail: str,
    calling_ae_title: str,
    now: datetime,
) -> None:
    """Record an instance refused as conflicting with stored data."""
    session.add(
        ReceiveConflict(
            kind=kind,
            study_instance_uid=study_instance_uid,
            stored_study_instance_uid=stored_study_instance_uid,
            sop_instance_uid=sop_instance_uid,
            detail=detail,
            calling_ae_title=calling_ae_title[:16],
            at=now,
        )
    )


def study_conflicts(session: Session, study_instance_uid: str, *, limit: int = 100) -> list[ReceiveConflict]:
    """The latest conflicting instances refused for a study (as the refused or as the stored copy)."""
    return list(
        session.scalars(
            select(ReceiveConflict)
            .where(
                (ReceiveConflict.study_instance_uid == study_instance_uid)
                | (ReceiveConflict.stored_study_instance_uid == study_instance_uid)
            )
            .order_by(ReceiveConflict.id.desc())
            .limit(limit)
        )
    )


def conflict_counts(session: Session, study_instance_uids: list[str]) -> dict[str, int]:
    """How many conflicting instances were refused per study UID (only those with some)."""
    if not study_instance_uids:
        return {}
    rows = session.execute(
        select(ReceiveConflict.study_instance_uid, func.count())
        .where(ReceiveConflict.study_instance_uid.in_(study_instance_uids))
        .group_by(ReceiveConflict.study_instance_uid)
    )
    return {uid: int(count) for uid, count in rows}


def earliest_unsettled_arrival(session: Session) -> datetime | None:
    """When the unsettled study that has been quiet longest last received an instance; None if none."""
    return session.scalar(select(func.min(Study.last_received_at)).where(Study.unsettled.is_(True)))


def settle_due_studies(
    session: Session,
    *,
    now: datetime,
    settle_seconds: float,
    max_attempts: int,
    reprocess_late_instances: bool,
) -> list[Job]:
    """Queue one job for each study quiet for ``settle_seconds``; return the new jobs.

    A study that already has a queued job is only marked settled: that job reads the study's
    instances when it runs, so it covers the late ones too.
    """
    cutoff = now - timedelta(seconds=settle_seconds)
    due = session.scalars(
        select(Study).where(Study.unsettled.is_(True), Study.last_received_at <= cutoff)
    ).all()
    created = []
    for study in due:
        taken = session.execute(
            update(Study)
            .where(Study.id == study.id, Study.unsettled.is_(True), Study.last_received_at == study.last_received_at)
            .values(unsettled=False)
        )
        if _rowcount(taken) != 1:
            continue  # another settler took it, or a new instance just arrived
        # A queued reviewed version reads only the instances its review covered, not the late ones.
        versions = session.execute(
            select(
                func.max(Job.version),
                func.count(Job.id).filter(Job.state == JobState.QUEUED, Job.reviewed_job_id.is_(None)),
            ).where(Job.study_id == study.id)
        ).one()
        latest, queued = versions[0] or 0, versions[1]
        if queued or (latest and not reprocess_late_instances):
            continue
        created.append(_queue_job(session, study.id, latest + 1, max_attempts, now, "study settled"))
    return created


def _queue_job(
    session: Session,
    study_id: int,
    version: int,
    max_attempts: int,
    now: datetime,
    detail: str,
    reviewed_job_id: int | None = None,
) -> Job:
    """Add a queued job for a study's ``version`` (with its first event) and flush it."""
    job = Job(
        study_id=study_id,
        version=version,
        reviewed_job_id=reviewed_job_id,
        state=JobState.QUEUED,
        attempts=0,
        max_attempts=max_attempts,
        not_before=now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    _add_event(session, job, now, detail)
    return job


def claim_job(session: Session, *, owner: str, lease_seconds: float, now: datetime) -> Job | None:
    """Claim the oldest due queued job for ``owner`` with a lease, counting an attempt."""
    candidates = session.scalars(
        select(Job.id)
        .where(Job.state == JobState.QUEUED, Job.not_before <= now)
        .order_by(Job.not_before, Job.id)
        .limit(5)
        .with_for_update(skip_locked=True)
    ).all()
    for job_id in candidates:
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                attempts=Job.attempts + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
        )
        if _rowcount(taken) == 1:
            job = session.get_one(Job, job_id, populate_existing=True)
            _add_event(session, job, now, f"claimed by {owner} (attempt {job.attempts})")
            return job
    return None


def renew_lease(session: Session, *, job_id: int, owner: str, lease_seconds: float, now: datetime) -> bool:
    """Extend a running job's lease; False when ``owner`` no longer holds it."""
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
    )
    return _rowcount(renewed) == 1


def reclaim_expired_leases(session: Session, *, now: datetime) -> list[Job]:
    """Put running jobs whose lease expired back in the queue, or fail them when out of attempts."""
    expired = session.scalars(
        select(Job).where(Job.state == JobState.RUNNING, Job.lease_expires_at < now).with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        error = f"lease of {job.lease_owner} expired (worker died or hung) on attempt {job.attempts}"
        _retry_or_fail(session, job, error=error, retry_at=now if job.attempts < job.max_attempts else None, now=now)
    return list(expired)


def study_of_job(session: Session, job: Job) -> Study:
    """The study a job processes."""
    return session.get_one(Study, job.study_id)


def study_instances(session: Session, study_id: int, *, received_by: datetime | None = None) -> list[Instance]:
    """The stored instances of a study, in arrival order (only those received by ``received_by`` if given)."""
    query = select(Instance).where(Instance.study_id == study_id)
    if received_by is not None:
        query = query.where(Instance.received_at <= received_by)
    return list(session.scalars(query.order_by(Instance.id)))


def job_encoded_at(session: Session, job_id: int) -> datetime | None:
    """When a job recorded its results (its first ENCODED or DELIVERED event), or None."""
    return session.scalar(
        select(func.min(JobEvent.at)).where(
            JobEvent.job_id == job_id, JobEvent.state.in_([JobState.ENCODED, JobState.DELIVERED])
        )
    )


def previous_report(session: Session, job: Job) -> tuple[int, str, str] | None:
    """The SR of the latest earlier version of the job's study: (version, SOP Class UID, SOP
    Instance UID), or None when no earlier job made one."""
    row = session.execute(
        select(Job.version, Result.sop_class_uid, Result.sop_instance_uid)
        .join(Result, Result.job_id == Job.id)
        .where(Job.study_id == job.study_id, Job.version < job.version, Result.kind == "SR")
        .order_by(Job.version.desc(), Result.id)
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


def job_report(session: Session, job_id: int) -> tuple[int, str, str] | None:
    """The SR a job made: (its version, SOP Class UID, SOP Instance UID), or None when it made none."""
    row = session.execute(
        select(Job.version, Result.sop_class_uid, Result.sop_instance_uid)
        .join(Result, Result.job_id == Job.id)
        .where(Job.id == job_id, Result.kind == "SR")
        .order_by(Result.id)
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


def finish_job_encoded(
    session: Session,
    *,
    job_id: int,
    owner: str,
    results: list[ResultRecord],
    destinations: list[str],
    now: datetime,
    note: str = "",
    held: list[str] | None = None,
    findings: list[FindingRecord] | None = None,
) -> bool:
    """Record a job's results and queue one delivery per destination; ``note`` goes to the job's events.

    Deliveries to the ``held`` destinations (``review = true``) wait in AWAITING_REVIEW until a
    reviewer decides on the job's ``findings``, which are recorded for that.

    Returns False (recording nothing) when ``owner`` lost the lease meanwhile: the job runs
    elsewhere, and that run's identical UIDs make the results the same.
    """
    job = session.get_one(Job, job_id, with_for_update=True, populate_existing=True)
    if job.state != JobState.RUNNING or job.lease_owner != owner:
        return False
    for record in results:
        existing = session.scalar(select(Result).where(Result.sop_instance_uid == record.sop_instance_uid))
        if existing is None:
            session.add(Result(job_id=job.id, **record.__dict__))
    for name in destinations:
        session.add(
            Delivery(job_id=job.id, destination=name, state=DeliveryState.PENDING, next_attempt_at=now, created_at=now)
        )
    for name in held or []:
        session.add(
            Delivery(
                job_id=job.id, destination=name, state=DeliveryState.AWAITING_REVIEW, next_attempt_at=now, created_at=now
            )
        )
    session.add_all(Finding(job_id=job.id, **record.__dict__) for record in findings or [])
    job.state = JobState.ENCODED if destinations or held else JobState.DELIVERED
    job.lease_owner = None
    job.lease_expires_at = None
    job.last_error = None
    job.updated_at = now
    detail = f"{len(results)} result(s) for {len(destinations)} destination(s)"
    if held:
        detail += f", held for review for {len(held)}"
    _add_event(session, job, now, f"{detail}; {note}" if note else detail)
    return True


def fail_job(
    session: Session,
    *,
    job_id: int,
    owner: str,
    error: str,
    decision: RetryDecision,
    delay_seconds: float,
    now: datetime,
) -> JobState | None:
    """Record a failed attempt as ``decision`` says: back to the queue after ``delay_seconds``
    (RETRY while attempts remain; WAIT without using up the attempt), or failed for good.

    Returns the new state, or None when ``owner`` no longer holds the job.
    """
    job = session.get_one(Job, job_id, with_for_update=True, populate_existing=True)
    if job.state != JobState.RUNNING or job.lease_owner != owner:
        return None
    retry_at = None
    if decision is RetryDecision.WAIT:
        job.attempts = max(job.attempts - 1, 0)  # waiting for a resource is not a failed try
        retry_at = now + timedelta(seconds=delay_seconds)
    elif decision is RetryDecision.RETRY and job.attempts < job.max_attempts:
        retry_at = now + timedelta(seconds=delay_seconds)
    _retry_or_fail(session, job, error=error, retry_at=retry_at, now=now)
    return job.state


def _retry_or_fail(session: Session, job: Job, *, error: str, retry_at: datetime | None, now: datetime) -> None:
    job.last_error = error
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    if retry_at is None:
        job.state = JobState.FAILED
    else:
        job.state = JobState.QUEUED
        job.not_before = retry_at
    _add_event(session, job, now, error)


def requeue_job(session: Session, *, job_id: int, now: datetime) -> Job | None:
    """Queue a failed job once more with a fresh attempt budget (operator's ``retry``)."""
    job = session.get(Job, job_id)
    if job is None or job.state != JobState.FAILED:
        return None
    job.state = JobState.QUEUED
    job.attempts = 0
    job.not_before = now
    job.updated_at = now
    _add_event(session, job, now, "requeued by operator")
    return job


def claim_due_deliveries(
    session: Session,
    *,
    owner: str,
    lease_seconds: float,
    now: datetime,
    destination: str | None = None,
    limit: int = 10,
) -> list[Delivery]:
    """Take pending, due deliveries (to ``destination``, or to any) with a lease for ``owner``.

    A delivery whose lease has not expired is being sent by someone: it is skipped. The sender
    renews the lease while it sends (:func:`renew_delivery_lease`), so a slow destination never
    makes a second sender send the same objects; a sender that dies leaves it due once its
    lease expires.
    """
    query = select(Delivery).where(
        Delivery.state == DeliveryState.PENDING,
        Delivery.next_attempt_at <= now,
        (Delivery.lease_expires_at.is_(None)) | (Delivery.lease_expires_at < now),
    )
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    due = session.scalars(
        query.order_by(Delivery.next_attempt_at, Delivery.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    claimed = []
    for delivery in due:
        expired = (Delivery.lease_expires_at.is_(None)) | (Delivery.lease_expires_at < now)
        taken = session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.state == DeliveryState.PENDING, expired)
            .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
        )
        if _rowcount(taken) == 1:
            claimed.append(session.get_one(Delivery, delivery.id, populate_existing=True))
    return claimed


def renew_delivery_lease(
    session: Session, *, delivery_id: int, owner: str, lease_seconds: float, now: datetime
) -> bool:
    """Extend the lease of a delivery being sent; False when ``owner`` no longer holds it."""
    renewed = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.PENDING, Delivery.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    return _rowcount(renewed) == 1


def unsent_results(session: Session, delivery: Delivery) -> list[Result]:
    """The delivery's job's results that its destination has not acknowledged yet, in order."""
    sent = select(SentObject.result_id).where(SentObject.delivery_id == delivery.id)
    return list(
        session.scalars(
            select(Result).where(Result.job_id == delivery.job_id, Result.id.not_in(sent)).order_by(Result.id)
        )
    )


def record_object_sent(session: Session, *, delivery_id: int, result_id: int, owner: str, now: datetime) -> bool:
    """Record that the destination acknowledged one result; False (recording nothing) when
    ``owner`` lost the delivery's lease, so the caller stops sending."""
    delivery = session.get_one(Delivery, delivery_id, with_for_update=True, populate_existing=True)
    if delivery.state != DeliveryState.PENDING or delivery.lease_owner != owner:
        return False
    exists = session.scalar(
        select(SentObject.id).where(SentObject.delivery_id == delivery_id, SentObject.result_id == result_id)
    )
    if exists is None:
        session.add(SentObject(delivery_id=delivery_id, result_id=result_id, sent_at=now))
    return True


def unconfigured_deliveries(session: Session, *, configured: list[str], limit: int = 100) -> list[Delivery]:
    """Pending deliveries to destinations that are no longer configured."""
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.state == DeliveryState.PENDING, Delivery.destination.not_in(configured))
            .order_by(Delivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def job_results(session: Session, job_id: int) -> list[Result]:
    """The result objects of a job, in the order they were produced."""
    return list(session.scalars(select(Result).where(Result.job_id == job_id).order_by(Result.id)))


def record_delivery_outcome(
    session: Session,
    *,
    delivery_id: int,
    delivered: bool,
    retry_at: datetime | None,
    status: int | None,
    error: str | None,
    now: datetime,
    owner: str | None = None,
) -> DeliveryState | None:
    """Record one delivery attempt, release its lease and bring the job's state up to date.

    With ``owner``, records nothing and returns None when that sender no longer holds the lease.
    """
    delivery = session.get_one(Delivery, delivery_id, with_for_update=True, populate_existing=True)
    if owner is not None and (delivery.state != DeliveryState.PENDING or delivery.lease_owner != owner):
        return None
    delivery.lease_owner = None
    delivery.lease_expires_at = None
    delivery.attempts += 1
    delivery.last_status = status
    delivery.last_error = error
    if delivered:
        delivery.state = DeliveryState.DELIVERED
        delivery.delivered_at = now
    elif retry_at is not None:
        delivery.next_attempt_at = retry_at
    else:
        delivery.state = DeliveryState.FAILED
    session.flush()
    _update_job_after_delivery(session, delivery.job_id, now)
    return delivery.state


def _update_job_after_delivery(session: Session, job_id: int, now: datetime) -> None:
    job = session.get_one(Job, job_id)
    states = set(session.scalars(select(Delivery.state).where(Delivery.job_id == job_id)))
    if states & set(OPEN_DELIVERY_STATES):
        return
    new_state = JobState.DELIVERED if states <= DONE_DELIVERY_STATES else JobState.FAILED
    if job.state != new_state:
        job.state = new_state
        job.updated_at = now
        if new_state == JobState.FAILED:
            job.last_error = "delivery failed to at least one destination (see deliveries; `resend` retries)"
        _add_event(session, job, now, "deliveries finished")


def reset_deliveries(session: Session, *, study_instance_uid: str, destination: str | None, now: datetime) -> int:
    """Make the deliveries of a study's latest encoded job pending again (operator's ``resend``)."""
    job = session.scalar(
        select(Job)
        .join(Study)
        .where(
            Study.study_instance_uid == study_instance_uid,
            Job.state.in_([JobState.ENCODED, JobState.DELIVERED, JobState.FAILED]),
        )
        .where(Job.results.any())
        .order_by(Job.version.desc())
    )
    if job is None:
        return 0
    # Held results are released by a reviewer only, never by a resend.
    query = select(Delivery).where(
        Delivery.job_id == job.id, Delivery.state.not_in([DeliveryState.AWAITING_REVIEW, DeliveryState.REVIEWED])
    )
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    deliveries = session.scalars(query).all()
    for delivery in deliveries:
        _make_pending_again(session, delivery, now)
    if deliveries:
        job.state = JobState.ENCODED
        job.updated_at = now
        _add_event(session, job, now, f"resend requested ({destination or 'all destinations'})")
    return len(deliveries)



def list_jobs(session: Session, *, limit: int = 50) -> list[tuple[Job, str]]:
    """The most recent jobs with their study's UID."""
    rows = session.execute(
        select(Job, Study.study_instance_uid).join(Study).order_by(Job.id.desc()).limit(limit)
    ).all()
    return [(row[0], row[1]) for row in rows]


def job_counts(session: Session) -> dict[JobState, int]:
    """Number of jobs in each state."""
    rows = session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
    return {state: count for state, count in rows}


def studies_past_retention(session: Session, *, cutoff: datetime, limit: int = 100) -> list[Study]:
    """Settled studies quiet since before ``cutoff`` whose every job is delivered (never undelivered ones)."""
    unfinished = select(Job.id).where(Job.study_id == Study.id, Job.state != JobState.DELIVERED)
    return list(
        session.scalars(
            select(Study)
            .where(Study.unsettled.is_(False), Study.last_received_at < cutoff, ~unfinished.exists())
            .order_by(Study.last_received_at)
            .limit(limit)
        )
    )


def delete_study(session: Session, study: Study) -> None:
    """Delete a study's rows: instances, jobs with their events, results, deliveries, findings and reviews."""
    job_ids = select(Job.id).where(Job.study_id == study.id)
    delivery_ids = select(Delivery.id).where(Delivery.job_id.in_(job_ids))
    session.execute(delete(SentObject).where(SentObject.delivery_id.in_(delivery_ids)))
    review_ids = select(Review.id).where(Review.job_id.in_(job_ids))
    session.execute(delete(FindingDecision).where(FindingDecision.review_id.in_(review_ids)))
    for model in (JobEvent, Result, Delivery, StageDuration, Review, Finding):
        session.execute(delete(model).where(model.job_id.in_(job_ids)))
    session.execute(delete(Job).where(Job.study_id == study.id))
    session.execute(delete(Instance).where(Instance.study_id == study.id))
    session.execute(delete(ReceiveConflict).where(ReceiveConflict.study_instance_uid == study.study_instance_uid))
    session.delete(study)


def record_stage_durations(
    session: Session, *, job_id: int, durations: list[tuple[str, float]], now: datetime
) -> None:
    """Record how long each stage of a job took (one row per stage per image, and the encoding)."""
    session.add_all(
        StageDuration(job_id=job_id, stage=stage[:32], seconds=float(seconds), recorded_at=now)
        for stage, seconds in durations
    )


@dataclass(frozen=True, kw_only=True)
class StageHistogram:
    """Cumulative counts of one stage's durations, as a Prometheus histogram has them."""

    stage: str
    #: (upper bound in seconds, number of durations <= it), one per bucket, in increasing order.
    buckets: tuple[tuple[float, int], ...]
    count: int
    total_seconds: float


def stage_histograms(session: Session, bounds: tuple[float, ...]) -> list[StageHistogram]:
    """Every stage's durations counted into cumulative buckets, in one aggregate query."""
    columns = [func.sum(case((StageDuration.seconds <= bound, 1), else_=0)) for bound in bounds]
    rows = session.execute(
        select(StageDuration.stage, func.count(StageDuration.id), func.sum(StageDuration.seconds), *columns)
        .group_by(StageDuration.stage)
        .order_by(StageDuration.stage)
    ).all()
    return [
        StageHistogram(
            stage=row[0],
            buckets=tuple((bound, int(count or 0)) for bound, count in zip(bounds, row[3:], strict=True)),
            count=int(row[1]),
            total_seconds=float(row[2] or 0.0),
        )
        for row in rows
    ]


def delivery_counts(session: Session) -> dict[DeliveryState, int]:
    """Number of deliveries in each state."""
    rows = session.execute(select(Delivery.state, func.count(Delivery.id)).group_by(Delivery.state)).all()
    return {state: count for state, count in rows}


def check_database(session: Session) -> None:
    """Run the cheapest query there is; raises when the database does not answer."""
    session.execute(select(1)).scalar_one()


@dataclass(frozen=True, kw_only=True)
class StudySummary:
    """One row of the dashboard's list of recent studies."""

    study: Study
    instance_count: int
    #: The study's latest job, None before it settled.
    latest_job: Job | None


def recent_studies(session: Session, *, limit: int) -> list[StudySummary]:
    """The studies that last received an instance, newest first, with their latest job."""
    studies = session.scalars(select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)).all()
    summaries = []
    for study in studies:
        count = session.scalar(select(func.count(Instance.id)).where(Instance.study_id == study.id)) or 0
        job = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.version.desc()).limit(1))
        summaries.append(StudySummary(study=study, instance_count=int(count), latest_job=job))
    return summaries


def study_by_uid(session: Session, study_instance_uid: str) -> Study | None:
    """The study with this Study Instance UID, if the node has seen it."""
    return session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))


def study_jobs(session: Session, study_id: int) -> list[Job]:
    """A study's jobs, newest version first."""
    return list(session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.version.desc())))


def job_events(session: Session, job_id: int) -> list[JobEvent]:
    """A job's state transitions, oldest first."""
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def job_deliveries(session: Session, job_id: int) -> list[Delivery]:
    """A job's deliveries, one per destination."""
    return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)))


def retry_delivery(session: Session, *, delivery_id: int, now: datetime) -> Delivery | None:
    """Make one failed delivery pending again (the dashboard's retry button); None if not failed."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True, populate_existing=True)
    if delivery is None or delivery.state != DeliveryState.FAILED:
        return None
    _make_pending_again(session, delivery, now)
    job = session.get_one(Job, delivery.job_id)
    job.state = JobState.ENCODED
    job.updated_at = now
    _add_event(session, job, now, f"retry of the delivery to {delivery.destination} requested on the dashboard")
    return delivery


def _make_pending_again(session: Session, delivery: Delivery, now: datetime) -> None:
    """An operator's resend: every object is sent again, with a fresh attempt budget."""
    session.execute(delete(SentObject).where(SentObject.delivery_id == delivery.id))
    delivery.state = DeliveryState.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.created_at = now
    delivery.lease_owner = None
    delivery.lease_expires_at = None


def _rowcount(result: Result_[Any]) -> int:
    """Rows an UPDATE matched: ``execute`` of an UPDATE returns a ``CursorResult``, typed as ``Result``."""
    return cast(CursorResult[Any], result).rowcount


def _add_event(session: Session, job: Job, now: datetime, detail: str) -> None:
    session.add(JobEvent(job_id=job.id, at=now, state=job.state, detail=detail))


def job_findings(session: Session, job_id: int) -> list[Finding]:
    """The findings a job recorded, by number."""
    return list(session.scalars(select(Finding).where(Finding.job_id == job_id).order_by(Finding.number)))


def job_awaiting_review(session: Session, study_id: int) -> Job | None:
    """The study's latest job with results held for review, or None."""
    held = select(Delivery.id).where(Delivery.job_id == Job.id, Delivery.state == DeliveryState.AWAITING_REVIEW)
    return session.scalar(
        select(Job).where(Job.study_id == study_id, held.exists()).order_by(Job.version.desc()).limit(1)
    )


@dataclass(frozen=True, kw_only=True)
class AwaitingReview:
    """A study whose results wait for a reviewer (one row of the dashboard's list)."""

    study_instance_uid: str
    job_id: int
    #: When its results were held (the oldest held delivery of the job).
    since: datetime
    destinations: tuple[str, ...]
    findings: int


def awaiting_review(session: Session, *, limit: int = 100) -> list[AwaitingReview]:
    """Jobs with results held for review, the longest waiting first."""
    rows = session.execute(
        select(Study.study_instance_uid, Job.id, func.min(Delivery.created_at))
        .join(Job, Job.study_id == Study.id)
        .join(Delivery, Delivery.job_id == Job.id)
        .where(Delivery.state == DeliveryState.AWAITING_REVIEW)
        .group_by(Study.study_instance_uid, Job.id)
        .order_by(func.min(Delivery.created_at), Job.id)
        .limit(limit)
    ).all()
    waiting = []
    for uid, job_id, since in rows:
        names = session.scalars(
            select(Delivery.destination)
            .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.AWAITING_REVIEW)
            .order_by(Delivery.destination)
        ).all()
        count = session.scalar(select(func.count(Finding.id)).where(Finding.job_id == job_id)) or 0
        waiting.append(
            AwaitingReview(study_instance_uid=uid, job_id=job_id, since=since, destinations=tuple(names), findings=count)
        )
    return waiting


def awaiting_review_count(session: Session) -> int:
    """How many jobs have results held for review."""
    held = select(func.count(func.distinct(Delivery.job_id))).where(Delivery.state == DeliveryState.AWAITING_REVIEW)
    return int(session.scalar(held) or 0)


def oldest_review_since(session: Session) -> datetime | None:
    """When the longest-waiting held delivery was queued; None when nothing waits for review."""
    return session.scalar(
        select(func.min(Delivery.created_at)).where(Delivery.state == DeliveryState.AWAITING_REVIEW)
    )


def record_review(
    session: Session,
    *,
    job_id: int,
    reviewer: str,
    accepted: dict[int, bool],
    comment: str | None,
    via: str,
    max_attempts: int,
    now: datetime,
) -> Review | None:
    """Record a decision on a job's findings and queue the job that encodes the reviewed version.

    ``accepted`` maps each finding's id to the decision. The job's held deliveries (and any older
    ones of the study, which the newer results replace) become REVIEWED; the new job (the study's
    next version) delivers to the destinations they were for. Returns None, recording nothing,
    when the job has no held delivery any more (another reviewer decided first).
    """
    job = session.get_one(Job, job_id, with_for_update=True, populate_existing=True)
    held = session.scalars(
        select(Delivery)
        .join(Job, Job.id == Delivery.job_id)
        .where(Job.study_id == job.study_id, Job.version <= job.version, Delivery.state == DeliveryState.AWAITING_REVIEW)
        .with_for_update()
    ).all()
    if not any(delivery.job_id == job.id for delivery in held):
        return None
    latest = session.scalar(select(func.max(Job.version)).where(Job.study_id == job.study_id)) or job.version
    review_job = _queue_job(
        session, job.study_id, latest + 1, max_attempts, now, f"reviewed version of job {job.id} queued", job.id
    )
    review = Review(
        job_id=job.id, review_job_id=review_job.id, reviewer=reviewer, comment=comment or None, via=via, decided_at=now
    )
    session.add(review)
    session.flush()
    session.add_all(
        FindingDecision(review_id=review.id, finding_id=finding_id, accepted=decision)
        for finding_id, decision in accepted.items()
    )
    kept = sum(accepted.values())
    for delivery in held:
        delivery.state = DeliveryState.REVIEWED
        delivery.last_error = None
    session.flush()
    _add_event(session, job, now, f"reviewed by {reviewer}: {kept} of {len(accepted)} finding(s) accepted")
    for reviewed_id in sorted({delivery.job_id for delivery in held}):
        _update_job_after_delivery(session, reviewed_id, now)
    return review


@dataclass(frozen=True, kw_only=True)
class ReviewPlan:
    """What the job encoding a reviewed version needs to know about the decision."""

    reviewer: str
    comment: str | None
    decided_at: datetime
    #: Per finding: (source SOP Instance UID, frame, label) -> (number, bbox, accepted).
    decisions: dict[tuple[str, int | None, int], tuple[int, str, bool]]
    #: Destinations whose held deliveries the review released.
    destinations: tuple[str, ...]


def review_plan(session: Session, job: Job) -> ReviewPlan | None:
    """The decision a review job encodes; None for a job that is not a reviewed version."""
    if job.reviewed_job_id is None:
        return None
    review = session.scalars(select(Review).where(Review.job_id == job.reviewed_job_id)).one()
    rows = session.execute(
        select(Finding, FindingDecision.accepted)
        .join(FindingDecision, FindingDecision.finding_id == Finding.id)
        .where(FindingDecision.review_id == review.id)
        .order_by(Finding.number)
    ).all()
    names = session.scalars(
        select(Delivery.destination)
        .where(Delivery.job_id == job.reviewed_job_id, Delivery.state == DeliveryState.REVIEWED)
        .order_by(Delivery.destination)
    ).all()
    return ReviewPlan(
        reviewer=review.reviewer,
        comment=review.comment,
        decided_at=review.decided_at,
        decisions={
            (finding.sop_instance_uid, finding.frame_number, finding.label): (finding.number, finding.bbox, accepted)
            for finding, accepted in rows
        },
        destinations=tuple(names),
    )


def job_review(session: Session, job_id: int) -> Review | None:
    """The review of a job's findings, if one was made."""
    return session.scalar(select(Review).where(Review.job_id == job_id))


def finding_decisions(session: Session, job_id: int) -> dict[int, bool]:
    """Finding number -> accepted, for a reviewed job."""
    rows = session.execute(
        select(Finding.number, FindingDecision.accepted)
        .join(FindingDecision, FindingDecision.finding_id == Finding.id)
        .where(Finding.job_id == job_id)
    ).all()
    return {int(number): bool(accepted) for number, accepted in rows}


def decided_findings(session: Session) -> list[tuple[Finding, bool]]:
    """Every finding a reviewer decided on, with the decision (accepted or not)."""
    rows = session.execute(
        select(Finding, FindingDecision.accepted)
        .join(FindingDecision, FindingDecision.finding_id == Finding.id)
        .order_by(Finding.id)
    ).all()
    return [(finding, bool(accepted)) for finding, accepted in rows]


def instances_with_all_findings_rejected(session: Session) -> list[Instance]:
    """Stored images whose every finding was rejected by a reviewer (at least one finding)."""
    decided = decided_findings(session)
    verdicts: dict[str, list[bool]] = {}
    for finding, accepted in decided:
        verdicts.setdefault(finding.sop_instance_uid, []).append(accepted)
    rejected = sorted(uid for uid, accepted in verdicts.items() if not any(accepted))
    if not rejected:
        return []
    return list(session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(rejected)).order_by(Instance.id)))
