"""The kinds of result object the node makes: the one list that config, encoders, conformance and
the sender derive their kinds, SOP classes and series numbers from.

A new kind is one more :class:`ResultKind` in :data:`RESULT_KINDS` (and its encoder): the
``result_types`` a destination may name, the ``[results] <kind>_series_number`` key, the kinds an
encoding job accepts and the conformance statement's SOP classes all follow from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from types import MappingProxyType


@dataclass(frozen=True, kw_only=True)
class ResultKind:
    """One kind of result object."""

    #: What ``result_types`` and the results table call it ("SEG").
    name: str
    #: What it is, for people (config comments, conformance statement).
    title: str
    #: pydicom's keyword of the SOP Class of the objects of this kind (``pydicom.uid``).
    sop_class: str
    #: Series Number of the first version's series, unless ``[results]`` says otherwise.
    series_number: int

    @property
    def sop_class_uid(self) -> str:
        """SOP Class UID of the objects of this kind (pydicom is imported only when it is asked for,
        so that ``--help`` and ``check-config`` start without it)."""
        return str(getattr(import_module("pydicom.uid"), self.sop_class))

    @property
    def series_number_key(self) -> str:
        """The ``[results]`` key that sets this kind's Series Number (``seg_series_number``)."""
        return f"{self.name.lower()}_series_number"


#: Every kind, in the order the documentation lists them.
RESULT_KINDS: tuple[ResultKind, ...] = (
    ResultKind(name="SEG", title="Segmentation", sop_class="SegmentationStorage", series_number=9001),
    ResultKind(name="SR", title="Comprehensive 3D SR", sop_class="Comprehensive3DSRStorage", series_number=9002),
    ResultKind(name="SC", title="Secondary Capture", sop_class="SecondaryCaptureImageStorage", series_number=9003),
    ResultKind(name="PM", title="Parametric Map", sop_class="ParametricMapStorage", series_number=9004),
    ResultKind(name="PDF", title="Encapsulated PDF", sop_class="EncapsulatedPDFStorage", series_number=9005),
    ResultKind(
        name="KO", title="Key Object Selection", sop_class="KeyObjectSelectionDocumentStorage", series_number=9006
    ),
    ResultKind(
        name="GSPS",
        title="Grayscale Softcopy Presentation State",
        sop_class="GrayscaleSoftcopyPresentationStateStorage",
        series_number=9007,
    ),
)

#: The names of :data:`RESULT_KINDS`, in the same order.
RESULT_TYPES: tuple[str, ...] = tuple(kind.name for kind in RESULT_KINDS)

#: What a destination gets when its table names no ``result_types``.
DEFAULT_RESULT_TYPES: tuple[str, ...] = ("SEG", "SR", "SC")

#: Each kind's default Series Number.
DEFAULT_SERIES_NUMBERS: Mapping[str, int] = MappingProxyType({kind.name: kind.series_number for kind in RESULT_KINDS})

#: A later version of a study's results adds this to every Series Number (version 2 of the SR is in
#: series 9102 by default), so a PACS lists each version's series apart; the configured numbers must
#: therefore lie within a span smaller than this.
SERIES_NUMBER_VERSION_STEP = 100


#: Largest first-version Series Number: IS holds up to 2**31 - 1, and later versions add to it.
MAX_SERIES_NUMBER = 2**31 - 1 - 10**6


def kind_named(name: str) -> ResultKind:
    """The kind called ``name``.

    Raises
    ------
    KeyError
        When no kind has that name.
    """
    for kind in RESULT_KINDS:
        if kind.name == name:
            return kind
    raise KeyError(f"unknown result kind {name!r} (known: {', '.join(RESULT_TYPES)})")


def versioned_series_number(base: int, version: int) -> int:
    """The Series Number of a kind whose first version uses ``base``, for results ``version``."""
    if version < 1:
        raise ValueError(f"result versions start at 1, got {version}")
    return base + SERIES_NUMBER_VERSION_STEP * (version - 1)


def series_number_problems(numbers: Mapping[str, int]) -> list[str]:
    """Why a set of first-version Series Numbers cannot be used, or nothing.

    They must be positive IS values, differ from each other, and lie within a span smaller than
    :data:`SERIES_NUMBER_VERSION_STEP`, so no later version's series takes another kind's number.
    """
    problems = []
    bad = sorted(name for name, number in numbers.items() if not 0 < number <= MAX_SERIES_NUMBER)
    if bad:
        problems.append(f"series numbers must be between 1 and {MAX_SERIES_NUMBER}: {', '.join(bad)}")
    if len(set(numbers.values())) != len(numbers):
        problems.append(f"the series numbers must differ: {dict(numbers)}")
    if numbers and max(numbers.values()) - min(numbers.values()) >= SERIES_NUMBER_VERSION_STEP:
        problems.append(
            f"the series numbers must lie within {SERIES_NUMBER_VERSION_STEP - 1} of each other (later versions "
            f"add {SERIES_NUMBER_VERSION_STEP} per version): {dict(numbers)}"
        )
    return problems
