"""dicom_templates/: every template matches its schema, codes are traceable, breakage is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema  # a missing validator fails this module: templates are never left unchecked
import pytest
from pydicom.sr import _concepts_dict

from miemss_node.encode.context import DEFAULT_TEMPLATES_DIR
from miemss_node.encode.templates import TEMPLATE_SCHEMAS, load_template, load_templates
from miemss_node.errors import TemplateError

#: Codes of the templates that pydicom's concept dictionary does not hold, and why they are used.
CODES_OUTSIDE_PYDICOM = {
    # UCUM annotation for a count of pixels (UCUM 4.3 "curly braces"); no unit of CID 7181 fits.
    ("UCUM", "{pixels}"),
    # TID 1500 row 12 "Qualitative Evaluations" container concept (PS3.16 TID 1500).
    ("UMLS", "C0034375"),
}


def _codes(node: object) -> list[dict[str, str]]:
    if isinstance(node, dict):
        if "CodeValue" in node:
            return [node]
        return [code for value in node.values() for code in _codes(value)]
    if isinstance(node, list):
        return [code for value in node for code in _codes(value)]
    return []


@pytest.fixture
def templates_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "dicom_templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, folder)
    return folder


def test_validator_is_installed() -> None:
    assert jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})


@pytest.mark.parametrize("name", sorted(TEMPLATE_SCHEMAS))
def test_template_matches_its_schema(name: str) -> None:
    assert load_template(DEFAULT_TEMPLATES_DIR, name)


@pytest.mark.parametrize(
    "schema", sorted((DEFAULT_TEMPLATES_DIR / "schemas").glob("*.json")), ids=lambda p: p.name
)
def test_schemas_are_valid_and_refer_locally(schema: Path) -> None:
    contents = json.loads(schema.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(contents)
    refs = [line for line in schema.read_text(encoding="utf-8").splitlines() if '"$ref"' in line]
    assert all('"#/' in ref or '"urn:miemss:dicom-templates:' in ref for ref in refs)


def test_all_templates_load() -> None:
    templates = load_templates(DEFAULT_TEMPLATES_DIR)
    assert templates.report.unit_pixels.value == "{pixels}"
    assert "NOT FOR DIAGNOSIS" in templates.capture.burned_in_text
    assert templates.presentation_state.warning_text == "AI-generated, not for diagnosis"


def test_region_codes_do_not_claim_a_lesion() -> None:
    """An algorithm-flagged region is coded as a region of interest, not as a lesion or structure."""
    templates = load_templates(DEFAULT_TEMPLATES_DIR)
    for category, kind in (
        (templates.segment.category, templates.segment.property_type),
        (templates.report.finding_category, templates.report.finding_type),
    ):
        assert (category.scheme_designator, category.value) == ("SCT", "309825002")  # Spatial and Relational Concept
        assert (kind.scheme_designator, kind.value) == ("NCIt", "C85402")  # Imaging Region of Interest
    lesion_codes = {"52988006", "49755003", "4147007", "27925004"}
    document = (DEFAULT_TEMPLATES_DIR / "seg/anomaly_segment.json").read_text() + (
        DEFAULT_TEMPLATES_DIR / "sr/measurement_report.json"
    ).read_text()
    assert not any(f'"{code}"' in document for code in lesion_codes)


@pytest.mark.parametrize("name", sorted(TEMPLATE_SCHEMAS))
def test_codes_match_the_dicom_dictionary(name: str) -> None:
    """Each code triplet is the one pydicom's concept dictionary (DICOM PS3.16) defines."""
    document = json.loads((DEFAULT_TEMPLATES_DIR / name).read_text(encoding="utf-8"))
    for code in _codes(document):
        key = (code["CodingSchemeDesignator"], code["CodeValue"])
        if key in CODES_OUTSIDE_PYDICOM:
            continue
        meanings = {
            meaning
            for entries in _concepts_dict.concepts[key[0]].values()
            for value, (meaning, _cids) in entries.items()
            if value == key[1]
        }
        assert code["CodeMeaning"] in meanings, f"{name}: {key} means {meanings}"


def test_schema_mismatch_names_the_file(templates_copy: Path) -> None:
    path = templates_copy / "seg" / "anomaly_segment.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document["SegmentedPropertyTypeCodeSequence"]["CodingSchemeDesignator"] = "A" * 17
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(
        TemplateError, match=r"anomaly_segment\.json: does not match .*CodingSchemeDesignator"
    ):
        load_templates(templates_copy)


def test_content_label_over_cs_limit_is_refused(templates_copy: Path) -> None:
    path = templates_copy / "seg" / "anomaly_segment.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document["ContentLabel"] = "MIEMSS_ANOMALY_TOO_LONG"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(TemplateError, match=r"anomaly_segment\.json: .*ContentLabel"):
        load_templates(templates_copy)


def test_invalid_json_names_the_file(templates_copy: Path) -> None:
    (templates_copy / "sr" / "measurement_report.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"measurement_report\.json: not valid JSON"):
        load_templates(templates_copy)


def test_missing_template_names_the_file(templates_copy: Path) -> None:
    (templates_copy / "sc" / "secondary_capture.json").unlink()
    with pytest.raises(TemplateError, match=r"secondary_capture\.json: cannot be read"):
        load_templates(templates_copy)


def test_unknown_field_is_refused(templates_copy: Path) -> None:
    path = templates_copy / "sc" / "secondary_capture.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document["heatmapOpacty"] = 0.5
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(TemplateError, match=r"secondary_capture\.json: .*heatmapOpacty"):
        load_templates(templates_copy)
