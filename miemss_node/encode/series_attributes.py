"""General Series attributes that our images take from their source."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset
from pydicom.config import RAISE
from pydicom.valuerep import validate_value


def _valid_cs(value: object) -> bool:
    try:
        validate_value("CS", str(value), RAISE)
    except ValueError:
        return False
    return bool(str(value).strip())


def copy_laterality(source: Dataset | Sequence[Dataset], target: Dataset) -> None:
    """Copy Laterality and Body Part Examined (General Series, PS3.3 C.7.3.1) from the source.

    Laterality is Type 2C, required for a paired body part, and empty only when the side is
    really unknown:

    - the source names a side (R or L): that side, and the source's body part;
    - the source has no Laterality but names its body part: that body part and no Laterality,
      which validators such as dciodvfy then check against the body part;
    - otherwise (the source's Laterality is empty, or nothing is known): an empty Laterality,
      the side being unknown, and no body part, since whether it is paired is not known.

    Of several sources (a study's GSPS), a value is copied only when all agree.
    """
    sources = [source] if isinstance(source, Dataset) else list(source)
    lateralities = {None if "Laterality" not in item else str(item.Laterality or "") for item in sources}
    body_parts = {str(item.get("BodyPartExamined", "") or "") for item in sources}
    laterality = lateralities.pop() if len(lateralities) == 1 else ""
    body_part = body_parts.pop() if len(body_parts) == 1 else ""
    for keyword in ("Laterality", "BodyPartExamined"):
        if keyword in target:
            del target[keyword]
    known_part = bool(body_part) and _valid_cs(body_part)
    if laterality in ("R", "L"):
        target.Laterality = laterality
        if known_part:
            target.BodyPartExamined = body_part
    elif laterality is None and known_part:
        target.BodyPartExamined = body_part
    else:
        target.add_new("Laterality", "CS", "")
