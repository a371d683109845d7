"""The study's Grayscale Softcopy Presentation State, as dcmtk's presentation state renderer reads it.

``dcmp2pgm -v -p GSPS IMAGE OUT.pgm`` renders the image through the presentation state (its VOI
and Presentation LUT), lists every graphic and text object it finds for that image, and writes
each overlay activated in a graphic layer as ``ovl_LLOO.pgm`` at the image's size.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.data import get_testdata_file
from scipy.ndimage import distance_transform_edt
from skimage.segmentation import find_boundaries

from miemss_node.encode import EncodeContext, encode_study
from miemss_node.encode.context import KINDS
from miemss_node.pipeline.base import ImageAnalysis
from tests.integration.test_encode_dciodvfy import PERSON_NAME_WARNING
from tests.support.analysis_factory import make_analysis, make_report, read_source
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.paths import shared_file
from tests.support.tools import tool

pytestmark = pytest.mark.filterwarnings(PERSON_NAME_WARNING)

#: Largest distance, in pixels, between an outline point and the region's boundary.
OUTLINE_TOLERANCE_PX = 1.5

#: Where ``test_gsps_renders_...`` keeps a PNG of the render (for people to look at), when set.
RENDER_ENV = "MIEMSS_GSPS_RENDER"


def _dcmp2pgm() -> str:
    return tool("dcmp2pgm", "dcmtk")


def _gsps(sources: list[Dataset], analyses: list[ImageAnalysis], folder: Path) -> tuple[Path, Dataset]:
    context = EncodeContext(job_key="gsps", kinds=frozenset({"GSPS"}))
    (result,) = encode_study(sources, analyses, make_report(analyses), context)
    assert result.kind == "GSPS"
    path = folder / "gsps.dcm"
    result.dataset.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    return path, pydicom.dcmread(path)


def _render(gsps: Path, image: Path, folder: Path, frame: int | None = None) -> tuple[np.ndarray, str]:
    """dcmp2pgm's render of ``image`` through ``gsps``, and its listing of the presentation state."""
    command = [_dcmp2pgm(), "-v", "-p", str(gsps)]
    if frame is not None:
        command += ["-f", str(frame)]
    done = subprocess.run(
        [*command, str(image), "render.pgm"], cwd=folder, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return np.asarray(Image.open(folder / "render.pgm")), done.stdout + done.stderr


def _graphics(listing: str) -> list[np.ndarray]:
    """The polylines dcmp2pgm lists, as (x, y) points in DICOM image coordinates."""
    lines = re.findall(r"coordinates: (.*)", listing)
    polylines = []
    for line in lines:
        points = [tuple(float(v) for v in pair.split("\\")) for pair in line.strip().rstrip(",").split(", ") if pair]
        polylines.append(np.array(points))
    return polylines


def _texts(listing: str) -> list[str]:
    return re.findall(r'text \d+: "([^"]*)"', listing)


def _near_boundary(points: np.ndarray, mask: np.ndarray) -> bool:
    """Whether every (x, y) point in DICOM coordinates lies on the mask's edge, within tolerance."""
    distance = distance_transform_edt(~find_boundaries(mask, mode="inner"))
    rows, cols = mask.shape
    for x, y in points:
        # DICOM puts a pixel's corner at integers; the pixel containing the point is floor(x), floor(y).
        row, col = min(max(int(y - 0.5), 0), rows - 1), min(max(int(x - 0.5), 0), cols - 1)
        if distance[row, col] > OUTLINE_TOLERANCE_PX:
            return False
    return True


@pytest.mark.slow
def test_gsps_renders_with_dcmp2pgm_and_outlines_the_regions(tmp_path: Path) -> None:
    """A chest CR (MONOCHROME1, uncompressed so dcmtk can decode it) with two regions."""
    path = Path(str(get_testdata_file("RG1_UNCR.dcm")))
    source = read_source(path)
    analysis = make_analysis(source, n_regions=2, abnormality_score=0.42)
    gsps_path, gsps = _gsps([source], [analysis], tmp_path)
    assert gsps.PresentationLUTShape == "INVERSE"  # MONOCHROME1 keeps its polarity
    assert gsps.SoftcopyVOILUTSequence[0].WindowCenter == source.WindowCenter  # the source's window

    rendered, listing = _render(gsps_path, path, tmp_path)
    labels = analysis.region_map.labels
    assert rendered.shape == labels.shape
    plain = subprocess.run(
        [_dcmp2pgm(), str(path), "plain.pgm"], cwd=tmp_path, capture_output=True, timeout=120, check=True
    )
    assert plain.returncode == 0
    # Through the GSPS the film looks as dcmtk shows it by itself: same window, same polarity.
    np.testing.assert_array_equal(rendered, np.asarray(Image.open(tmp_path / "plain.pgm")))

    # The outlines, as graphic objects: one closed polyline per region, on its boundary.
    polylines = _graphics(listing)
    assert len(polylines) == 2
    for region, polyline in zip(analysis.region_map.regions, polylines, strict=True):
        assert np.array_equal(polyline[0], polyline[-1]) and len(polyline) >= 4
        assert _near_boundary(polyline, labels == region.label)
    texts = _texts(listing)
    assert "AI-generated, not for diagnosis" in texts and "Abnormality score 0.42" in texts
    assert [text for text in texts if ": score " in text] == [
        f"{region.label}: score {region.mean_score:.2f}" for region in analysis.region_map.regions
    ]

    # The outlines, as the overlay dcmtk hands a viewer: pixels on the regions' edges, all around.
    overlay = np.asarray(Image.open(tmp_path / "ovl_0101.pgm")) > 0
    assert overlay.shape == labels.shape
    # The line is a few pixels wide on a large film (about 1 per 512 pixels), centred on the edge.
    from_edges = distance_transform_edt(~find_boundaries(labels, mode="inner"))
    assert from_edges[overlay].max() <= max(1, round(min(labels.shape) / 512))
    for region in analysis.region_map.regions:
        edge = find_boundaries(labels == region.label, mode="inner")
        assert (overlay & edge).sum() >= 0.95 * edge.sum()

    if os.environ.get(RENDER_ENV):
        picture = np.repeat(rendered[..., np.newaxis], 3, axis=-1)
        picture[overlay] = (0, 255, 64)
        Image.fromarray(picture).save(os.environ[RENDER_ENV])


def test_study_gsps_presents_every_image_with_its_own_outlines(tmp_path: Path) -> None:
    folder = shared_file("dicom/xray/study_cr_cspine_16x16")
    paths = sorted(folder.glob("*.dcm"))
    sources = [read_source(path) for path in paths]
    analyses = [make_analysis(source, n_regions=n) for source, n in zip(sources, (2, 1, 0), strict=True)]
    gsps_path, gsps = _gsps(sources, analyses, tmp_path)
    presented = {
        str(image.ReferencedSOPInstanceUID) for series in gsps.ReferencedSeriesSequence for image in series.ReferencedImageSequence
    }
    assert presented == {str(source.SOPInstanceUID) for source in sources}
    assert not any(element.tag.group == 0x6000 for element in gsps), "an overlay would show on every image"
    for path, analysis in zip(paths, analyses, strict=True):
        _, listing = _render(gsps_path, path, tmp_path)
        polylines = _graphics(listing)
        assert len(polylines) == len(analysis.region_map.regions)
        for region, polyline in zip(analysis.region_map.regions, polylines, strict=True):
            assert _near_boundary(polyline, analysis.region_map.labels == region.label)
        assert "AI-generated, not for diagnosis" in _texts(listing)


def test_gsps_of_frames_draws_each_frames_regions(tmp_path: Path) -> None:
    path = shared_file("dicom/xray/xa_multiframe_96f_jpegbaseline.dcm")
    source = read_source(path)
    analyses = [
        make_analysis(source, n_regions=2, frame_number=1),
        make_analysis(source, n_regions=1, frame_number=2),
        make_analysis(source, n_regions=0, frame_number=3),
    ]
    _, gsps = _gsps([source], analyses, tmp_path)
    outlines = [a for a in gsps.GraphicAnnotationSequence if a.GraphicLayer == "AI_REGIONS"]
    drawn = {
        int(a.ReferencedImageSequence[0].ReferencedFrameNumber): len(a.GraphicObjectSequence) for a in outlines
    }
    assert drawn == {1: 2, 2: 1}
    warned = [a for a in gsps.GraphicAnnotationSequence if a.GraphicLayer == "AI_WARNING"]
    assert sorted(int(a.ReferencedImageSequence[0].ReferencedFrameNumber) for a in warned) == [1, 2, 3]


def test_a_study_of_two_image_sizes_gets_a_gsps_for_each_size(tmp_path: Path) -> None:
    # A GSPS presents images of one size only (highdicom refuses others), so a PA and a lateral of
    # different sizes must not cost the study its results.
    sources = [read_source(Path(str(get_testdata_file(name)))) for name in ("CT_small.dcm", "MR_small.dcm")]
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        setattr(sources[1], keyword, sources[0].get(keyword, ""))  # one study: a 128² and a 64² image
    analyses = [make_analysis(source, n_regions=1) for source in sources]
    context = EncodeContext(job_key="two sizes", kinds=frozenset({"GSPS"}))
    results = encode_study(sources, analyses, make_report(analyses), context)
    assert [result.kind for result in results] == ["GSPS", "GSPS"]
    assert [result.source_sop_instance_uids for result in results] == [(str(s.SOPInstanceUID),) for s in sources]
    assert len({str(result.dataset.SOPInstanceUID) for result in results}) == 2
    assert [int(result.dataset.InstanceNumber) for result in results] == [1, 2]
    for number, result in enumerate(results):
        path = tmp_path / f"gsps{number}.dcm"
        result.dataset.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []


def test_colour_only_study_gets_no_gsps() -> None:
    source = read_source(shared_file("dicom/other/us_rgb_ge_rle.dcm"))
    analyses = [make_analysis(source, n_regions=1)]
    context = EncodeContext(job_key="colour", kinds=frozenset(KINDS))
    kinds = [result.kind for result in encode_study([source], analyses, make_report(analyses), context)]
    assert "GSPS" not in kinds and "SR" in kinds
