"""The C-STORE SCU: sends a job's results to a destination and classifies the answers.

Classification follows the Returns section of ``Association.send_c_store`` and PS3.4 Annex B.2.3:
no answer or 0xA7xx means try later; 0xA9xx, 0xCxxx and 0x0122 mean the object was refused.
"""

from __future__ import annotations

import enum
import logging
import ssl
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import DeliverySettings, Destination, TlsSettings
from miemss_node.metrics import DELIVERIES
from miemss_node.queue import repository
from miemss_node.queue.retry import RetryPolicy
from miemss_node.tls import client_context

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
"""Refused: the destination does not store this SOP class."""

PROPOSED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
"""What we propose for every result class: our objects are written uncompressed (the conformance
statement lists these)."""


class SendOutcome(enum.Enum):
    """How one send went, as far as retrying is concerned."""

    #: Every object stored (success, or a warning 0xBxxx that still stored it).
    DELIVERED = "delivered"
    #: No association, no answer, or the peer is out of resources (0xA7xx): try again later.
    RETRY = "retry"
    #: The peer refused an object (0xA9xx, 0xCxxx, 0x0122): retrying will not help.
    REFUSED = "refused"


@dataclass(frozen=True, kw_only=True)
class SendReport:
    """The outcome of sending a set of files to one destination."""

    outcome: SendOutcome
    #: The status that decided the outcome, None when there was no answer.
    status: int | None
    detail: str


def classify_status(status: int | None) -> SendOutcome:
    """Map a C-STORE response status (None = no response) to an outcome."""
    if status is None:
        return SendOutcome.RETRY
    if status == STATUS_SUCCESS or 0xB000 <= status <= 0xBFFF:
        return SendOutcome.DELIVERED
    if 0xA700 <= status <= 0xA7FF:
        return SendOutcome.RETRY
    return SendOutcome.REFUSED


def send_files(
    paths: list[Path],
    destination: Destination,
    *,
    calling_aet: str,
    timeout_seconds: float,
    ssl_context: ssl.SSLContext | None = None,
) -> SendReport:
    """Send DICOM files in one association (over TLS when ``ssl_context`` is given).

    Stops at the first object not delivered.
    """
    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_seconds
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, list(PROPOSED_TRANSFER_SYNTAXES))
    tls_args = (ssl_context, destination.host) if ssl_context is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return SendReport(outcome=SendOutcome.RETRY, status=None, detail="association not established")
    try:
        for ds in datasets:
            response = assoc.send_c_store(ds)
            status = int(response.Status) if "Status" in response else None
            outcome = classify_status(status)
            if status is not None and 0xB000 <= status <= 0xBFFF:
                logger.warning(
                    "%s stored %s with warning 0x%04X",
                    destination.name,
                    ds.SOPInstanceUID,
                    status,
                    extra={"action": "send.warning", "destination": destination.name},
                )
            if outcome is not SendOutcome.DELIVERED:
                what = "no response" if status is None else f"status 0x{status:04X}"
                return SendReport(outcome=outcome, status=status, detail=f"{ds.SOPInstanceUID}: {what}")
    finally:
        if assoc.is_established:
            assoc.release()
    return SendReport(outcome=SendOutcome.DELIVERED, status=STATUS_SUCCESS, detail=f"{len(datasets)} object(s)")


@dataclass(frozen=True, kw_only=True)
class DeliveryWork:
    """A claimed delivery and the result files it sends."""

    delivery_id: int
    job_id: int
    destination: str
    attempts: int
    created_at: datetime
    paths: list[str]


class Sender:
    """Delivers encoded jobs' results, retrying with backoff while a destination is down."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage_dir: Path,
        destinations: tuple[Destination, ...],
        settings: DeliverySettings,
        calling_aet: str,
        *,
        tls: TlsSettings | None = None,
    ) -> None:
        self.sessions = sessions
        self.storage_dir = storage_dir
        self.destinations = {destination.name: destination for destination in destinations}
        self.settings = settings
        self.calling_aet = calling_aet
        self.tls = tls or TlsSettings()
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            backoff_seconds=settings.backoff_seconds,
            max_backoff_seconds=settings.max_backoff_seconds,
        )

    def run_once(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        hold = self.settings.timeout_seconds * 4
        with self.sessions.begin() as session:
            due = repository.claim_due_deliveries(session, now=utcnow(), hold_seconds=hold)
            work = [
                DeliveryWork(
                    delivery_id=d.id,
                    job_id=d.job_id,
                    destination=d.destination,
                    attempts=d.attempts,
                    created_at=d.created_at,
                    paths=[
                        r.path for r in repository.job_results(session, d.job_id) if self._takes(d.destination, r.kind)
                    ],
                )
                for d in due
            ]
        for item in work:
            self._deliver(item)
        return len(work)

    def _takes(self, name: str, kind: str) -> bool:
        """Whether destination ``name`` gets results of ``kind`` (an unknown one is refused later)."""
        destination = self.destinations.get(name)
        return destination is None or kind in destination.result_types

    def _deliver(self, item: DeliveryWork) -> None:
        name = item.destination
        destination = self.destinations.get(name)
        if destination is None:
            report = SendReport(outcome=SendOutcome.REFUSED, status=None, detail=f"destination {name!r} not configured")
        elif not item.paths:
            # Its result types changed since the job was encoded, and the job has none of them.
            types = ", ".join(destination.result_types)
            detail = f"0 object(s): no result of type {types}"
            report = SendReport(outcome=SendOutcome.DELIVERED, status=None, detail=detail)
        else:
            try:
                report = send_files(
                    [self.storage_dir / path for path in item.paths],
                    destination,
                    calling_aet=self.calling_aet,
                    timeout_seconds=self.settings.timeout_seconds,
                    ssl_context=client_context(self.tls) if destination.tls else None,
                )
            except (OSError, RuntimeError, ValueError) as exc:
                report = SendReport(outcome=SendOutcome.RETRY, status=None, detail=f"{type(exc).__name__}: {exc}")
        self._record(item, report)

    def _record(self, item: DeliveryWork, report: SendReport) -> None:
        now = utcnow()
        attempt, job_id, name = item.attempts + 1, item.job_id, item.destination
        retry_at = None
        young = now - item.created_at < timedelta(hours=self.settings.max_age_hours)
        if report.outcome is SendOutcome.RETRY and self.policy.should_retry(attempt) and young:
            retry_at = now + timedelta(seconds=self.policy.delay(attempt))
        elif report.outcome is SendOutcome.RETRY and not young:
            report = replace(report, detail=f"{report.detail}; gave up after {self.settings.max_age_hours:g} h")
        with self.sessions.begin() as session:
            state = repository.record_delivery_outcome(
                session,
                delivery_id=item.delivery_id,
                delivered=report.outcome is SendOutcome.DELIVERED,
                retry_at=retry_at,
                status=report.status,
                error=None if report.outcome is SendOutcome.DELIVERED else report.detail,
                now=now,
            )
        extra = {"action": f"send.{state.value}", "job_id": job_id, "destination": name, "attempt": attempt}
        DELIVERIES.labels(destination=name, outcome=state.value).inc()
        if report.outcome is SendOutcome.DELIVERED:
            logger.info("job %d delivered to %s: %s", job_id, name, report.detail, extra=extra)
        elif retry_at is not None:
            logger.info("job %d to %s will retry: %s", job_id, name, report.detail, extra=extra)
        else:
            logger.error("job %d to %s failed: %s (kept on disk; use resend)", job_id, name, report.detail, extra=extra)
