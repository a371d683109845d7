"""What the SR says about each region and image: outline, SEG reference, finding site, devices, scores."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from miemss_node.encode import EncodeContext, encode_study
from miemss_node.encode.context import DEFAULT_TEMPLATES_DIR
from miemss_node.encode.overlay import render_analysis_overlay
from miemss_node.encode.templates import load_templates
from miemss_node.pipeline.base import ImageAnalysis
from tests.integration.test_encode_dciodvfy import PERSON_NAME_WARNING
from tests.support.analysis_factory import (
    make_analysis,
    make_anatomy,
    make_report,
    read_source,
)
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.tools import tool

pytestmark = pytest.mark.filterwarnings(PERSON_NAME_WARNING)

#: The abnormality score NUM's concept (sr/measurement_report.json, README "Abnormality score").
ABNORMALITY_SCORE = ("SCT", "246262008")


def _code(item: Dataset, sequence: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[sequence][0]
    return (str(code.CodingSchemeDesignator), str(code.CodeValue))


def _round_trip(dataset: Dataset) -> Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def chest() -> Dataset:
    return read_source(str(get_testdata_file("RG1_J2KI.dcm")))


def _encode(source: Dataset, analyses: list[ImageAnalysis]) -> tuple[Dataset, list[Dataset]]:
    results = encode_study([source], analyses, make_report(analyses), EncodeContext(job_key="sr-regions"))
    sr = _round_trip(next(r.dataset for r in results if r.kind == "SR"))
    segs = [_round_trip(r.dataset) for r in results if r.kind == "SEG"]
    return sr, segs


def _groups(sr: Dataset) -> list[Dataset]:
    (measurements,) = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements.ContentSequence)


def _tracking(group: Dataset) -> str:
    return next(str(item.TextValue) for item in group.ContentSequence if item.get("ValueType") == "TEXT")


def test_each_region_has_its_outline_beside_its_seg_segment(chest: Dataset) -> None:
    analysis = make_analysis(chest, n_regions=2)
    sr, (seg,) = _encode(chest, [analysis])
    assert dciodvfy_errors(sr) == []
    regions = [g for g in _groups(sr) if "region" in _tracking(g)]
    assert len(regions) == 2
    for group, region in zip(regions, analysis.region_map.regions, strict=True):
        area = next(i for i in group.ContentSequence if i.ValueType == "NUM")
        assert area.ConceptNameCodeSequence[0].CodeMeaning == "Area"
        scoord = next(i for i in area.ContentSequence if i.ValueType == "SCOORD")
        assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
        points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1]) and len(points) >= 4
        (source_image,) = scoord.ContentSequence
        assert source_image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == chest.SOPInstanceUID
        row0, col0, row1, col1 = region.bbox
        assert points[:, 0].min() >= col0 - 1 and points[:, 0].max() <= col1 + 1
        assert points[:, 1].min() >= row0 - 1 and points[:, 1].max() <= row1 + 1
        segment = next(i for i in area.ContentSequence if i.ValueType == "IMAGE")
        reference = segment.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        frame = int(reference.ReferencedFrameNumber)
        identification = seg.PerFrameFunctionalGroupsSequence[frame - 1].SegmentIdentificationSequence[0]
        assert int(identification.ReferencedSegmentNumber) == region.label


def test_abnormality_scores_of_each_image_and_of_the_study(chest: Dataset) -> None:
    analysis = make_analysis(chest, n_regions=1, abnormality_score=0.37)
    sr, _ = _encode(chest, [analysis])
    scores = {
        _tracking(group): float(item.MeasuredValueSequence[0].NumericValue)
        for group in _groups(sr)
        for item in group.ContentSequence
        if item.get("ValueType") == "NUM" and _code(item) == ABNORMALITY_SCORE
    }
    assert scores == {"Abnormality score of image 1": 0.37, "Abnormality score of the study": 0.37}


def test_finding_site_and_laterality_on_a_frontal_chest_film(chest: Dataset) -> None:
    anatomy = make_anatomy((int(chest.Rows), int(chest.Columns)))
    analysis = make_analysis(chest, n_regions=1, side="right", zone="lower", kind="zone", anatomy=anatomy)
    sr, _ = _encode(chest, [analysis])
    (region,) = [g for g in _groups(sr) if "region" in _tracking(g)]
    (site,) = [i for i in region.ContentSequence if _code(i) == ("SCT", "363698007")]  # Finding Site
    assert _code(site, "ConceptCodeSequence") == ("SCT", "39607008")  # Lung
    (laterality,) = site.ContentSequence
    assert _code(laterality, "ConceptCodeSequence") == ("SCT", "24028007")  # Right
    texts = [str(item.TextValue) for item in sr.ContentSequence[-1].ContentSequence]
    assert any("upper left (zone)" in text for text in texts)  # the region's location words
    assert dciodvfy_errors(sr) == []


def test_no_finding_site_without_a_side_or_off_the_chest(chest: Dataset) -> None:
    lateral = make_anatomy((int(chest.Rows), int(chest.Columns)), chest_frontal=False)
    for analysis in (
        make_analysis(chest, n_regions=1),
        make_analysis(chest, n_regions=1, side="left", zone="upper", anatomy=lateral),
    ):
        sr, _ = _encode(chest, [analysis])
        (region,) = [g for g in _groups(sr) if "region" in _tracking(g)]
        assert not [i for i in region.ContentSequence if _code(i) == ("SCT", "363698007")]


def test_devices_seen_are_stated(chest: Dataset) -> None:
    devices = ("external lead or line", "burned-in text or marker")
    anatomy = make_anatomy((int(chest.Rows), int(chest.Columns)), devices=devices)
    sr, _ = _encode(chest, [make_analysis(chest, n_regions=0, anatomy=anatomy)])
    texts = [str(item.TextValue) for item in sr.ContentSequence[-1].ContentSequence]
    assert "Devices and objects seen in image 1, never outlined: external lead or line, burned-in text or marker." in texts


def test_dsr2html_names_every_measurement(chest: Dataset, tmp_path: Path) -> None:
    dsr2html = tool("dsr2html", "dcmtk")
    sr, _ = _encode(chest, [make_analysis(chest, n_regions=2, abnormality_score=0.5)])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    html = subprocess.run([dsr2html, str(path)], capture_output=True, check=True).stdout.decode("utf-8", "replace")
    text = re.sub(r"<[^>]+>", " ", html)
    # The default view names each NUM before its value ("Area: 119600.0 {pixels}").
    assert re.search(r"Area:\s+\d", text) and re.search(r"Saliency:\s+0\.\d", text)
    assert re.search(r"Score \(attribute\):\s+0\.5", text)


def test_sc_burns_in_the_abnormality_score(chest: Dataset) -> None:
    template = load_templates(DEFAULT_TEMPLATES_DIR).capture
    low = render_analysis_overlay(make_analysis(chest, n_regions=1, abnormality_score=0.10), template)
    high = render_analysis_overlay(make_analysis(chest, n_regions=1, abnormality_score=0.90), template)
    changed = np.argwhere((low != high).any(axis=-1))
    assert len(changed) > 0, "the score is drawn"
    # Only the text block in the top left corner differs.
    assert changed[:, 0].max() < chest.Rows // 4 and changed[:, 1].max() < chest.Columns // 2
