"""What the SEG, SR and SC say: masks, references, report text, determinism, no-region studies."""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from miemss_node.encode import EncodeContext, encode_study
from miemss_node.encode.context import EncodedResult
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ModelRun
from miemss_node.result_kinds import DEFAULT_SERIES_NUMBERS
from tests.support.analysis_factory import make_analysis, make_report, read_source
from tests.support.paths import shared_file
from tests.support.tools import tool

#: highdicom warns about single-component Person Names it copies (the CR study's referring
#: physician is empty, but e.g. "ward" in RG1): valid real input.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The string .* is unlikely to represent the intended person name:UserWarning"
)


def _round_trip(dataset: Dataset) -> Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _by_kind(results: list[EncodedResult], kind: str) -> list[Dataset]:
    return [_round_trip(result.dataset) for result in results if result.kind == kind]


def _text_values(sr: Dataset) -> list[str]:
    values: list[str] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT":
                values.append(str(item.TextValue))
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    return values


@pytest.fixture(scope="module")
def ct_source() -> Dataset:
    return read_source(str(get_testdata_file("CT_small.dcm")))


@pytest.fixture(scope="module")
def cr_study() -> list[Dataset]:
    folder = shared_file("dicom/xray/study_cr_cspine_16x16")
    return [read_source(path) for path in sorted(folder.glob("*.dcm"))]


def _encode(
    sources: list[Dataset],
    regions: list[int],
    *,
    job_key: str = "job",
    models: tuple[ModelRun, ...] = (),
    caption: str | None = None,
) -> tuple[list, list[EncodedResult]]:
    analyses = [make_analysis(source, n_regions=n) for source, n in zip(sources, regions, strict=True)]
    report = make_report(analyses, caption=caption, models=models)
    context = EncodeContext(job_key=job_key, models=models)
    return analyses, encode_study(sources, analyses, report, context)


def test_same_job_key_gives_same_uids_and_another_key_does_not(cr_study: list[Dataset]) -> None:
    _, first = _encode(cr_study, [2, 1, 0], job_key="job-A")
    _, again = _encode(cr_study, [2, 1, 0], job_key="job-A")
    _, other = _encode(cr_study, [2, 1, 0], job_key="job-B")

    def uids(results: list[EncodedResult]) -> list[tuple[str, str, str]]:
        return [(r.kind, str(r.dataset.SeriesInstanceUID), str(r.dataset.SOPInstanceUID)) for r in results]

    assert uids(first) == uids(again)
    assert not {uid for row in uids(first) for uid in row[1:]} & {
        uid for row in uids(other) for uid in row[1:]
    }


def test_objects_are_in_the_source_study_each_kind_in_its_own_series(cr_study: list[Dataset]) -> None:
    _, results = _encode(cr_study, [2, 1, 0])
    study = cr_study[0].StudyInstanceUID
    series = {}
    for result in results:
        assert result.dataset.StudyInstanceUID == study
        series.setdefault(result.kind, set()).add(str(result.dataset.SeriesInstanceUID))
        assert result.dataset.Manufacturer == "MIEMSS"
        assert "AI-generated" in result.dataset.SeriesDescription
    assert all(len(uids) == 1 for uids in series.values())
    assert len({uid for uids in series.values() for uid in uids}) == 3
    numbers = {result.kind: int(result.dataset.SeriesNumber) for result in results}
    assert numbers == {"SEG": 9001, "SR": 9002, "SC": 9003}


def test_seg_mask_equals_the_label_image_and_references_the_source(cr_study: list[Dataset]) -> None:
    analyses, results = _encode(cr_study, [2, 1, 0])
    segs = _by_kind(results, "SEG")
    assert len(segs) == 2  # the image without a region has no SEG
    for seg, source, analysis in zip(segs, cr_study[:2], analyses[:2], strict=True):
        assert seg.SegmentationType == "BINARY"
        assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        shared = seg.SharedFunctionalGroupsSequence[0]
        frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
        for index, frame_item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            identification = (
                frame_item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
            )
            number = int(identification[0].ReferencedSegmentNumber)
            derivation = frame_item.DerivationImageSequence[0].SourceImageSequence[0]
            assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID
            np.testing.assert_array_equal(frames[index].astype(bool), analysis.region_map.labels == number)
        assert len(seg.SegmentSequence) == len(analysis.region_map.regions)


def test_multiframe_seg_references_its_frame() -> None:
    source = read_source(shared_file("dicom/xray/xa_multiframe_96f_jpegbaseline.dcm"))
    analysis = make_analysis(source, n_regions=1, frame_number=7)
    results = encode_study([source], [analysis], make_report([analysis]), EncodeContext(job_key="xa"))
    seg = _by_kind(results, "SEG")[0]
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert derivation.ReferencedFrameNumber == 7
    sc = _by_kind(results, "SC")[0]
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == 7


def test_sc_is_viewable_rgb_of_the_source_size(cr_study: list[Dataset], ct_source: Dataset) -> None:
    for source in (*cr_study, ct_source):
        _, results = _encode([source], [2], job_key=f"sc-{source.SOPInstanceUID}")
        sc = _by_kind(results, "SC")[0]
        assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
        assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
        pixels = sc.pixel_array
        assert pixels.shape == (source.Rows, source.Columns, 3) and pixels.dtype == np.uint8
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_sc_shows_outlines_and_text(ct_source: Dataset) -> None:
    analyses, results = _encode([ct_source], [2])
    sc = _by_kind(results, "SC")[0]
    pixels = sc.pixel_array.astype(int)
    labels = analyses[0].region_map.labels
    outline = np.array([0, 255, 64])
    assert np.any(np.all(pixels[labels > 0] == outline, axis=-1))
    # "NOT FOR DIAGNOSIS" in a corner: the top left one unless the regions or the film's own text are there.
    yellowish = (pixels[..., 0] > 180) & (pixels[..., 1] > 180) & (pixels[..., 2] < 100)
    assert yellowish.sum() >= 10
    rows, cols = np.nonzero(yellowish)
    assert rows.min() < ct_source.Rows // 6 or rows.max() > ct_source.Rows * 5 // 6


def test_sr_holds_report_text_models_statement_and_measurements(cr_study: list[Dataset]) -> None:
    analyses, results = _encode(cr_study, [2, 1, 0], caption="a radiograph of the cervical spine")
    sr = _by_kind(results, "SR")[0]
    assert (sr.VerificationFlag, sr.PreliminaryFlag, sr.CompletionFlag) == (
        "UNVERIFIED",
        "PRELIMINARY",
        "COMPLETE",
    )
    texts = _text_values(sr)
    report = make_report(analyses)
    assert report.text in texts
    assert "a radiograph of the cervical spine" in texts
    assert all(finding in texts for finding in report.findings)
    assert any(text.startswith("No learned model (ViT, BLIP) ran") for text in texts)
    assert any(str(cr_study[2].SOPInstanceUID) in text and "No anomalous region" in text for text in texts)
    groups = sr.ContentSequence[-2].ContentSequence  # Imaging Measurements
    # Per image its score group, per segment (2 + 1) its region group, and the study's score group.
    assert len(groups) == 3 + 3 + 1


def test_sr_references_the_seg_segments(cr_study: list[Dataset]) -> None:
    _, results = _encode(cr_study, [2, 1, 0])
    segs = {str(seg.SOPInstanceUID) for seg in _by_kind(results, "SEG")}
    sr = _by_kind(results, "SR")[0]
    referenced = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "IMAGE":
                referenced.extend(item.ReferencedSOPSequence)
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    seg_refs = [ref for ref in referenced if str(ref.ReferencedSOPInstanceUID) in segs]
    assert len(seg_refs) == 3
    assert all("ReferencedFrameNumber" in ref for ref in seg_refs)
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert segs <= evidence


def test_sr_names_the_models_that_ran(ct_source: Dataset) -> None:
    models = (
        ModelRun(role="vit", name="vit-tiny", revision="abc123"),
        ModelRun(role="blip", name="blip-tiny", revision="def456"),
    )
    _, results = _encode([ct_source], [1], models=models)
    texts = _text_values(_by_kind(results, "SR")[0])
    statement = next(text for text in texts if text.startswith("Models that ran"))
    assert "vit vit-tiny (abc123)" in statement and "blip blip-tiny (def456)" in statement
    seg = _by_kind(results, "SEG")[0]
    parameters = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert "vit=vit-tiny@abc123" in parameters


def test_no_region_study_has_sr_and_sc_but_no_seg(cr_study: list[Dataset]) -> None:
    _, results = _encode(cr_study, [0, 0, 0])
    assert sorted(result.kind for result in results) == ["SC", "SC", "SC", "SR"]
    texts = _text_values(_by_kind(results, "SR")[0])
    assert "No anomalous region was found." in texts


def test_dsr2html_renders_report_and_model_statement(cr_study: list[Dataset], tmp_path: Path) -> None:
    dsr2html = tool("dsr2html", "dcmtk")
    analyses, results = _encode(cr_study, [2, 0, 0])
    sr = next(result.dataset for result in results if result.kind == "SR")
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    html = subprocess.run([dsr2html, str(path)], capture_output=True, check=True).stdout.decode(
        "utf-8", "replace"
    )
    assert make_report(analyses).findings[0].split(" (")[0] in html
    assert "No learned model (ViT, BLIP) ran" in html
    assert "UNVERIFIED" in html and "PRELIMINARY" in html


def test_analysis_of_unknown_source_is_refused(cr_study: list[Dataset], ct_source: Dataset) -> None:
    analyses = [make_analysis(ct_source, n_regions=1)]
    with pytest.raises(EncodeError, match="not among the sources"):
        encode_study(cr_study, analyses, make_report(analyses), EncodeContext(job_key="x"))


def test_sources_of_two_studies_are_refused(cr_study: list[Dataset], ct_source: Dataset) -> None:
    analyses = [make_analysis(ct_source, n_regions=1)]
    with pytest.raises(EncodeError, match="one study"):
        encode_study([ct_source, cr_study[0]], analyses, make_report(analyses), EncodeContext(job_key="x"))


def test_image_analysed_twice_is_refused(ct_source: Dataset) -> None:
    analyses = [make_analysis(ct_source, n_regions=1), make_analysis(ct_source, n_regions=0)]
    with pytest.raises(EncodeError, match="analysed twice"):
        encode_study([ct_source], analyses, make_report(analyses), EncodeContext(job_key="x"))


def test_no_analysis_is_refused(ct_source: Dataset) -> None:
    with pytest.raises(EncodeError, match="no analysis to encode"):
        encode_study([ct_source], [], make_report([]), EncodeContext(job_key="x"))


def test_context_refuses_equal_series_numbers() -> None:
    with pytest.raises(ValueError, match="series numbers must differ"):
        EncodeContext(job_key="x", series_numbers={**DEFAULT_SERIES_NUMBERS, "SEG": 5, "SR": 5})


def test_sources_are_not_modified(ct_source: Dataset) -> None:
    before = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    _encode([ct_source], [2])
    assert ct_source == before


def test_label_image_disagreeing_with_regions_is_refused(ct_source: Dataset) -> None:
    analysis = make_analysis(ct_source, n_regions=2)
    one_region = replace(analysis.region_map, regions=analysis.region_map.regions[:1])
    broken = replace(analysis, region_map=one_region)
    with pytest.raises(EncodeError, match=r"holds labels \[1, 2\], the regions are \[1\]"):
        encode_study([ct_source], [broken], make_report([broken]), EncodeContext(job_key="x"))
