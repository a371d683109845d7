"""Studies made from real images: the same pixels under new Study/Series/SOP Instance UIDs."""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid


def copies_as_new_study(source: Path | Dataset, count: int) -> list[Dataset]:
    """``count`` copies of ``source`` forming one new study (one series), each a distinct instance."""
    original = source if isinstance(source, Dataset) else dcmread(source)
    study_uid, series_uid = generate_uid(), generate_uid()
    study = []
    for index in range(count):
        ds = copy.deepcopy(original)  # Dataset.copy() is shallow: the copies would share one UID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        study.append(ds)
    return study
