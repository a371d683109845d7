"""Repair the defects of a source image that highdicom would otherwise copy into our objects.

Real input is defective (see ``shared/data/MANIFEST.md``): Type 2 attributes missing, a Patient's
Age of "62", ACR-NEMA dates such as "1995.07.20", text in an undeclared character set. highdicom
copies the Patient, General Study and Patient Study modules and the acquisition equipment from the
source, so each defect would reappear in our SEG, SR and SC and make them fail ``dciodvfy``.

The repairs run on a COPY without the pixel data (the encoders need the header only), never touch
a UID (a changed Study or SOP Instance UID would break every reference), and each one is logged
with the source's SOP Instance UID and returned as a :class:`Repair`. Values are never logged,
since they may identify the patient.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

from pydicom import DataElement, Dataset
from pydicom.config import RAISE
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import validate_value

logger = logging.getLogger(__name__)

#: Type 2 attributes of the Patient and General Study modules that highdicom's SEG, SR and SC
#: constructors read from the source (PS3.3 C.7.1.1, C.7.2.1): added empty when missing.
REQUIRED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

#: Pixel data is not needed to encode results and is left out of the copy.
_PIXEL_TAGS = frozenset(Tag(keyword) for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))

#: VRs whose values are checked against PS3.5 6.2. UI is left out on purpose: a UID is a reference
#: and is never changed, even when malformed. Binary and sequence VRs have nothing to check.
_CHECKED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)

#: Attributes that locate the pixels: never removed, since the SEG's geometry and frame
#: references are derived from them; a defect in these fails the encoding instead.
_GEOMETRY_KEYWORDS = frozenset(
    {
        "Rows",
        "Columns",
        "NumberOfFrames",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "SpacingBetweenSlices",
    }
)

#: VRs affected by Specific Character Set (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})

_BARE_AGE = re.compile(r"^\s*(\d{1,3})\s*$")
_ACR_NEMA_DATE = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")
_ACR_NEMA_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_ORIENTATION_VALUE = re.compile(r"^[APRLHF]{1,3}$")


@dataclass(frozen=True, kw_only=True)
class Repair:
    """One change made to the copy of a source dataset."""

    #: Source SOP Instance UID.
    sop_instance_uid: str
    #: DICOM keyword (or tag) of the attribute changed.
    keyword: str
    #: "added-empty", "normalised", "emptied", "removed" or "charset-declared".
    action: str
    #: Why, without the value (which may identify the patient).
    reason: str

    @property
    def name(self) -> str:
        """Short name, e.g. ``"PatientAge:normalised"``."""
        return f"{self.keyword}:{self.action}"


def _keyword(elem: DataElement) -> str:
    return elem.keyword or str(elem.tag)


def _values(elem: DataElement) -> list[object]:
    if elem.value is None or elem.value == "":
        return []
    if isinstance(elem.value, (MultiValue, list, tuple)):
        return list(elem.value)
    return [elem.value]


def _is_valid(vr: str, values: Sequence[object]) -> bool:
    for value in values:
        try:
            # The string form is what is written (DSfloat, IS and PersonName keep their original).
            validate_value(vr, str(value), RAISE)
        except (ValueError, TypeError):
            return False
    return True


def _normalised(vr: str, values: list[object]) -> list[str] | None:
    """Return ACR-NEMA era dates and times in the DICOM form, or None if not recognised.

    PS3.5 6.2 (DA) recommends reading "yyyy.mm.dd" for backward compatibility with versions of the
    standard before 3.0; the same holds for "hh:mm:ss" (TM).
    """
    fixed: list[str] = []
    for value in values:
        text = str(value).strip()
        if vr == "DA" and (match := _ACR_NEMA_DATE.match(text)):
            fixed.append("".join(match.groups()))
        elif vr == "TM" and (match := _ACR_NEMA_TIME.match(text)):
            hours, minutes, seconds, fraction = match.groups()
            fixed.append(f"{hours}{minutes}{seconds or ''}{fraction or ''}")
        else:
            return None
    return fixed if _is_valid(vr, fixed) else None


def _repair_patient_age(copy: Dataset, uid: str) -> list[Repair]:
    """Patient's Age is AS "nnnD|W|M|Y" (PS3.5 6.2); a bare number of years is common."""
    elem = copy.get("PatientAge")
    if elem is None or _is_valid("AS", _values(copy["PatientAge"])):
        return []
    match = _BARE_AGE.match(str(copy.PatientAge))
    if match and int(match.group(1)) <= 150:
        copy.PatientAge = f"{int(match.group(1)):03d}Y"
        return [
            Repair(
                sop_instance_uid=uid,
                keyword="PatientAge",
                action="normalised",
                reason="bare number read as years and written as nnnY (PS3.5 6.2 AS)",
            )
        ]
    del copy.PatientAge
    return [
        Repair(
            sop_instance_uid=uid,
            keyword="PatientAge",
            action="removed",
            reason="not an AS value and not a number of years (Type 3)",
        )
    ]


def _repair_values(copy: Dataset, uid: str) -> list[Repair]:
    """Check the top-level values we may copy; normalise, empty (Type 2) or remove the rest."""
    repairs: list[Repair] = []
    for elem in list(copy):
        if elem.VR not in _CHECKED_VRS or elem.keyword in _GEOMETRY_KEYWORDS:
            continue
        if elem.tag == Tag("PatientAge"):
            continue
        values = _values(elem)
        if _is_valid(elem.VR, values):
            continue
        keyword = _keyword(elem)
        fixed = _normalised(elem.VR, values)
        if fixed is not None:
            elem.value = fixed[0] if len(fixed) == 1 else fixed
            repairs.append(
                Repair(
                    sop_instance_uid=uid,
                    keyword=keyword,
                    action="normalised",
                    reason=f"ACR-NEMA {elem.VR} format rewritten (PS3.5 6.2)",
                )
            )
        elif keyword in REQUIRED_TYPE2:
            elem.value = ""
            repairs.append(
                Repair(
                    sop_instance_uid=uid,
                    keyword=keyword,
                    action="emptied",
                    reason=f"invalid {elem.VR} value of a Type 2 attribute",
                )
            )
        else:
            del copy[elem.tag]
            repairs.append(
                Repair(
                    sop_instance_uid=uid, keyword=keyword, action="removed", reason=f"invalid {elem.VR} value"
                )
            )
    return repairs


def _repair_missing_type2(copy: Dataset, uid: str) -> list[Repair]:
    repairs: list[Repair] = []
    for keyword in REQUIRED_TYPE2:
        if keyword not in copy:
            setattr(copy, keyword, "")
            repairs.append(
                Repair(
                    sop_instance_uid=uid,
                    keyword=keyword,
                    action="added-empty",
                    reason="Type 2 attribute missing from the source",
                )
            )
    return repairs


def _repair_character_set(copy: Dataset, uid: str) -> list[Repair]:
    """Declare the character set of undeclared non-ASCII text (PS3.5 6.1.2.3).

    pydicom reads undeclared bytes as ISO 8859-1, so declaring ISO_IR 100 writes the source's
    bytes back unchanged; when a character falls outside ISO 8859-1's graphic set, UTF-8
    (ISO_IR 192) is declared instead. An empty Specific Character Set (Type 1C, so never empty)
    is removed first: it means the default repertoire.
    """
    repairs: list[Repair] = []
    if "SpecificCharacterSet" in copy and not _values(copy["SpecificCharacterSet"]):
        del copy.SpecificCharacterSet
        repairs.append(
            Repair(
                sop_instance_uid=uid,
                keyword="SpecificCharacterSet",
                action="removed",
                reason="empty Type 1C attribute (the default repertoire is meant)",
            )
        )
    if copy.get("SpecificCharacterSet"):
        return repairs
    texts: list[str] = []
    for elem in copy.iterall():
        if elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            texts.extend(str(value) for value in _values(elem))
    non_ascii = {char for text in texts for char in text if ord(char) > 0x7F}
    if not non_ascii:
        return repairs
    latin1 = all(0xA0 <= ord(char) <= 0xFF for char in non_ascii)
    copy.SpecificCharacterSet = "ISO_IR 100" if latin1 else "ISO_IR 192"
    return [
        *repairs,
        Repair(
            sop_instance_uid=uid,
            keyword="SpecificCharacterSet",
            action="charset-declared",
            reason=f"non-ASCII text without a declared character set; declared {copy.SpecificCharacterSet}",
        ),
    ]


def _repair_patient_orientation(copy: Dataset, uid: str) -> list[Repair]:
    """Patient Orientation (CS, VM 2) is copied into SEG and SC; keep it only when well formed."""
    if "PatientOrientation" not in copy:
        return []
    values = [str(value) for value in _values(copy["PatientOrientation"])]
    if not values or (len(values) == 2 and all(_ORIENTATION_VALUE.match(value) for value in values)):
        return []
    copy.PatientOrientation = ""
    return [
        Repair(
            sop_instance_uid=uid,
            keyword="PatientOrientation",
            action="emptied",
            reason="not two values of A, P, R, L, H, F (PS3.3 C.7.6.1.1.1)",
        )
    ]


def _repair_spacing(copy: Dataset, uid: str) -> list[Repair]:
    """Remove a Pixel Spacing or Imager Pixel Spacing with a value <= 0 (WG04 files have 0\\0).

    highdicom copies Pixel Spacing into the SEG's Pixel Measures; a zero spacing is no spacing.
    """
    repairs: list[Repair] = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword not in copy:
            continue
        try:
            values = [float(str(value)) for value in _values(copy[keyword])]
        except (TypeError, ValueError):
            values = []
        if len(values) == 2 and all(value > 0 for value in values):
            continue
        del copy[keyword]
        repairs.append(
            Repair(
                sop_instance_uid=uid,
                keyword=keyword,
                action="removed",
                reason="not two positive values (PS3.3 10.7.1.3)",
            )
        )
    return repairs


def header_copy(source: Dataset) -> Dataset:
    """Return a deep copy of ``source`` (and its File Meta) without the pixel data."""
    copy = Dataset()
    for elem in source:
        if BaseTag(elem.tag) in _PIXEL_TAGS:
            continue
        copy.add(deepcopy(elem))
    file_meta = getattr(source, "file_meta", None)
    if file_meta is not None:
        copy.file_meta = deepcopy(file_meta)
    return copy


def repair_source(source: Dataset) -> tuple[Dataset, tuple[Repair, ...]]:
    """Return a repaired header-only copy of a source image and the repairs made.

    Parameters
    ----------
    source
        A received image, as read (it is not modified).

    Returns
    -------
    tuple of (pydicom.Dataset, tuple of Repair)
        The copy, and what was changed in it (empty when nothing was).

    Raises
    ------
    ValueError
        When the source has no Study Instance UID or SOP Instance UID: these are never invented.
    """
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ValueError(f"source image has no {keyword}; it cannot be referenced")
    uid = str(source.SOPInstanceUID)
    copy = header_copy(source)
    repairs = [
        *_repair_missing_type2(copy, uid),
        *_repair_patient_age(copy, uid),
        *_repair_values(copy, uid),
        *_repair_patient_orientation(copy, uid),
        *_repair_spacing(copy, uid),
        *_repair_character_set(copy, uid),
    ]
    for repair in repairs:
        logger.info(
            "repaired source attribute %s (%s) of %s: %s",
            repair.keyword,
            repair.action,
            repair.sop_instance_uid,
            repair.reason,
            extra={
                "action": "encode.source_repaired",
                "sop_instance_uid": repair.sop_instance_uid,
                "repair": repair.name,
            },
        )
    return copy, tuple(repairs)
