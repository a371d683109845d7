"""Repairs of source defects happen on a copy, never touch UIDs, and are reported by name."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.examples import ct

from miemss_node.encode.repair import REQUIRED_TYPE2, repair_source
from miemss_node.encode.uids import derive_uid, instance_uid, series_uid


def _source(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4"  # same as the study: a real defect that must stay
    ds.Rows = 4
    ds.Columns = 4
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _names(repairs: tuple) -> set[str]:
    return {repair.name for repair in repairs}


def test_bare_patient_age_becomes_years() -> None:
    source = _source(PatientAge="62")
    copy, repairs = repair_source(source)
    assert copy.PatientAge == "062Y"
    assert "PatientAge:normalised" in _names(repairs)
    assert source.PatientAge == "62"


def test_unreadable_patient_age_is_removed() -> None:
    copy, repairs = repair_source(_source(PatientAge="sixty"))
    assert "PatientAge" not in copy
    assert "PatientAge:removed" in _names(repairs)


def test_missing_type2_attributes_are_added_empty() -> None:
    copy, repairs = repair_source(_source())
    for keyword in REQUIRED_TYPE2:
        assert keyword in copy
        assert copy[keyword].value in ("", None)
    assert {f"{keyword}:added-empty" for keyword in REQUIRED_TYPE2} <= _names(repairs)


def test_acr_nema_date_and_time_are_normalised() -> None:
    copy, repairs = repair_source(_source(StudyDate="1995.07.20", StudyTime="11:22:07"))
    assert (copy.StudyDate, copy.StudyTime) == ("19950720", "112207")
    assert {"StudyDate:normalised", "StudyTime:normalised"} <= _names(repairs)


def test_invalid_type2_value_is_emptied_not_removed() -> None:
    copy, repairs = repair_source(_source(PatientSex="female"))
    assert copy.PatientSex == ""
    assert "PatientSex:emptied" in _names(repairs)


def test_zero_pixel_spacing_is_removed() -> None:
    copy, repairs = repair_source(_source(PixelSpacing=[0, 0]))
    assert "PixelSpacing" not in copy
    assert "PixelSpacing:removed" in _names(repairs)


def test_undeclared_latin_text_gets_a_character_set() -> None:
    copy, repairs = repair_source(_source(Manufacturer="ÇÀÎ Rentgenprom"))
    assert copy.SpecificCharacterSet == "ISO_IR 100"
    assert copy.Manufacturer == "ÇÀÎ Rentgenprom"
    assert "SpecificCharacterSet:charset-declared" in _names(repairs)


def test_uids_and_pixels_are_never_touched() -> None:
    source = ct
    copy, _ = repair_source(source)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        assert copy[keyword].value == source[keyword].value
    assert "PixelData" not in copy
    assert "PixelData" in source


def test_malformed_uid_is_kept_verbatim() -> None:
    copy, repairs = repair_source(_source(SOPInstanceUID="999.999.01.23.45.6789"))
    assert copy.SOPInstanceUID == "999.999.01.23.45.6789"
    assert not any(repair.keyword == "SOPInstanceUID" for repair in repairs)


def test_repairs_never_carry_values() -> None:
    _, repairs = repair_source(_source(PatientAge="62", PatientName="Doe^Jane"))
    assert all("62" not in repair.reason and "Doe" not in repair.reason for repair in repairs)


def test_source_without_study_uid_is_refused() -> None:
    source = _source()
    del source.StudyInstanceUID
    with pytest.raises(ValueError, match="no StudyInstanceUID"):
        repair_source(source)


def test_uids_are_deterministic_and_keyed() -> None:
    assert instance_uid("job-1", "SEG", "1.2.3", 4) == instance_uid("job-1", "SEG", "1.2.3", 4)
    assert instance_uid("job-1", "SEG", "1.2.3", 4) != instance_uid("job-2", "SEG", "1.2.3", 4)
    assert instance_uid("job-1", "SEG", "1.2.3", None) != instance_uid("job-1", "SEG", "1.2.3", 1)
    assert series_uid("job-1", "SEG") != series_uid("job-1", "SC")
    assert derive_uid("a/b", "c") != derive_uid("a", "b/c")
    uid = series_uid("job-1", "SR")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid


def test_empty_job_key_is_refused() -> None:
    with pytest.raises(ValueError, match="job_key must not be empty"):
        derive_uid("", "SEG")


def test_empty_character_set_is_removed() -> None:
    copy, repairs = repair_source(_source(SpecificCharacterSet=""))
    assert "SpecificCharacterSet" not in copy
    assert "SpecificCharacterSet:removed" in _names(repairs)
