"""The MIEMSS error hierarchy.

Each class's docstring is its default message, and says what to do next.
"""

from __future__ import annotations


class MiemssError(Exception):
    """Something went wrong in the MIEMSS node."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


def describe_error(exc: BaseException) -> str:
    """One line naming an exception and its causes: ``EncodeError: ... (caused by ValueError: ...)``."""
    parts: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(parts) < 5:
        parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__
    return " (caused by ".join(parts) + ")" * (len(parts) - 1)


class ConfigError(MiemssError):
    """The configuration is invalid: fix every listed problem and run `miemss-node check-config`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        listing = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{listing}")


class StorageError(MiemssError):
    """An instance could not be persisted: check that the storage folder is writable and has space."""


class OutOfSpaceError(StorageError):
    """The storage folder's disk is below ``[node] min_free_disk_mb`` free: free some space.

    Work that needs the disk waits and resumes by itself once there is room; nothing is lost.
    """

    def __init__(self, message: str | None = None, *, free_bytes: int | None = None) -> None:
        #: Free bytes on the disk when this was raised, None when unknown (ENOSPC from the OS).
        self.free_bytes = free_bytes
        super().__init__(message)


class DecodeError(MiemssError):
    """The image could not be decoded: the instance is kept on disk but not processed."""

    def __init__(self, message: str, *, sop_instance_uid: str | None = None, reason: str = "undecodable") -> None:
        self.sop_instance_uid = sop_instance_uid
        #: A short code naming why (``miemss_node.pipeline.decode.DecodeReason``), for tests and logs.
        self.reason = reason
        super().__init__(message)


class StageError(MiemssError):
    """A pipeline stage failed: see the cause; the job is retried up to its attempt limit."""

    def __init__(self, stage: str, message: str | None = None) -> None:
        self.stage = stage
        super().__init__(f"stage {stage!r} failed" + (f": {message}" if message else ""))


class ModelError(MiemssError):
    """A model folder could not be loaded offline: check the path in [models] and its files."""


class EncodeError(MiemssError):
    """A DICOM result object could not be built: see the cause; the job fails with this error."""


class TemplateError(MiemssError):
    """A file in dicom_templates/ is missing or does not match its schema: fix the named file."""


class SendError(MiemssError):
    """A result could not be delivered to a destination."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        self.status = status
        self.retryable = retryable
        super().__init__(message)


class ReviewError(MiemssError):
    """A review decision could not be recorded: see the reason (study, finding numbers, reviewer)."""
