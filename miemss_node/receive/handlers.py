"""Thin C-ECHO / C-STORE glue: persist, record, and map every failure to a DICOM status.

Statuses follow PS3.4 Annex B.2.3 (Storage Service Class) and PS3.7 Annex C.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydicom import Dataset, dcmread
from pynetdicom import _config
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.errors import StorageError
from miemss_node.metrics import ASSOCIATIONS, BYTES_RECEIVED, INSTANCES_RECEIVED
from miemss_node.queue import repository
from miemss_node.receive.spool import instance_relative_path, place_file, write_atomically

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
"""Stored and recorded, or a duplicate of an instance already recorded."""

STATUS_OUT_OF_RESOURCES = 0xA700
"""Disk or database unavailable: the sender should retry later."""

STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""The dataset's SOP Class or Instance UID differs from the C-STORE request's."""

STATUS_CANNOT_UNDERSTAND = 0xC210
"""The dataset cannot be parsed, or a UID we file it by is missing or malformed."""

STATUS_TOO_LARGE = 0xC001
"""The instance exceeds ``max_instance_mb``: a permanent refusal (Cannot understand range, PS3.4 B.2.3)."""

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


class RejectedInstance(Exception):
    """An instance we refuse, with the DICOM status to answer and the reason to log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class StoreOutcome:
    """What happened to one received instance."""

    sop_instance_uid: str
    study_instance_uid: str
    duplicate: bool
    size_bytes: int


class InstanceStore:
    """Writes received instances to disk and records them, in that order."""

    def __init__(
        self, storage_dir: Path, sessions: sessionmaker[Session], *, min_free_bytes: int = 0, max_instance_bytes: int = 0
    ) -> None:
        self.storage_dir = storage_dir
        self.sessions = sessions
        self.min_free_bytes = min_free_bytes
        self.max_instance_bytes = max_instance_bytes

    def persist(
        self,
        encoded: bytes | Path,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_aet: str,
    ) -> StoreOutcome:
        """Persist one encoded instance (File Meta included), given as bytes or as a received file.

        Raises
        ------
        RejectedInstance
            When the dataset cannot be understood or does not match the request.
        StorageError
            When the disk or the database cannot take it.
        """
        size = encoded.stat().st_size if isinstance(encoded, Path) else len(encoded)
        if self.max_instance_bytes and size > self.max_instance_bytes:
            raise RejectedInstance(
                STATUS_TOO_LARGE, f"{size} bytes exceeds the limit of {self.max_instance_bytes} bytes"
            )
        free = free_bytes(self.storage_dir)
        if free - size < self.min_free_bytes:
            raise StorageError(f"only {free // 2**20} MB free on the storage disk")
        study_uid, series_uid = _parse_header(encoded, sop_class_uid, sop_instance_uid)
        try:
            relative = instance_relative_path(study_uid, series_uid, sop_instance_uid)
        except ValueError as exc:
            raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, str(exc)) from exc
        try:
            with self.sessions.begin() as session:
                if repository.instance_exists(session, sop_instance_uid):
                    return StoreOutcome(
                        sop_instance_uid=sop_instance_uid,
                        study_instance_uid=study_uid,
                        duplicate=True,
                        size_bytes=size,
                    )
                # The file is on disk (fsynced) before the row commits: a row never points at nothing.
                if isinstance(encoded, Path):
                    place_file(encoded, self.storage_dir / relative)
                else:
                    write_atomically(self.storage_dir / relative, encoded)
                record = repository.InstanceRecord(
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    sop_instance_uid=sop_instance_uid,
                    sop_class_uid=sop_class_uid,
                    transfer_syntax_uid=transfer_syntax_uid,
                    path=relative.as_posix(),
                    size_bytes=size,
                    calling_ae_title=calling_aet,
                )
                repository.record_instance(session, record, utcnow())
        except SQLAlchemyError as exc:
            raise StorageError(f"database unavailable: {type(exc).__name__}") from exc
        return StoreOutcome(
            sop_instance_uid=sop_instance_uid, study_instance_uid=study_uid, duplicate=False, size_bytes=size
        )


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk holding ``folder`` (or its nearest existing parent)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return shutil.disk_usage(existing).free


def _parse_header(encoded: bytes | Path, sop_class_uid: str, sop_instance_uid: str) -> tuple[str, str]:
    """Read the identifying UIDs without touching the pixel data; check them against the request."""
    try:
        source = encoded if isinstance(encoded, Path) else BytesIO(encoded)
        header = dcmread(source, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        values = {tag: str(header.get(tag, "") or "").strip() for tag in _HEADER_TAGS}
    except Exception as exc:  # noqa: BLE001 - untrusted bytes can fail a parser in any way; never 0xC211
        raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}") from exc
    missing = [tag for tag in _HEADER_TAGS if not values[tag]]
    if missing:
        raise RejectedInstance(STATUS_CANNOT_UNDERSTAND, f"missing {', '.join(missing)}")
    if values["SOPInstanceUID"] != sop_instance_uid or values["SOPClassUID"] != sop_class_uid:
        raise RejectedInstance(
            STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class/Instance UID differ from the C-STORE request"
        )
    return values["StudyInstanceUID"], values["SeriesInstanceUID"]


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


def handle_store(event: Event, store: InstanceStore) -> int | Dataset:
    """Persist a C-STORE dataset and answer with a status; Success only when it is on disk and recorded."""
    request = cast("C_STORE", event.request)
    sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
    log_extra = {"calling_aet": _calling_aet(event), "sop_instance_uid": sop_instance_uid}
    try:
        outcome = store.persist(
            _received(event),
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            calling_aet=_calling_aet(event),
        )
    except RejectedInstance as exc:
        logger.warning(
            "refused instance %s: %s (status 0x%04X)",
            sop_instance_uid,
            exc.reason,
            exc.status,
            extra={"action": "receive.refused", **log_extra},
        )
        INSTANCES_RECEIVED.labels(outcome="refused").inc()
        return _status(exc.status, exc.reason)
    except StorageError as exc:
        logger.error(
            "could not persist instance %s: %s", sop_instance_uid, exc, extra={"action": "receive.failed", **log_extra}
        )
        INSTANCES_RECEIVED.labels(outcome="failed").inc()
        return _status(STATUS_OUT_OF_RESOURCES, str(exc))
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


def _received(event: Event) -> bytes | Path:
    """The received dataset: the temporary file of a chunked receive, else the bytes in memory."""
    if _config.STORE_RECV_CHUNKED_DATASET:
        return event.dataset_path
    return event.encoded_dataset(include_meta=True)


def _calling_aet(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()
