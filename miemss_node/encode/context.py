"""Parameter objects of the encoders: what a job asks for, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset

import miemss_node
from miemss_node.pipeline.base import ModelRun

#: The templates shipped with the package (installed editable, so the repository's folder).
DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "dicom_templates"

#: Kinds of result objects, in the order :func:`encode_study` returns them: per image its SEG, SC
#: and Parametric Map, then the study's SR, Encapsulated PDF, Key Object Selection and Grayscale
#: Softcopy Presentation State.
KINDS = ("SEG", "SC", "PM", "SR", "PDF", "KO", "GSPS")

#: What a job encodes when nothing else is asked for.
DEFAULT_KINDS = frozenset({"SEG", "SR", "SC"})


@dataclass(frozen=True, kw_only=True)
class EncodeContext:
    """Everything about a job that the encoders need besides the images and analyses."""

    #: Stable per job: the same key gives the same UIDs, so a retry never duplicates an object.
    job_key: str
    seg_series_number: int = 9001
    sr_series_number: int = 9002
    sc_series_number: int = 9003
    pm_series_number: int = 9004
    pdf_series_number: int = 9005
    ko_series_number: int = 9006
    gsps_series_number: int = 9007
    #: The kinds of result to return (see :data:`KINDS`); an SR still has its SEGs built.
    kinds: frozenset[str] = DEFAULT_KINDS
    #: Institution Name (0008,0080) recorded in our Contributing Equipment, or None.
    institution_name: str | None = None
    #: Models that ran; empty means none did, and the SR says so.
    models: tuple[ModelRun, ...] = ()
    pipeline_version: str = miemss_node.__version__
    templates_dir: Path = field(default=DEFAULT_TEMPLATES_DIR)

    def __post_init__(self) -> None:
        if not self.job_key:
            raise ValueError("EncodeContext.job_key must not be empty")
        numbers = (
            self.seg_series_number,
            self.sr_series_number,
            self.sc_series_number,
            self.pm_series_number,
            self.pdf_series_number,
            self.ko_series_number,
            self.gsps_series_number,
        )
        if any(not 0 < number < 2**31 for number in numbers):
            raise ValueError(f"series numbers must be positive IS values, got {numbers}")
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"SEG, SR, SC, PM, PDF, KO and GSPS series numbers must differ, got {numbers}")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {sorted(self.kinds)}")


@dataclass(frozen=True, kw_only=True)
class EncodedResult:
    """One DICOM object made by :func:`encode_study`."""

    #: One of :data:`KINDS`.
    kind: str
    dataset: Dataset
    #: SOP Instance UIDs of the source images the object was made from.
    source_sop_instance_uids: tuple[str, ...]
