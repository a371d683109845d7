"""The C-STORE SCU: sends a job's results to a destination and classifies the answers.

Classification follows the Returns section of ``Association.send_c_store`` and PS3.4 Annex B.2.3:
no answer or 0xA7xx means try later; 0xA9xx, 0xCxxx and 0x0122 mean the object was refused.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, Association
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import DeliverySettings, Destination, TlsSettings
from miemss_node.errors import describe_error
from miemss_node.metrics import DELIVERIES
from miemss_node.queue import repository
from miemss_node.queue.lease import LeaseKeeper, lease_owner_id
from miemss_node.queue.models import DeliveryState
from miemss_node.queue.retry import PROGRAMMING_ERRORS, RetryDecision, RetryPolicy
from miemss_node.tls import client_context

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
"""Refused: the destination does not store this SOP class."""

PROPOSED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
"""What we propose for every result class (the conformance statement lists these)."""

COMPRESSED_RESULT_SYNTAXES = (RLELossless,)
"""Transfer syntaxes some results are written in (a FRACTIONAL SEG, :func:`~miemss_node.encode.seg.compress_fractional`):
each is proposed in a context of its own, and an object is decompressed for a destination that does not
accept it."""


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
    on_stored: Callable[[int], bool] | None = None,
) -> SendReport:
    """Send DICOM files in one association (over TLS when ``ssl_context`` is given).

    Stops at the first object not delivered. ``on_stored(index)`` is called after the destination
    stored ``paths[index]``; when it returns False (the delivery's lease was lost), sending stops
    and the report says RETRY.

    Raises
    ------
    pydicom.errors.InvalidDicomError, OSError
        When a file cannot be read; the caller's error boundary records it.
    """
    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_seconds
    _request_contexts(ae, datasets, compressed=destination.send_compressed)
    tls_args = (ssl_context, destination.host) if ssl_context is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return SendReport(outcome=SendOutcome.RETRY, status=None, detail="association not established")
    send_at_once(assoc)
    try:
        for index, ds in enumerate(datasets):
            report = _store_one(assoc.send_c_store(_in_accepted_syntax(assoc, ds)), ds, destination)
            if report is not None:
                return report
            if on_stored is not None and not on_stored(index):
                return SendReport(outcome=SendOutcome.RETRY, status=None, detail="lease lost to another sender")
    finally:
        if assoc.is_established:
            assoc.release()
    return SendReport(outcome=SendOutcome.DELIVERED, status=STATUS_SUCCESS, detail=f"{len(datasets)} object(s)")


def _request_contexts(ae: AE, datasets: Sequence[Dataset], *, compressed: bool) -> None:
    """Propose each SOP class uncompressed and, when ``compressed``, also in a context of each compressed
    syntax its objects have.

    A context of its own, so that a destination which decodes RLE but would rather take objects
    uncompressed cannot pick the uncompressed syntax out of one shared context.
    """
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, list(PROPOSED_TRANSFER_SYNTAXES))
    if not compressed:
        return
    written = {
        (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        for ds in datasets
        if ds.file_meta.TransferSyntaxUID in COMPRESSED_RESULT_SYNTAXES
    }
    for sop_class, syntax in sorted(written):
        ae.add_requested_context(sop_class, [syntax])


def _in_accepted_syntax(assoc: Association, ds: Dataset) -> Dataset:
    """``ds`` as the destination accepted its SOP class: decompressed when it accepted it only uncompressed."""
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        return ds
    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    if (str(ds.SOPClassUID), str(syntax)) in accepted:
        return ds
    # The same instance in another (lossless) transfer syntax: pydicom would give it a new UID, which the
    # SR's references and a retry's exactly-once bookkeeping would then miss.
    ds.decompress(generate_instance_uid=False)
    logger.info(
        "%s sent decompressed: the destination did not accept %s for it",
        ds.SOPInstanceUID,
        syntax.name,
        extra={"action": "send.decompressed", "sop_instance_uid": str(ds.SOPInstanceUID)},
    )
    return ds


def send_at_once(assoc: Association) -> None:
    """Turn off Nagle's algorithm on an established association's socket.

    pynetdicom writes a C-STORE as separate PDUs (the command, then the data set in pieces); with
    Nagle on, the last small piece waits until the peer acknowledges the one before, and a Linux peer
    delays that acknowledgement by up to 40 ms: about 30-40 ms lost per object sent (measured against
    pynetdicom's and dcmtk's SCPs on loopback). The receiver does the same for its connections.
    """
    connection = assoc.dul.socket
    if connection is not None and connection.socket is not None:
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_one(response: Dataset, ds: Dataset, destination: Destination) -> SendReport | None:
    """None when the destination stored ``ds``, else the report that stops the send."""
    status = int(response.Status) if "Status" in response else None
    if status is not None and 0xB000 <= status <= 0xBFFF:
        logger.warning(
            "%s stored %s with warning 0x%04X",
            destination.name,
            ds.SOPInstanceUID,
            status,
            extra={"action": "send.warning", "destination": destination.name},
        )
    if classify_status(status) is SendOutcome.DELIVERED:
        return None
    what = "no response" if status is None else f"status 0x{status:04X}"
    return SendReport(outcome=classify_status(status), status=status, detail=f"{ds.SOPInstanceUID}: {what}")


@dataclass(frozen=True, kw_only=True)
class DeliveryWork:
    """A claimed delivery and the result files it still has to send."""

    delivery_id: int
    job_id: int
    destination: str
    attempts: int
    created_at: datetime
    #: (result id, path under the storage folder) of each result not yet acknowledged.
    results: list[tuple[int, str]]


#: Send errors that fail the delivery at once: a result file that is not DICOM stays so, and so
#: does a bug in our code. Everything else (network, disk) is retried up to ``max_attempts``.
PERMANENT_SEND_ERRORS: tuple[type[BaseException], ...] = (InvalidDicomError, *PROGRAMMING_ERRORS)


class Sender:
    """Delivers encoded jobs' results to one destination, retrying with backoff while it is down.

    ``serve`` runs one sender per destination, each in its own thread, so a destination that hangs
    delays only its own deliveries. A delivery is claimed with a lease that is renewed while its
    objects are sent, and every acknowledged object is recorded, so no other sender (on this node
    or another sharing the database) sends the same object again.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage_dir: Path,
        destination: Destination,
        settings: DeliverySettings,
        calling_aet: str,
        *,
        tls: TlsSettings | None = None,
    ) -> None:
        self.sessions = sessions
        self.storage_dir = storage_dir
        self.destination = destination
        self.settings = settings
        self.calling_aet = calling_aet
        self.tls = tls or TlsSettings()
        self.owner = lease_owner_id()
        #: The lease of a delivery being sent: renewed every third of it (and at every object).
        self.lease_seconds = settings.timeout_seconds * 4
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            backoff_seconds=settings.backoff_seconds,
            max_backoff_seconds=settings.max_backoff_seconds,
            permanent=PERMANENT_SEND_ERRORS,
        )

    def run_once(self) -> int:
        """Send every due delivery to this destination once; returns how many were attempted."""
        name = self.destination.name
        with self.sessions.begin() as session:
            due = repository.claim_due_deliveries(
                session, owner=self.owner, lease_seconds=self.lease_seconds, now=utcnow(), destination=name
            )
            work = [
                DeliveryWork(
                    delivery_id=d.id,
                    job_id=d.job_id,
                    destination=d.destination,
                    attempts=d.attempts,
                    created_at=d.created_at,
                    results=[
                        (r.id, r.path) for r in repository.unsent_results(session, d) if self._takes(r.kind)
                    ],
                )
                for d in due
            ]
        for item in work:
            self._deliver(item)
        return len(work)

    def _takes(self, kind: str) -> bool:
        """Whether this destination gets results of ``kind``."""
        return kind in self.destination.result_types

    def _deliver(self, item: DeliveryWork) -> None:
        """Send one delivery: the sender's error boundary (any exception is recorded as the attempt's outcome)."""
        if not item.results:
            # Everything was acknowledged already, or its result types changed since the job was
            # encoded and the job has none of them.
            types = ", ".join(self.destination.result_types)
            report = SendReport(outcome=SendOutcome.DELIVERED, status=None, detail=f"nothing (left) of type {types}")
            self._record(item, report, None)
            return
        keeper = LeaseKeeper(
            lambda: self._renew(item.delivery_id), self.lease_seconds / 3, name=f"lease of delivery {item.delivery_id}"
        )
        try:
            with keeper:
                report = send_files(
                    [self.storage_dir / path for _, path in item.results],
                    self.destination,
                    calling_aet=self.calling_aet,
                    timeout_seconds=self.settings.timeout_seconds,
                    ssl_context=client_context(self.tls) if self.destination.tls else None,
                    on_stored=lambda index: not keeper.lost and self._sent(item, item.results[index][0]),
                )
        except Exception as exc:  # noqa: BLE001 - the delivery's error boundary: recorded, then the policy decides
            self._record(item, None, exc)
            return
        self._record(item, report, None)

    def _renew(self, delivery_id: int) -> bool:
        with self.sessions.begin() as session:
            return repository.renew_delivery_lease(
                session, delivery_id=delivery_id, owner=self.owner, lease_seconds=self.lease_seconds, now=utcnow()
            )

    def _sent(self, item: DeliveryWork, result_id: int) -> bool:
        """Record one acknowledged object and renew the lease; False when the lease was lost."""
        now = utcnow()
        with self.sessions.begin() as session:
            held = repository.record_object_sent(
                session, delivery_id=item.delivery_id, result_id=result_id, owner=self.owner, now=now
            )
            return held and repository.renew_delivery_lease(
                session, delivery_id=item.delivery_id, owner=self.owner, lease_seconds=self.lease_seconds, now=now
            )

    def _decide(self, attempt: int, report: SendReport, error: BaseException | None) -> RetryDecision:
        """Retry or not: the policy classifies an exception; a refusal or a delivery ends the delivery."""
        if error is not None:
            return self.policy.decide(error, attempt)
        if report.outcome is not SendOutcome.RETRY:
            return RetryDecision.GIVE_UP
        return RetryDecision.RETRY if self.policy.should_retry(attempt) else RetryDecision.GIVE_UP

    def _record(self, item: DeliveryWork, report: SendReport | None, error: BaseException | None) -> None:
        now = utcnow()
        attempt, job_id, name = item.attempts + 1, item.job_id, item.destination
        if report is None:
            report = SendReport(outcome=SendOutcome.RETRY, status=None, detail=describe_error(error or RuntimeError()))
        decision = self._decide(attempt, report, error)
        retry_at = None
        young = now - item.created_at < timedelta(hours=self.settings.max_age_hours)
        if decision is RetryDecision.RETRY and young:
            retry_at = now + timedelta(seconds=self.policy.delay(attempt))
        elif decision is RetryDecision.RETRY:
            report = replace(report, detail=f"{report.detail}; gave up after {self.settings.max_age_hours:g} h")
        delivered = report.outcome is SendOutcome.DELIVERED and error is None
        with self.sessions.begin() as session:
            state = repository.record_delivery_outcome(
                session,
                delivery_id=item.delivery_id,
                delivered=delivered,
                retry_at=retry_at,
                status=report.status,
                error=None if delivered else report.detail,
                now=now,
                owner=self.owner,
            )
        extra = {"job_id": job_id, "destination": name, "attempt": attempt}
        if state is None:
            logger.warning(
                "job %d to %s: the delivery's lease was lost to another sender; it records the outcome",
                job_id,
                name,
                extra={"action": "send.lease_lost", **extra},
            )
            return
        _log_outcome(state, report, job_id, name, extra, retry_at is not None, error)


def _log_outcome(
    state: DeliveryState,
    report: SendReport,
    job_id: int,
    name: str,
    extra: dict[str, object],
    will_retry: bool,
    error: BaseException | None,
) -> None:
    extra = {"action": f"send.{state.value}", **extra}
    DELIVERIES.labels(destination=name, outcome=state.value).inc()
    if state is DeliveryState.DELIVERED:
        logger.info("job %d delivered to %s: %s", job_id, name, report.detail, extra=extra)
    elif will_retry:
        logger.info("job %d to %s will retry: %s", job_id, name, report.detail, extra=extra)
    else:
        logger.error(
            "job %d to %s failed: %s (kept on disk; use resend)",
            job_id,
            name,
            report.detail,
            extra=extra,
            exc_info=error,
        )


def refuse_unconfigured_deliveries(sessions: sessionmaker[Session], configured: tuple[Destination, ...]) -> int:
    """Fail pending deliveries to destinations no longer in the config (``resend`` once it is back).

    Returns how many were failed.
    """
    names = [destination.name for destination in configured]
    now = utcnow()
    with sessions.begin() as session:
        orphans = repository.unconfigured_deliveries(session, configured=names)
        for delivery in orphans:
            repository.record_delivery_outcome(
                session,
                delivery_id=delivery.id,
                delivered=False,
                retry_at=None,
                status=None,
                error=f"destination {delivery.destination!r} not configured",
                now=now,
            )
    for delivery in orphans:
        logger.error(
            "job %d to %s failed: destination not configured (kept on disk; add it and use resend)",
            delivery.job_id,
            delivery.destination,
            extra={"action": "send.failed", "job_id": delivery.job_id, "destination": delivery.destination},
        )
    return len(orphans)
