"""Every real X-ray of the corpus: every result type (SEG, SR, SC, PM, PDF, KO, GSPS) is built,
round-trips through bytes, and passes dciodvfy with no error other than the listed defects of the
input that cannot be repaired."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from miemss_node.encode import EncodeContext, encode_study
from miemss_node.encode.context import KINDS, EncodedResult
from tests.support.analysis_factory import make_analysis, make_report, read_source
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.paths import SHARED_DATA

CORPUS_FOLDERS = ("dicom/xray", "dicom/transfer_syntaxes")

#: Defects of an input that our objects must carry because they are references to it.
#: cr_dental: the source's own SOP Instance UID is "999.999.01.23.45.6789" (illegal root, leading
#: zero). Every reference to the source must quote it verbatim, so it cannot be repaired.
KNOWN_INPUT_ERRORS: dict[str, frozenset[str]] = {
    "cr_dental_mono1_modalitylutseq_jpll.dcm": frozenset(
        {
            'Error - Illegal root for UID - "999.999.01.23.45.6789" in (0x0008,0x1155) '
            "Referenced SOP Instance UID",
            "Error - Value invalid for this VR - (0x0008,0x1155) UI Referenced SOP Instance UID  "
            "UI [1] = <999.999.01.23.45.6789> - Leading zeroes in embedded numeric component(s)",
            "Error - Dicom dataset contains invalid data values for Value Representations",
        }
    ),
}

#: highdicom warns about every single-component Person Name it copies ("Anonymized", "ward",
#: "Rubo DEMO"): real, valid input, so this one warning is expected for the corpus.
PERSON_NAME_WARNING = "ignore:The string .* is unlikely to represent the intended person name:UserWarning"

#: pydicom warns when it reads the dental CR's invalid SOP Instance UID (a known input error).
INVALID_UID_WARNING = r"ignore:Invalid value for VR UI.*999\.999\.01\.23\.45\.6789:UserWarning"


def _corpus_params() -> list[object]:
    files = sorted(
        path
        for folder in CORPUS_FOLDERS
        if (SHARED_DATA / folder).is_dir()
        for path in (SHARED_DATA / folder).rglob("*.dcm")
    )
    if not files:
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(reason=f"shared corpus not available under {SHARED_DATA}"),
                id="corpus-absent",
            )
        ]
    params = []
    for path in files:
        marks = [pytest.mark.filterwarnings(PERSON_NAME_WARNING)]
        if path.name in KNOWN_INPUT_ERRORS:
            marks.append(pytest.mark.filterwarnings(INVALID_UID_WARNING))
        params.append(pytest.param(path, marks=marks, id=str(path.relative_to(SHARED_DATA))))
    return params


def _package_params() -> list[object]:
    """Inputs shipped with pydicom and pydicom-data, so something runs without the corpus."""
    params = []
    for name in ("RG1_J2KI.dcm", "CT_small.dcm"):
        found = get_testdata_file(name)
        if found is None:
            raise FileNotFoundError(f"{name} is missing: pip install pydicom-data")
        params.append(
            pytest.param(
                Path(str(found)), id=f"pydicom-{name}", marks=pytest.mark.filterwarnings(PERSON_NAME_WARNING)
            )
        )
    return params


def _analyses(source: Dataset) -> list:
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        return [make_analysis(source, n_regions=2)]
    # A multi-frame image is analysed frame by frame: regions in two frames, none in the last.
    return [
        make_analysis(source, n_regions=2, frame_number=1),
        make_analysis(source, n_regions=1, frame_number=2),
        make_analysis(source, n_regions=0, frame_number=frames),
    ]


def _round_trip(result: EncodedResult, folder: Path) -> tuple[Path, Dataset]:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, result.dataset, enforce_file_format=True)
    path = folder / f"{result.kind}_{result.dataset.SOPInstanceUID}.dcm"
    path.write_bytes(buffer.getvalue())
    return path, pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _check_file(path: Path, tmp_path: Path) -> None:
    source = read_source(path)
    analyses = _analyses(source)
    context = EncodeContext(job_key=f"test/{path.name}", kinds=frozenset(KINDS))
    results = encode_study([source], analyses, make_report(analyses), context)
    kinds = sorted(result.kind for result in results)
    n_images = len(analyses)
    n_segs = sum(1 for analysis in analyses if analysis.region_map.regions)
    gsps = ["GSPS"] if source.get("PhotometricInterpretation") in ("MONOCHROME1", "MONOCHROME2") else []
    per_image = ["SC"] * n_images + ["PM"] * n_images + ["SEG"] * n_segs
    assert kinds == sorted([*per_image, "SR", "PDF", "KO", *gsps])
    allowed = KNOWN_INPUT_ERRORS.get(path.name, frozenset())
    for result in results:
        written, reread = _round_trip(result, tmp_path)
        assert reread.SOPInstanceUID == result.dataset.SOPInstanceUID
        assert reread.StudyInstanceUID == source.StudyInstanceUID
        assert reread.SOPClassUID == result.dataset.SOPClassUID
        errors = dciodvfy_errors(written)
        unexpected = [error for error in errors if error not in allowed]
        assert unexpected == [], f"{result.kind} of {path.name}: {unexpected}"


@pytest.mark.slow
@pytest.mark.parametrize("path", _corpus_params())
def test_corpus_results_pass_dciodvfy(path: Path, tmp_path: Path) -> None:
    _check_file(path, tmp_path)


@pytest.mark.parametrize("path", _package_params())
def test_package_images_results_pass_dciodvfy(path: Path, tmp_path: Path) -> None:
    _check_file(path, tmp_path)


def test_known_input_errors_are_present_in_the_input() -> None:
    """The listed defects really are the input's: dciodvfy reports them on the source itself."""
    path = SHARED_DATA / "dicom/xray/cr_dental_mono1_modalitylutseq_jpll.dcm"
    if not path.exists():
        pytest.skip(f"shared corpus not available under {SHARED_DATA}")
    source_errors = "\n".join(dciodvfy_errors(path))
    assert 'Illegal root for UID - "999.999.01.23.45.6789"' in source_errors
    assert "Leading zeroes in embedded numeric component(s)" in source_errors


@pytest.mark.filterwarnings(PERSON_NAME_WARNING)
def test_wg04_chest_cr_encodes_quickly() -> None:
    """Encoding the RG1 chest CR (1955 x 1841, two regions) takes seconds, not minutes."""
    source = read_source(str(get_testdata_file("RG1_J2KI.dcm")))
    analyses = [make_analysis(source, n_regions=2)]
    started = time.perf_counter()
    encode_study([source], analyses, make_report(analyses), EncodeContext(job_key="timing"))
    assert time.perf_counter() - started < 30.0
