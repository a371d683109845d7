"""Our SEG and SR as OHIF v3 reads them: dcmjs and the Cornerstone3D adapters under Node.js.

``tests/viewers/load_results.mjs`` runs the viewer's parsing code (versions pinned by
``tests/viewers/package-lock.json``, installed by ``make test`` with ``npm ci``) over the results of
every film of the corpus in one Node.js process, and this test checks what came out:

- the SEG loads as a Cornerstone3D labelmap of the source image (or frame) equal to our label image;
- every region of the SR comes out as a freehand ROI on its source image whose outline follows
  the region's boundary and whose area is the region's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from scipy.ndimage import distance_transform_edt
from skimage.segmentation import find_boundaries

from miemss_node.encode import EncodeContext, encode_study
from miemss_node.pipeline.base import ImageAnalysis
from tests.integration.test_encode_dciodvfy import (
    INVALID_UID_WARNING,
    PERSON_NAME_WARNING,
)
from tests.support.analysis_factory import make_analysis, make_report, read_source
from tests.support.paths import REPO_ROOT, SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(PERSON_NAME_WARNING),
    pytest.mark.filterwarnings(INVALID_UID_WARNING),
]

VIEWERS = REPO_ROOT / "tests" / "viewers"

#: The films checked: every X-ray of the corpus, and pydicom-data's chest CR without it.
CORPUS_FOLDERS = ("dicom/xray", "dicom/transfer_syntaxes")

#: Films encoded with one region instead of two: a one-segment BINARY SEG of a film whose Rows x
#: Columns is not a multiple of 8 (1955 x 1841) has an odd number of packed bytes, padded to even,
#: which the adapters refused ("Unexpected 1-bit SEG PixelData length") until it was written FRACTIONAL.
ONE_REGION_FILMS = {"RG1_J2KI.dcm"}

#: Largest distance, in pixels, between a point of a drawn outline and the region's boundary.
OUTLINE_TOLERANCE_PX = 1.5


@dataclass(frozen=True)
class Film:
    """One source image with its analyses and the SEG/SR files made from them."""

    name: str
    source: Path
    analyses: list[ImageAnalysis]
    segs: list[Path]
    srs: list[Path]


#: Node.js versions that load an ES module shipped as a ".js" file of a CommonJS package
#: (dcmjs, gl-matrix) by themselves; older ones (Debian 12 has 18) get tests/viewers/esm_loader.mjs.
NODE_DETECTS_MODULES = (20, 19)


def _node_command() -> list[str]:
    """How to run Node.js: ``MIEMSS_NODE`` or ``node`` on the PATH, with the loader hook when old."""
    node = os.environ.get("MIEMSS_NODE") or shutil.which("node")
    installed = (VIEWERS / "node_modules" / "@cornerstonejs" / "adapters").is_dir()
    if node is None or not installed:
        message = "Node.js and tests/viewers/node_modules are needed: apt-get install nodejs npm; make test runs npm ci"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    major, minor = (int(part) for part in version.strip().lstrip("v").split(".")[:2])
    if (major, minor) >= NODE_DETECTS_MODULES:
        return [node]
    return [node, "--no-warnings", "--experimental-loader", "./esm_loader.mjs"]


def _films() -> list[Path]:
    files = sorted(
        path for folder in CORPUS_FOLDERS if (SHARED_DATA / folder).is_dir() for path in (SHARED_DATA / folder).rglob("*.dcm")
    )
    return [Path(str(get_testdata_file("RG1_J2KI.dcm"))), *files]


def _part10(path: Path, folder: Path) -> Path:
    """The source as the viewer gets it.

    OHIF gets an image's attributes from the archive (DICOMweb), whatever the file's encoding: a
    raw dataset without preamble is stored with its File Meta, and a Deflated file's attributes
    reach the viewer inflated (dcmjs's Part 10 reader does not inflate). Other files as they are.
    """
    with path.open("rb") as handle:
        has_preamble = handle.read(132)[128:] == b"DICM"
    dataset = read_source(path)
    if has_preamble and dataset.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian:
        return path
    if dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy = folder / f"part10_{path.name}"
    pydicom.dcmwrite(copy, dataset, enforce_file_format=True)
    return copy


def _analyses(source: Dataset, name: str) -> list[ImageAnalysis]:
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        return [make_analysis(source, n_regions=2, frame_number=1), make_analysis(source, n_regions=1, frame_number=2)]
    return [make_analysis(source, n_regions=1 if name in ONE_REGION_FILMS else 2)]


def _encode(path: Path, index: int, folder: Path) -> Film:
    source = read_source(path)
    analyses = _analyses(source, path.name)
    context = EncodeContext(job_key=f"viewers/{path.name}", kinds=frozenset({"SEG", "SR"}))
    segs, srs = [], []
    for result in encode_study([source], analyses, make_report(analyses), context):
        written = folder / f"{index}_{result.kind}_{result.dataset.SOPInstanceUID}.dcm"
        result.dataset.save_as(written, enforce_file_format=True)
        (segs if result.kind == "SEG" else srs).append(written)
    return Film(name=f"film{index}", source=_part10(path, folder), analyses=analyses, segs=segs, srs=srs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Film], dict[str, dict]]:
    """Encode every film, then load all results in one Node.js process."""
    node = _node_command()
    folder = tmp_path_factory.mktemp("viewers")
    films = [_encode(path, index, folder) for index, path in enumerate(_films())]
    manifest = {
        "cases": [
            {
                "name": film.name,
                "sources": [str(film.source)],
                "frames": {str(film.source): len(film.analyses)} if film.analyses[0].decoded.frame_number else {},
                "segs": [str(path) for path in film.segs],
                "srs": [str(path) for path in film.srs],
                "labelmapDir": str(folder),
            }
            for film in films
        ]
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    done = subprocess.run(
        [*node, str(VIEWERS / "load_results.mjs"), str(folder / "manifest.json"), str(folder / "out.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=VIEWERS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    output = json.loads((folder / "out.json").read_text(encoding="utf-8"))
    return films, {case["name"]: case for case in output["cases"]}


def _film_ids() -> list[str]:
    return [path.name for path in _films()]


@pytest.mark.parametrize("index", range(len(_films())), ids=_film_ids())
def test_seg_loads_as_a_labelmap_equal_to_our_mask(loaded: tuple[list[Film], dict[str, dict]], index: int) -> None:
    films, cases = loaded
    film = films[index]
    case = cases[film.name]
    with_regions = [analysis for analysis in film.analyses if analysis.region_map.regions]
    assert len(case["segs"]) == len(with_regions)
    for seg, analysis in zip(case["segs"], with_regions, strict=True):
        assert "error" not in seg, seg.get("error")
        expected_segments = [f"AI-flagged region {region.label}" for region in analysis.region_map.regions]
        assert [segment["label"] for segment in seg["segments"]] == expected_segments
        (labelmap,) = seg["labelmaps"]  # drawn on one image (frame) only
        position = (analysis.decoded.frame_number or 1) - 1
        assert labelmap["imageId"] == case["imageIds"][position]
        dtype = {1: np.uint8, 2: np.uint16}[labelmap["bytesPerPixel"]]
        pixels = np.fromfile(labelmap["file"], dtype=dtype).reshape(labelmap["rows"], labelmap["columns"])
        np.testing.assert_array_equal(pixels, analysis.region_map.labels)


@pytest.mark.parametrize("index", range(len(_films())), ids=_film_ids())
def test_sr_regions_come_out_with_their_outlines(loaded: tuple[list[Film], dict[str, dict]], index: int) -> None:
    films, cases = loaded
    film = films[index]
    (sr,) = cases[film.name]["srs"]
    assert "error" not in sr, sr.get("error")
    measurements = sr["measurements"]
    expected = [(analysis, region) for analysis in film.analyses for region in analysis.region_map.regions]
    assert [m["toolType"] for m in measurements] == ["PlanarFreehandROI"] * len(expected)
    for measurement, (analysis, region) in zip(measurements, expected, strict=True):
        position = (analysis.decoded.frame_number or 1) - 1
        assert measurement["referencedImageId"] == cases[film.name]["imageIds"][position]
        assert measurement["closed"] and len(measurement["imagePoints"]) >= 3
        area = region.area_mm2 if region.area_mm2 is not None else region.area_px
        assert measurement["area"] == pytest.approx(area, rel=1e-3)
        # Cornerstone's image coordinates put pixel centres on integers; the outline runs along
        # the region's edge, so every point lies within a pixel or so of its boundary pixels.
        boundary = find_boundaries(analysis.region_map.labels == region.label, mode="inner")
        distance = distance_transform_edt(~boundary)
        rows, cols = boundary.shape
        for x, y, *_ in measurement["imagePoints"]:
            row = min(max(round(y), 0), rows - 1)
            col = min(max(round(x), 0), cols - 1)
            assert distance[row, col] <= OUTLINE_TOLERANCE_PX, (x, y)
