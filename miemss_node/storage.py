"""The storage folder: where everything lives under ``[node] storage_dir``, and durable writes.

This module is the only one that knows the layout::

    <storage_dir>/
        instances/<study UID>/<series UID>/<SOP Instance UID>.dcm   received instances
        results/<study UID>/job-<id>/<kind>_<SOP Instance UID>.dcm    a job's result objects
        results/<study UID>/job-<id>/thumbs/                          the dashboard's thumbnails
        .incoming/<host>-<pid>/                                        instances being received

The database records paths relative to the storage folder, so the folder can move. A UID becomes a
folder name only after :func:`is_valid_uid` accepted it, so a hostile UID such as ``../../etc`` can
never leave the folder. Every file is written with :func:`write_atomically` or moved into place
with :func:`place_file`: a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from miemss_node.errors import OutOfSpaceError, StorageError

INSTANCES = "instances"
RESULTS = "results"
INCOMING = ".incoming"

#: A DICOM UID (PS3.5 9.1): components of digits separated by dots, no leading zero in a
#: component (except "0" itself), at most 64 characters.
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: str) -> bool:
    """True for a syntactically valid UID of at most 64 characters (PS3.5 9.1)."""
    return len(value) <= 64 and UID_PATTERN.fullmatch(value) is not None  # "$" would let a final "\n" through


def _checked(*uids: str) -> None:
    for uid in uids:
        if not is_valid_uid(uid):
            raise ValueError(f"not a valid DICOM UID: {uid[:80]!r}")


@dataclass(frozen=True)
class StorageLayout:
    """Paths under one storage folder.

    Parameters
    ----------
    root
        ``[node] storage_dir`` (absolute).
    """

    root: Path

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """``instances/<study>/<series>/<sop>.dcm``, relative to the root.

        Raises
        ------
        ValueError
            When a UID is not a valid DICOM UID.
        """
        _checked(study_uid, series_uid, sop_uid)
        return Path(INSTANCES) / study_uid / series_uid / f"{sop_uid}.dcm"

    def result_path(self, study_uid: str, job_id: int, kind: str, sop_uid: str) -> Path:
        """``results/<study>/job-<id>/<kind>_<sop>.dcm``, relative to the root."""
        _checked(study_uid, sop_uid)
        return Path(RESULTS) / study_uid / f"job-{job_id}" / f"{kind}_{sop_uid}.dcm"

    def thumbnail_dir(self, study_uid: str, job_id: int) -> Path:
        """The (absolute) folder of a job's thumbnails."""
        _checked(study_uid)
        return self.root / RESULTS / study_uid / f"job-{job_id}" / "thumbs"

    def study_folders(self, study_uid: str) -> list[Path]:
        """Every (absolute) folder holding a study's files: its instances and its results."""
        _checked(study_uid)
        return [self.root / INSTANCES / study_uid, self.root / RESULTS / study_uid]

    def resolve(self, relative: str | Path) -> Path:
        """The absolute path of a path recorded in the database."""
        return self.root / relative

    def incoming_dir(self) -> Path:
        """This process's folder for instances being received (on the storage disk, so a received
        file is linked into place rather than copied)."""
        return self.root / INCOMING / f"{socket.gethostname()}-{os.getpid()}"

    def clear_incoming(self) -> Path:
        """Empty this process's incoming folder and those of dead receivers on this host; return it.

        Files there were never acknowledged (a crash or an abort mid-receive), so the senders still
        have them. Receivers on other hosts sharing the folder keep theirs: their liveness is unknown.
        """
        root = self.root / INCOMING
        host = socket.gethostname()
        for folder in root.glob(f"{host}-*"):
            pid = folder.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
                shutil.rmtree(folder, ignore_errors=True)
        incoming = self.incoming_dir()
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk holding ``folder`` (or its nearest existing parent)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return shutil.disk_usage(existing).free


def disk_problem(folder: Path, min_free_bytes: int) -> str | None:
    """None when the disk of ``folder`` has at least ``min_free_bytes`` free, else what is wrong."""
    try:
        free = free_bytes(folder)
    except OSError as exc:
        return f"disk: storage folder unreadable ({exc.strerror or exc})"
    if free < min_free_bytes:
        return f"disk: {free // 2**20} MB free on the storage disk, below min_free_disk_mb ({min_free_bytes // 2**20})"
    return None


def write_atomically(target: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``target`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, are fsynced, and the file is renamed over
    the target; the folder is fsynced so the rename itself survives a power cut.

    Raises
    ------
    OutOfSpaceError
        When the disk is full.
    StorageError
        When the folder cannot be created or the disk refuses the write otherwise.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)
    except OSError as exc:
        raise _storage_error(target, exc) from exc


def sync_file(path: Path) -> None:
    """fsync a file's data, e.g. a received file before :func:`place_file` (outside any lock).

    Raises
    ------
    StorageError
        When the disk refuses.
    """
    try:
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _storage_error(path, exc) from exc


def place_file(source: Path, target: Path, *, synced: bool = False) -> None:
    """Move a received file into place durably, without copying it when it is on the same disk.

    The source (a temporary file the receiver wrote) is fsynced unless ``synced`` says
    :func:`sync_file` did it, hard-linked under a temporary name beside the target and renamed
    over it; across disks it is copied instead. The source itself is left for its owner to delete.

    Raises
    ------
    StorageError
        When the folder cannot be created or the disk refuses the write.
    """
    if not synced:
        sync_file(source)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".incoming-{uuid.uuid4().hex}.part")
        try:
            os.link(source, temp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copyfile(source, temp)
            with temp.open("rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)
    except OSError as exc:
        raise _storage_error(target, exc) from exc


def _storage_error(target: Path, exc: OSError) -> StorageError:
    """A full disk is an :class:`OutOfSpaceError` (work waits for room), anything else a StorageError."""
    message = f"cannot write {target.name}: {exc.strerror or exc}"
    return OutOfSpaceError(message) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError(message)


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
