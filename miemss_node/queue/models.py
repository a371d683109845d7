"""Typed SQLAlchemy 2.0 models of the node's database."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Enum, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class JobState(enum.Enum):
    """Where a job is in its life."""

    #: Waiting for a worker (also after a retryable failure, from ``not_before`` on).
    QUEUED = "queued"
    #: Claimed by a worker holding an unexpired lease.
    RUNNING = "running"
    #: Results written to disk; deliveries pending.
    ENCODED = "encoded"
    #: Every destination acknowledged every result.
    DELIVERED = "delivered"
    #: Gave up: the error is recorded; results (if any) stay on disk.
    FAILED = "failed"


class DeliveryState(enum.Enum):
    """Where the delivery of one job's results to one destination is."""

    #: Not yet sent, or to be retried from ``next_attempt_at`` on.
    PENDING = "pending"
    #: The destination answered Success (or a warning) for every result.
    DELIVERED = "delivered"
    #: Refused by the destination or out of attempts; ``resend`` can try again.
    FAILED = "failed"
    #: Held for a destination with ``review = true`` until a reviewer decides; never sent as is.
    AWAITING_REVIEW = "awaiting review"
    #: Held results a reviewer decided on: the reviewed version (a later job) is sent instead.
    REVIEWED = "reviewed"


class Study(Base):
    """A study seen by the receiver, and whether instances arrived that no job covers yet."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    #: True while instances arrived that no queued job covers.
    unsettled: Mapped[bool] = mapped_column(default=True)
    #: SHA-256 of the first instance's Issuer of Patient ID and Patient ID: instances of another
    #: patient are refused (the ID itself is patient data and is not stored here).
    patient_key: Mapped[str | None] = mapped_column(String(64))
    instances: Mapped[list[Instance]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_studies_unsettled", "unsettled", "last_received_at"),)


class Instance(Base):
    """One stored SOP instance."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    #: Path relative to the storage folder.
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: SHA-256 of the dataset bytes as received (after the File Meta): a copy received again is
    #: a duplicate when it matches, a conflict when it does not.
    digest: Mapped[str | None] = mapped_column(String(64))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime]
    study: Mapped[Study] = relationship(back_populates="instances")


class ConflictKind(enum.Enum):
    """Why a received instance was refused as conflicting with what is stored."""

    #: Its SOP Instance UID is stored with other content (bytes, study, series or patient).
    INSTANCE = "instance"
    #: Its study's stored instances belong to another patient.
    PATIENT = "patient"


class ReceiveConflict(Base):
    """An instance refused because it conflicts with stored data (shown on the dashboard)."""

    __tablename__ = "receive_conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The refused copy's study, and the stored copy's when another (instance conflicts).
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    stored_study_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[ConflictKind] = mapped_column(Enum(ConflictKind, native_enum=False, length=16))
    detail: Mapped[str] = mapped_column(Text)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]


class Job(Base):
    """Processing of one settled version of a study."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    #: 1 for a study's first job, 2 for the job started by late instances, ...
    version: Mapped[int]
    #: For the job that encodes a reviewed version: the job whose findings were reviewed.
    reviewed_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False, length=16))
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    not_before: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    study: Mapped[Study] = relationship()
    results: Mapped[list[Result]] = relationship(back_populates="job", order_by="Result.id")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", order_by="Delivery.id")

    __table_args__ = (
        UniqueConstraint("study_id", "version", name="uq_jobs_study_version"),
        Index("ix_jobs_claim", "state", "not_before"),
    )


class JobEvent(Base):
    """One state transition of a job, with its reason."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime]
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False, length=16))
    detail: Mapped[str | None] = mapped_column(Text)


class Result(Base):
    """A DICOM object a job produced, stored under the storage folder."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    path: Mapped[str] = mapped_column(String(512))
    job: Mapped[Job] = relationship(back_populates="results")


class StageDuration(Base):
    """How long one stage took: a pipeline stage on one image or frame, or a job's encoding.

    Workers may run in other processes or on other hosts; ``/metrics`` reads these rows.
    """

    __tablename__ = "stage_durations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    #: The stage's name ("decode", "enhance", ..., "encode").
    stage: Mapped[str] = mapped_column(String(32))
    seconds: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime]


class Delivery(Base):
    """Sending one job's results to one destination."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(Enum(DeliveryState, native_enum=False, length=16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    #: When the delivery was queued: it gives up once older than ``[delivery] max_age_hours``.
    created_at: Mapped[datetime]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    #: The sender sending it now; its lease is renewed while it sends, so no other sender takes it.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    job: Mapped[Job] = relationship(back_populates="deliveries")

    __table_args__ = (
        UniqueConstraint("job_id", "destination", name="uq_deliveries_job_destination"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )


class SentObject(Base):
    """One result object a destination acknowledged, so a later attempt of the delivery skips it."""

    __tablename__ = "sent_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"))
    sent_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("delivery_id", "result_id", name="uq_sent_objects_delivery_result"),)


class Finding(Base):
    """One region a job flagged: what a reviewer accepts or rejects, with what it measured.

    Numbered 1.. across the study's images (in the order of the job's analyses, then by region
    label), as the dashboard and ``miemss-node review --finding N`` name them.
    """

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int]
    #: The source image (and frame) and the region's label in that image's analysis.
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    frame_number: Mapped[int | None]
    label: Mapped[int]
    #: "zone", "focal", "patch" or "pathology" (``Region.kind``), and the pathology's label if any.
    kind: Mapped[str] = mapped_column(String(16))
    pathology: Mapped[str | None] = mapped_column(String(64))
    #: Where it is, in words (``Region.location``).
    location: Mapped[str] = mapped_column(String(256))
    area_px: Mapped[int] = mapped_column(BigInteger)
    area_mm2: Mapped[float | None] = mapped_column(Float)
    mean_score: Mapped[float] = mapped_column(Float)
    max_score: Mapped[float] = mapped_column(Float)
    #: "row0 col0 row1 col1" in source pixels: a re-analysis must find the same region.
    bbox: Mapped[str] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_findings_job_number"),)


class Review(Base):
    """A reviewer's decision on the findings of one job."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The job whose findings were decided on (its held deliveries are released by this).
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    #: The job that encodes the reviewed version.
    review_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    reviewer: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    #: "cli" or "dashboard".
    via: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[datetime]


class FindingDecision(Base):
    """A reviewer's decision on one finding."""

    __tablename__ = "finding_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"), index=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"), unique=True)
    accepted: Mapped[bool]
