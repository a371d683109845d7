"""Parameter objects of the encoders: what a job asks for, and what it gets back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources.abc import Traversable

from pydicom import Dataset

import miemss_node
from miemss_node.encode.templates import package_templates
from miemss_node.pipeline.base import ModelRun
from miemss_node.result_kinds import (
    DEFAULT_RESULT_TYPES,
    DEFAULT_SERIES_NUMBERS,
    RESULT_TYPES,
    series_number_problems,
    versioned_series_number,
)

#: The templates shipped with the package (package data, ``miemss_node.dicom_templates``).
DEFAULT_TEMPLATES_DIR = package_templates()

#: Kinds of result objects (:data:`miemss_node.result_kinds.RESULT_KINDS`). :func:`encode_study`
#: returns per image its SEG, SC and Parametric Map, then the study's SR, PDF and KO.
KINDS = RESULT_TYPES

#: What a job encodes when nothing else is asked for.
DEFAULT_KINDS = frozenset(DEFAULT_RESULT_TYPES)


@dataclass(frozen=True, kw_only=True)
class PredecessorDocument:
    """The SR of the previous version of a study's results, which a new SR names in its
    Predecessor Documents Sequence (PS3.3 C.17.2.3)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def as_dataset(self) -> Dataset:
        """The four attributes highdicom's ``previous_versions`` reads."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        return ds


@dataclass(frozen=True, kw_only=True)
class Verification:
    """Who verified a reviewed version and when: the SR's Verifying Observer (PS3.3 C.17.2.2)."""

    #: Verifying Observer Name (PN, e.g. "Smith^Jane").
    observer_name: str
    #: Verifying Organization (LO).
    organization: str
    #: When the reviewer decided (UTC, naive): the Verification DateTime.
    verified_at: datetime


@dataclass(frozen=True, kw_only=True)
class EncodeContext:
    """Everything about a job that the encoders need besides the images and analyses."""

    #: Stable per job: the same key gives the same UIDs, so a retry never duplicates an object.
    job_key: str
    #: Each kind's Series Number for version 1 (``[results]``); later versions add to it.
    series_numbers: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SERIES_NUMBERS))
    #: Which version of the study's results this is: 1 for the first job, 2 after late instances, ...
    version: int = 1
    #: The previous version's SR, named by this version's SR; None for a first version.
    predecessor: PredecessorDocument | None = None
    #: The kinds of result to return (see :data:`KINDS`); an SR still has its SEGs built.
    kinds: frozenset[str] = DEFAULT_KINDS
    #: Institution Name (0008,0080) recorded in our Contributing Equipment, or None.
    institution_name: str | None = None
    #: Models that ran; empty means none did, and the SR says so.
    models: tuple[ModelRun, ...] = ()
    #: Set for a version a reviewer decided on: its SR is VERIFIED by them.
    verification: Verification | None = None
    pipeline_version: str = miemss_node.__version__
    templates_dir: Traversable = field(default=DEFAULT_TEMPLATES_DIR)

    def __post_init__(self) -> None:
        if not self.job_key:
            raise ValueError("EncodeContext.job_key must not be empty")
        missing = sorted(set(KINDS) - set(self.series_numbers))
        problems = series_number_problems(self.series_numbers)
        if missing or problems:
            raise ValueError("; ".join(problems + ([f"no series number for {missing}"] if missing else [])))
        if self.version < 1:
            raise ValueError(f"EncodeContext.version starts at 1, got {self.version}")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {sorted(self.kinds)}")

    def series_number(self, kind: str) -> int:
        """The Series Number of this version's ``kind`` series."""
        return versioned_series_number(self.series_numbers[kind], self.version)

    def series_description(self, description: str) -> str:
        """A template's Series Description with this version in it (LO: at most 64 characters)."""
        suffix = f" v{self.version}"
        return description[: 64 - len(suffix)] + suffix


@dataclass(frozen=True, kw_only=True)
class EncodedResult:
    """One DICOM object made by :func:`encode_study`."""

    #: One of :data:`KINDS`.
    kind: str
    dataset: Dataset
    #: SOP Instance UIDs of the source images the object was made from.
    source_sop_instance_uids: tuple[str, ...]
