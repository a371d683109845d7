"""Parametric Map, Encapsulated PDF and Key Object Selection: built from real X-rays, round-tripped
through bytes, checked by dciodvfy, and read back (float heatmap, PDF text, key image)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import EncapsulatedPDFStorage, KeyObjectSelectionDocumentStorage, ParametricMapStorage

from miemss_node.encode import EncodeContext, encode_study
from miemss_node.encode.context import KINDS, EncodedResult
from miemss_node.encode.ko import image_score
from miemss_node.encode.pdf import pdf_bytes
from miemss_node.pipeline.base import ImageAnalysis
from tests.integration.test_encode_dciodvfy import INVALID_UID_WARNING, KNOWN_INPUT_ERRORS, PERSON_NAME_WARNING
from tests.support.analysis_factory import make_analysis, make_report, read_source
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.paths import shared_file
from tests.support.tools import tool

pytestmark = pytest.mark.filterwarnings(PERSON_NAME_WARNING)

ALL_KINDS = frozenset(KINDS)

#: A few real inputs: a CR chest (JPEG 2000, no pixel spacing), a canine DX (MONOCHROME1, a
#: patient name to keep out of the PDF), an SC-class CR, a 96-frame XA, the dental CR whose own
#: UID is invalid, and a three-image CR study.
INPUTS = [
    pytest.param("pydicom:RG1_J2KI.dcm", id="wg04-rg1-cr-chest"),
    pytest.param("dicom/xray/dx_thorax_canine_fuji_mono1_8bit.dcm", id="dx-canine"),
    pytest.param("dicom/xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm", id="cr-siim-sc-class"),
    pytest.param("dicom/xray/xa_multiframe_96f_jpegbaseline.dcm", id="xa-96-frames"),
    pytest.param(
        "dicom/xray/cr_dental_mono1_modalitylutseq_jpll.dcm",
        id="cr-dental-invalid-uid",
        marks=pytest.mark.filterwarnings(INVALID_UID_WARNING),
    ),
    pytest.param("dicom/xray/study_cr_cspine_16x16", id="cr-study-3-images"),
]


def _sources(spec: str) -> list[Dataset]:
    if spec.startswith("pydicom:"):
        return [read_source(str(get_testdata_file(spec.split(":", 1)[1])))]
    path = shared_file(spec)
    paths = sorted(path.glob("*.dcm")) if path.is_dir() else [path]
    return [read_source(p) for p in paths]


def _analyses(sources: list[Dataset]) -> list[ImageAnalysis]:
    analyses = []
    for index, source in enumerate(sources):
        frames = int(source.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            analyses += [
                make_analysis(source, n_regions=1, frame_number=1),
                make_analysis(source, n_regions=2, frame_number=2),
                make_analysis(source, n_regions=0, frame_number=frames),
            ]
        else:
            analyses.append(make_analysis(source, n_regions=(2, 0, 1)[index % 3]))
    return analyses


def _round_trip(result: EncodedResult, folder: Path) -> tuple[Path, Dataset]:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, result.dataset, enforce_file_format=True)
    path = folder / f"{result.kind}_{result.dataset.SOPInstanceUID}.dcm"
    path.write_bytes(buffer.getvalue())
    return path, pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def pdf_text(document: bytes, folder: Path) -> str:
    """The text of a PDF as poppler's pdftotext reads it (a real reader, not our writer)."""
    pdftotext = tool("pdftotext", "poppler-utils")
    path = folder / "report.pdf"
    path.write_bytes(document)
    done = subprocess.run([pdftotext, "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True, timeout=60)
    return done.stdout.decode("utf-8")


@pytest.mark.parametrize("spec", INPUTS)
def test_new_result_types_pass_dciodvfy_and_read_back(spec: str, tmp_path: Path) -> None:
    sources = _sources(spec)
    analyses = _analyses(sources)
    report = make_report(analyses)
    results = encode_study(sources, analyses, report, EncodeContext(job_key=f"more/{spec}", kinds=ALL_KINDS))
    by_kind: dict[str, list[Dataset]] = {}
    allowed = set().union(*(KNOWN_INPUT_ERRORS.get(Path(str(s.filename)).name, frozenset()) for s in sources))
    for result in results:
        written, reread = _round_trip(result, tmp_path)
        unexpected = [error for error in dciodvfy_errors(written) if error not in allowed]
        assert unexpected == [], f"{result.kind} of {spec}: {unexpected}"
        assert reread.StudyInstanceUID == sources[0].StudyInstanceUID
        by_kind.setdefault(result.kind, []).append(reread)
    assert {kind: len(items) for kind, items in by_kind.items() if kind in ("PM", "PDF", "KO")} == {
        "PM": len(analyses),
        "PDF": 1,
        "KO": 1,
    }

    # Parametric Map: the heatmap itself, float32, referencing its source (and frame).
    for pm, analysis in zip(by_kind["PM"], analyses, strict=True):
        assert pm.SOPClassUID == ParametricMapStorage and pm.BitsAllocated == 32
        np.testing.assert_allclose(pm.pixel_array, analysis.region_map.heatmap, atol=1e-6)
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        reference = pm.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == analysis.decoded.sop_instance_uid
        assert reference.get("ReferencedFrameNumber") == analysis.decoded.frame_number

    # Key Object Selection: the image with the highest anomaly score, flagged "Of Interest".
    (ko,) = by_kind["KO"]
    assert ko.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert ko.ConceptNameCodeSequence[0].CodeMeaning == "Of Interest"
    best = max(analyses, key=lambda a: (bool(a.region_map.regions), image_score(a)))
    (image_item,) = [item for item in ko.ContentSequence if item.ValueType == "IMAGE"]
    selected = image_item.ReferencedSOPSequence[0]
    assert selected.ReferencedSOPInstanceUID == best.decoded.sop_instance_uid
    assert selected.get("ReferencedFrameNumber") == best.decoded.frame_number

    # Encapsulated PDF: a real reader finds the report, the warning and no patient name.
    (pdf,) = by_kind["PDF"]
    assert pdf.SOPClassUID == EncapsulatedPDFStorage and pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    text = " ".join(pdf_text(pdf_bytes(pdf), tmp_path).split())
    assert "NOT FOR DIAGNOSIS" in text
    assert report.findings[0].split(" (")[0] in text
    assert str(sources[0].StudyInstanceUID) in text
    for source in sources:
        for part in str(source.get("PatientName", "") or "").replace("^", " ").split():
            if len(part) > 3:
                assert part not in text, "the PDF must not print patient data"


def test_kinds_choose_what_is_returned(tmp_path: Path) -> None:
    source = read_source(str(get_testdata_file("CT_small.dcm")))
    analyses = [make_analysis(source, n_regions=2)]
    only = encode_study(
        [source], analyses, make_report(analyses), EncodeContext(job_key="k", kinds=frozenset({"SC", "PDF"}))
    )
    assert [result.kind for result in only] == ["SC", "PDF"]
    sr_only = encode_study(
        [source], analyses, make_report(analyses), EncodeContext(job_key="k", kinds=frozenset({"SR"}))
    )
    assert [result.kind for result in sr_only] == ["SR"]
    written, _ = _round_trip(sr_only[0], tmp_path)
    assert dciodvfy_errors(written) == []


def test_same_job_key_gives_the_same_new_objects() -> None:
    source = read_source(str(get_testdata_file("CT_small.dcm")))
    analyses = [make_analysis(source, n_regions=1)]
    context = EncodeContext(job_key="again", kinds=frozenset({"PM", "PDF", "KO"}))
    first = encode_study([source], analyses, make_report(analyses), context)
    second = encode_study([source], analyses, make_report(analyses), context)
    assert [str(r.dataset.SOPInstanceUID) for r in first] == [str(r.dataset.SOPInstanceUID) for r in second]
    assert len({str(r.dataset.SeriesInstanceUID) for r in first}) == 3


def test_context_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match=r"kinds must be a non-empty subset"):
        EncodeContext(job_key="k", kinds=frozenset({"SEG", "GIF"}))
