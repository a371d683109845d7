"""UIDs of our result objects, derived from the job key so that a retry reproduces them.

A job that runs twice (a lost lease, a retry after a PACS outage) must not create a second copy of
each result in the archive. Every UID we write is therefore a name-based UUID (RFC 9562 version 5)
of the job key and the object's role, under the ``2.25`` root (PS3.5 B.2, "UUID derived UID"),
built with :meth:`highdicom.UID.from_uuid`.
"""

from __future__ import annotations

import json
import uuid

from highdicom import UID

#: Namespace of every MIEMSS name-based UUID. Never change it: doing so changes every UID.
MIEMSS_UUID_NAMESPACE = uuid.UUID("4fcb4948-237d-44b6-a2fd-bf1600187a2a")


def derive_uid(job_key: str, *role: str | int | None) -> UID:
    """Return the UID of one role of one job.

    Parameters
    ----------
    job_key
        Stable key of the job (the same key on a retry).
    *role
        What the UID identifies, e.g. ``("SEG", "series")`` or ``("SC", source_uid, 3)``.
        ``None`` parts are kept, so ``(uid, None)`` and ``(uid,)`` differ.

    Returns
    -------
    highdicom.UID
        ``2.25.<decimal of the UUID>``: at most 44 characters, within the 64 of VR UI.

    Raises
    ------
    ValueError
        When ``job_key`` is empty.
    """
    if not job_key:
        raise ValueError("job_key must not be empty: it is what makes a retry reproduce its UIDs")
    # JSON keeps the parts apart unambiguously ("a/b", "c" differs from "a", "b/c").
    name = json.dumps([job_key, *role], separators=(",", ":"))
    return UID.from_uuid(str(uuid.uuid5(MIEMSS_UUID_NAMESPACE, name)))


def series_uid(job_key: str, kind: str) -> UID:
    """Series Instance UID of the ``kind`` ("SEG", "SR", "SC") series of a job."""
    return derive_uid(job_key, kind, "series")


def instance_uid(job_key: str, kind: str, source_uid: str, frame_number: int | None = None) -> UID:
    """SOP Instance UID of the ``kind`` object made from one source image (and frame)."""
    return derive_uid(job_key, kind, "instance", source_uid, frame_number)


def study_level_uid(job_key: str, kind: str, role: str) -> UID:
    """A UID of an object or item made once per study (the SR document, its observer)."""
    return derive_uid(job_key, kind, role)
