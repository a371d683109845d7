"""Atomic, durable writes of received instances under the storage folder."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from miemss_node.errors import StorageError

#: A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters. Checked before a UID becomes
#: part of a path, so a hostile UID such as "../../etc" can never leave the storage folder.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    """True for a syntactically valid UID of at most 64 characters."""
    return len(value) <= 64 and UID_PATTERN.match(value) is not None


def instance_relative_path(study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """``instances/<study>/<series>/<sop>.dcm``, relative to the storage folder."""
    for uid in (study_uid, series_uid, sop_uid):
        if not is_valid_uid(uid):
            raise ValueError(f"not a valid DICOM UID: {uid[:80]!r}")
    return Path("instances") / study_uid / series_uid / f"{sop_uid}.dcm"


def write_atomically(target: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``target`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, are fsynced, and the file is renamed over
    the target; the folder is fsynced so the rename itself survives a power cut.

    Raises
    ------
    StorageError
        When the folder cannot be created or the disk refuses the write.
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
        raise StorageError(f"cannot write {target.name}: {exc.strerror or exc}") from exc


def place_file(source: Path, target: Path) -> None:
    """Move a received file into place durably, without copying it when it is on the same disk.

    The source (a temporary file the receiver wrote) is fsynced, hard-linked under a temporary
    name beside the target and renamed over it; across disks it is copied instead. The source
    itself is left for its owner to delete.

    Raises
    ------
    StorageError
        When the folder cannot be created or the disk refuses the write.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as handle:
            os.fsync(handle.fileno())
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
        raise StorageError(f"cannot write {target.name}: {exc.strerror or exc}") from exc


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
