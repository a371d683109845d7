"""Thin C-ECHO / C-STORE glue: persist, record, and map every failure to a DICOM status.

Statuses follow PS3.4 Annex B.2.3 (Storage Service Class) and PS3.7 Annex C; they are named in
:mod:`miemss_node.receive.status`. The database decides first, then the file is placed: a
stored file always matches its row, and two senders of one SOP Instance UID never overwrite
each other. An instance received again is a duplicate (Success) when it is the same, and a
conflict (refused) when its content, study, series or patient differ.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydicom import Dataset, dcmread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.errors import StorageError
from miemss_node.metrics import ASSOCIATIONS, BYTES_RECEIVED, INSTANCES_RECEIVED
from miemss_node.queue import repository
from miemss_node.queue.models import ConflictKind
from miemss_node.receive.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_CONFLICTING_INSTANCE,
    STATUS_CONFLICTING_PATIENT,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_TOO_LARGE,
)
from miemss_node.receive.stream import remove_file
from miemss_node.receive.transport import ConnectionSlots, release_connection
from miemss_node.storage import (
    StorageLayout,
    free_bytes,
    is_valid_uid,
    place_file,
    sync_file,
)

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_CONFLICTING_INSTANCE",
    "STATUS_CONFLICTING_PATIENT",
    "STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "STATUS_TOO_LARGE",
    "IncomingInstance",
    "InstanceStore",
    "RejectedInstance",
    "StoreOutcome",
]

logger = logging.getLogger(__name__)

_UID_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_HEADER_TAGS = [*_UID_TAGS, "PatientID", "IssuerOfPatientID"]


class RejectedInstance(Exception):
    """An instance we refuse, with the DICOM status to answer and the reason to log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class IncomingInstance:
    """A received instance waiting to be persisted: a file with File Meta, and what the request said."""

    path: Path
    #: Bytes of the dataset (after the File Meta).
    size_bytes: int
    #: SHA-256 of the dataset bytes.
    digest: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_aet: str


@dataclass(frozen=True, kw_only=True)
class StoreOutcome:
    """What happened to one received instance."""

    sop_instance_uid: str
    study_instance_uid: str
    duplicate: bool
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class _Header:
    study_uid: str
    series_uid: str
    patient_key: str


@dataclass(frozen=True, kw_only=True)
class _StoredCopy:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    digest: str | None
    patient_key: str | None


class _LostClaim(Exception):
    """Another receiver recorded this SOP Instance UID first."""


class _OtherPatient(Exception):
    """The study's stored instances belong to another patient."""


class InstanceStore:
    """Records received instances, then places their files, in one transaction."""

    def __init__(
        self, storage_dir: Path, sessions: sessionmaker[Session], *, min_free_bytes: int = 0, max_instance_bytes: int = 0
    ) -> None:
        self.storage_dir = storage_dir
        self.layout = StorageLayout(storage_dir)
        self.sessions = sessions
        self.min_free_bytes = min_free_bytes
        self.max_instance_bytes = max_instance_bytes

    def persist(self, incoming: IncomingInstance) -> StoreOutcome:
        """Persist one received instance: its row first, then its file, committed together.

        Raises
        ------
        RejectedInstance
            When the dataset cannot be understood, does not match the request, or conflicts with
            what is stored (another patient in the study; the same SOP Instance UID with other content).
        StorageError
            When the disk or the database cannot take it.
        """
        size = incoming.size_bytes
        if self.max_instance_bytes and size > self.max_instance_bytes:
            raise RejectedInstance(
                STATUS_TOO_LARGE, f"instance exceeds max_instance_mb ({self.max_instance_bytes // 2**20} MB)"
            )
        free = free_bytes(self.storage_dir)
        if free - size < self.min_free_bytes:
            raise StorageError(f"storage disk full ({free // 2**20} MB free)")
        header = _parse_header(incoming.path, incoming.sop_class_uid, incoming.sop_instance_uid)
        relative = self.layout.instance_path(header.study_uid, header.series_uid, incoming.sop_instance_uid)
        record = repository.InstanceRecord(
            study_instance_uid=header.study_uid,
            series_instance_uid=header.series_uid,
            sop_instance_uid=incoming.sop_instance_uid,
            sop_class_uid=incoming.sop_class_uid,
            transfer_syntax_uid=incoming.transfer_syntax_uid,
            path=relative.as_posix(),
            size_bytes=size,
            calling_ae_title=incoming.calling_aet,
            digest=incoming.digest,
            patient_key=header.patient_key,
        )
        try:
            stored = self._stored_copy(incoming.sop_instance_uid)
            if stored is None:
                try:
                    self._claim_and_place(record, incoming.path)
                    return _outcome(record, duplicate=False)
                except _LostClaim:
                    stored = self._stored_copy(incoming.sop_instance_uid)
                except _OtherPatient:
                    self._refuse_conflict(record, ConflictKind.PATIENT, None, "Patient ID differs from the study's")
            if stored is None:
                raise StorageError("the instance's row vanished while it was stored again")
            self._check_repeat(record, header, stored)
        except SQLAlchemyError as exc:
            raise StorageError(f"database unavailable: {type(exc).__name__}") from exc
        return _outcome(record, duplicate=True)

    def persist_bytes(
        self, encoded: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, calling_aet: str
    ) -> StoreOutcome:
        """Persist an instance given as the bytes of a DICOM file (File Meta included)."""
        incoming_dir = self.layout.incoming_dir()
        incoming_dir.mkdir(parents=True, exist_ok=True)
        path = incoming_dir / f"{uuid.uuid4().hex}.part"
        path.write_bytes(encoded)
        try:
            meta_end = _file_meta_end(encoded)
            return self.persist(
                IncomingInstance(
                    path=path,
                    size_bytes=len(encoded) - meta_end,
                    digest=hashlib.sha256(encoded[meta_end:]).hexdigest(),
                    sop_class_uid=sop_class_uid,
                    sop_instance_uid=sop_instance_uid,
                    transfer_syntax_uid=transfer_syntax_uid,
                    calling_aet=calling_aet,
                )
            )
        finally:
            path.unlink(missing_ok=True)

    def _stored_copy(self, sop_instance_uid: str) -> _StoredCopy | None:
        with self.sessions() as session:
            instance = repository.find_instance(session, sop_instance_uid)
            if instance is None:
                return None
            return _StoredCopy(
                study_uid=instance.study.study_instance_uid,
                series_uid=instance.series_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                digest=instance.digest,
                patient_key=instance.study.patient_key,
            )

    def _claim_and_place(self, record: repository.InstanceRecord, source: Path) -> None:
        """Insert the row (the claim), place the file, commit; undo the file if the commit fails."""
        target = self.layout.resolve(record.path)
        sync_file(source)  # the slow part, before the database's write lock is taken
        placed = False
        try:
            with self.sessions.begin() as session:
                now = utcnow()
                study = repository.ensure_study(
                    session, study_instance_uid=record.study_instance_uid, patient_key=record.patient_key, now=now
                )
                if study.patient_key is not None and study.patient_key != record.patient_key:
                    raise _OtherPatient
                if not repository.claim_instance(session, study, record, now):
                    raise _LostClaim
                # Only the claimant gets here: the row (uncommitted, locked) stands for this file.
                place_file(source, target, synced=True)
                placed = True
        except SQLAlchemyError:
            if placed:
                self._undo_placement(record, source, target)
            raise

    def _undo_placement(self, record: repository.InstanceRecord, source: Path, target: Path) -> None:
        """After a failed commit, remove our placed file unless the row did commit after all."""
        try:
            stored = self._stored_copy(record.sop_instance_uid)
        except SQLAlchemyError:
            # Unknown whether the row committed: keep the file (a row never points at nothing);
            # the next receipt of the instance replaces it.
            logger.warning(
                "instance %s: commit failed and could not be checked; file kept",
                record.sop_instance_uid,
                extra={"action": "receive.commit_unknown", "sop_instance_uid": record.sop_instance_uid},
            )
            return
        if stored is not None and stored.digest == (record.digest or None):
            return
        try:
            if os.stat(target).st_ino == os.stat(source).st_ino:
                target.unlink()
        except FileNotFoundError:
            pass

    def _check_repeat(self, record: repository.InstanceRecord, header: _Header, stored: _StoredCopy) -> None:
        """Accept a copy of a stored instance as a duplicate, or refuse it as a conflict."""
        differences = []
        if stored.study_uid != header.study_uid:
            differences.append("Study Instance UID")
        if stored.series_uid != header.series_uid:
            differences.append("Series Instance UID")
        if stored.sop_class_uid != record.sop_class_uid:
            differences.append("SOP Class UID")
        if stored.patient_key is not None and stored.patient_key != header.patient_key:
            differences.append("Patient ID")
        same_encoding = stored.transfer_syntax_uid == record.transfer_syntax_uid
        if not differences and same_encoding and stored.digest is not None and stored.digest != record.digest:
            differences.append("content")
        if differences:
            self._refuse_conflict(
                record,
                ConflictKind.INSTANCE,
                stored.study_uid,
                f"SOP Instance UID stored with other {', '.join(differences)}",
            )
        if not same_encoding:
            # The same instance in another transfer syntax (e.g. compressed by a PACS on the way):
            # its bytes cannot be compared; the stored copy is kept.
            logger.info(
                "instance %s received again in transfer syntax %s; stored copy (%s) kept",
                record.sop_instance_uid,
                record.transfer_syntax_uid,
                stored.transfer_syntax_uid,
                extra={"action": "receive.duplicate_reencoded", "sop_instance_uid": record.sop_instance_uid},
            )

    def _refuse_conflict(
        self, record: repository.InstanceRecord, kind: ConflictKind, stored_study: str | None, detail: str
    ) -> None:
        """Record a conflicting instance for the dashboard, log it, and refuse it."""
        with self.sessions.begin() as session:
            repository.record_conflict(
                session,
                kind=kind,
                study_instance_uid=record.study_instance_uid,
                stored_study_instance_uid=stored_study,
                sop_instance_uid=record.sop_instance_uid,
                detail=detail,
                calling_ae_title=record.calling_ae_title,
                now=utcnow(),
            )
        logger.warning(
            "conflicting instance %s of study %s from %s refused: %s%s",
            record.sop_instance_uid,
            record.study_instance_uid,
            record.calling_ae_title,
            detail,
            f" (stored in study {stored_study})" if stored_study and stored_study != record.study_instance_uid else "",
            extra={
                "action": "receive.conflict",
                "conflict": kind.value,
                "sop_instance_uid": record.sop_instance_uid,
                "study_uid": record.study_instance_uid,
                "stored_study_uid": stored_study,
                "calling_aet": record.calling_ae_title,
            },
        )
        status = STATUS_CONFLICTING_PATIENT if kind is ConflictKind.PATIENT else STATUS_CONFLICTING_INSTANCE
        raise RejectedInstance(status, detail)


def _outcome(record: repository.InstanceRecord, *, duplicate: bool) -> StoreOutcome:
    return StoreOutcome(
        sop_instance_uid=record.sop_instance_uid,
        study_instance_uid=record.study_instance_uid,
        duplicate=duplicate,
        size_bytes=record.size_bytes,
    )


def _file_meta_end(encoded: bytes) -> int:
    """Offset of the dataset in a DICOM file's bytes (after the preamble and File Meta)."""
    if encoded[128:132] != b"DICM":
        return 0
    group_length = int.from_bytes(encoded[140:144], "little")
    return 144 + group_length


def _raw_value(header: Dataset, keyword: str) -> bytes | None:
    """An element's value bytes exactly as received (None when absent), before any decoding."""
    element = header.get_item(keyword)
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode("ascii", "replace")


def _raw_uid(header: Dataset, keyword: str) -> str:
    """A UID as received, with its one allowed padding byte removed; refused when invalid.

    Nothing else is stripped: a UID with a trailing newline or inner space is not valid (PS3.5
    9.1, 6.2), and accepting a stripped copy would file the instance under another identity.
    """
    raw = _raw_value(header, keyword)
    if raw is None or raw in (b"", b"\x00"):
        raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, f"missing {keyword}")
    if len(raw) % 2 == 0 and raw[-1:] in (b"\x00", b" "):
        raw = raw[:-1]
    text = raw.decode("ascii", "replace")
    if not is_valid_uid(text):
        raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, f"invalid {keyword}")
    return text


def patient_key(patient_id: bytes | None, issuer: bytes | None) -> str:
    """SHA-256 of Issuer of Patient ID and Patient ID (padding removed): compares patients without
    storing their IDs."""
    parts = [(value or b"").rstrip(b" \x00") for value in (issuer, patient_id)]
    return hashlib.sha256(b"\\".join(parts)).hexdigest()


def _parse_header(path: Path, sop_class_uid: str, sop_instance_uid: str) -> _Header:
    """Read the identifying attributes without the pixel data; check them against the request."""
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        raws = {tag: _raw_value(header, tag) for tag in _HEADER_TAGS}
    except Exception as exc:
        raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}") from exc
    missing = [tag for tag in _UID_TAGS if raws[tag] in (None, b"", b"\x00")]
    if missing:
        raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, f"missing {', '.join(missing)}")
    uids = {tag: _raw_uid(header, tag) for tag in _UID_TAGS}
    if uids["SOPInstanceUID"] != sop_instance_uid or uids["SOPClassUID"] != sop_class_uid:
        raise RejectedInstance(
            STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class/Instance UID differ from the C-STORE request"
        )
    return _Header(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        patient_key=patient_key(raws["PatientID"], raws["IssuerOfPatientID"]),
    )


def handle_echo(event: Event) -> int:
    """Answer C-ECHO with Success."""
    logger.debug(  # health probes echo often: keep them out of INFO
        "C-ECHO from %s", _calling_aet(event), extra={"action": "receive.echo", "calling_aet": _calling_aet(event)}
    )
    return STATUS_SUCCESS


def _status(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment (0000,0902) telling the sender why (LO: 64 chars)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return status


def handle_store(event: Event, store: InstanceStore, slots: ConnectionSlots) -> int | Dataset:
    """Persist a C-STORE dataset and answer with a status; Success only when it is on disk and recorded.

    The dataset was streamed to a file by the connection's filter (:mod:`miemss_node.receive.transport`),
    which may already have refused it (too large, disk full).
    """
    request = cast("C_STORE", event.request)
    sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
    calling_aet = _calling_aet(event)
    log_extra = {"calling_aet": calling_aet, "sop_instance_uid": sop_instance_uid}
    requestor = event.assoc.requestor
    pdu_filter = slots.filter_of((str(requestor.address), int(requestor.port)))
    received = pdu_filter.take(int(request.MessageID or 0)) if pdu_filter is not None else None
    try:
        if received is None or (received.path is None and received.refusal is None):
            raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, "no dataset received")
        if received.refusal is not None:
            status, reason = received.refusal
            outcome_label = "failed" if status == STATUS_OUT_OF_RESOURCES else "refused"
            INSTANCES_RECEIVED.labels(outcome=outcome_label).inc()
            return _status(status, reason)
        assert received.path is not None
        outcome = store.persist(
            IncomingInstance(
                path=received.path,
                size_bytes=received.size_bytes,
                digest=received.digest,
                sop_class_uid=received.sop_class_uid,
                sop_instance_uid=received.sop_instance_uid,
                transfer_syntax_uid=str(event.context.transfer_syntax),
                calling_aet=calling_aet,
            )
        )
    except RejectedInstance as exc:
        conflict = exc.status in (STATUS_CONFLICTING_INSTANCE, STATUS_CONFLICTING_PATIENT)
        if not conflict:  # conflicts were logged with their UIDs when recorded
            logger.warning(
                "refused instance %s: %s (status 0x%04X)",
                sop_instance_uid,
                exc.reason,
                exc.status,
                extra={"action": "receive.refused", **log_extra},
            )
        INSTANCES_RECEIVED.labels(outcome="conflict" if conflict else "refused").inc()
        return _status(exc.status, exc.reason)
    except StorageError as exc:
        logger.error(
            "could not persist instance %s: %s", sop_instance_uid, exc, extra={"action": "receive.failed", **log_extra}
        )
        INSTANCES_RECEIVED.labels(outcome="failed").inc()
        return _status(STATUS_OUT_OF_RESOURCES, str(exc))
    finally:
        if received is not None:
            remove_file(received.path)
    action = "receive.duplicate" if outcome.duplicate else "receive.stored"
    logger.info(
        "%s instance %s of study %s (%d bytes)",
        "duplicate" if outcome.duplicate else "stored",
        sop_instance_uid,
        outcome.study_instance_uid,
        outcome.size_bytes,
        extra={"action": action, "study_uid": outcome.study_instance_uid, **log_extra},
    )
    INSTANCES_RECEIVED.labels(outcome="duplicate" if outcome.duplicate else "stored").inc()
    BYTES_RECEIVED.inc(outcome.size_bytes)
    return STATUS_SUCCESS


def handle_connection_closed(event: Event, slots: ConnectionSlots) -> None:
    """EVT_CONN_CLOSE: delete what the connection received but nobody persisted; free its slot."""
    requestor = event.assoc.requestor
    release_connection(slots, str(requestor.address), int(requestor.port))


#: Association events counted and logged by :func:`handle_association`, with their log levels.
ASSOCIATION_EVENTS = {
    "established": logging.INFO,
    "rejected": logging.WARNING,
    "released": logging.INFO,
    "aborted": logging.WARNING,
}


def handle_association(event: Event, name: str) -> None:
    """Log and count an association event (EVT_ESTABLISHED, _REJECTED, _RELEASED, _ABORTED)."""
    calling_aet = _calling_aet(event)
    logger.log(
        ASSOCIATION_EVENTS[name],
        "association with %s %s",
        calling_aet,
        name,
        extra={"action": f"receive.association_{name}", "calling_aet": calling_aet},
    )
    ASSOCIATIONS.labels(event=name).inc()


def _calling_aet(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()
