"""The runner: the chest or the generic analysis on real radiographs, timings and error wrapping."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from miemss_node.errors import DecodeError, StageError
from miemss_node.pipeline import runner
from miemss_node.pipeline.base import DecodedImage, ImageAnalysis, PipelineSettings
from miemss_node.pipeline.decode import decode_dataset, decode_image_file, read_dicom_file
from miemss_node.pipeline.runner import analyse_dataset, analyse_image
from tests.support.paths import shared_file, wg04_chest_cr

SETTINGS = PipelineSettings()
CHEST_STAGES = {"enhance", "anatomy", "reference", "regions", "report"}
GENERIC_STAGES = {"enhance", "features", "anomaly", "regions", "report"}

#: A nodule (the projection of a sphere) pasted into the image-left lung of the SIIM PA chest (0.168 mm
#: pixels): centre row, centre column, radius in pixels (10 mm), added display value.
NODULE = (450, 300, 60, 0.3)


def _with_nodule(image: DecodedImage, row: int, col: int, radius: int, contrast: float) -> DecodedImage:
    rows, cols = np.mgrid[: image.pixels.shape[0], : image.pixels.shape[1]]
    rho = np.hypot(rows - row, cols - col) / radius
    nodule = contrast * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
    return replace(image, pixels=np.clip(image.pixels + nodule, 0.0, 1.0).astype(np.float32))


@pytest.fixture(scope="module")
def siim() -> DecodedImage:
    (image,) = decode_dataset(read_dicom_file(shared_file("dicom/xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm")))
    return image


@pytest.fixture(scope="module")
def siim_analysis(siim: DecodedImage) -> ImageAnalysis:
    return analyse_image(siim, SETTINGS)


@pytest.fixture(scope="module")
def nodule_analysis(siim: DecodedImage) -> ImageAnalysis:
    return analyse_image(_with_nodule(siim, *NODULE), SETTINGS)


@pytest.fixture(scope="module")
def rg1() -> DecodedImage:
    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    return image


def test_a_frontal_chest_film_gets_the_chest_analysis(siim_analysis: ImageAnalysis, siim: DecodedImage) -> None:
    assert siim_analysis.method == "chest"
    assert set(siim_analysis.stage_seconds) == CHEST_STAGES
    assert siim_analysis.features is None and siim_analysis.scores is None
    assert siim_analysis.anatomy is not None and siim_analysis.anatomy.chest_frontal
    assert siim_analysis.reference is not None and siim_analysis.reference.role == "reference"
    assert siim_analysis.region_map.labels.shape == siim.pixels.shape
    assert siim_analysis.region_map.heatmap.shape == siim.pixels.shape
    assert 0.0 <= siim_analysis.abnormality_score <= 1.0
    assert siim_analysis.findings[0].startswith("Frontal chest film")


def test_a_pasted_nodule_is_found_as_a_round_density_at_its_place(nodule_analysis: ImageAnalysis) -> None:
    row, col, radius, _ = NODULE
    label = int(nodule_analysis.region_map.labels[row, col])
    assert label > 0
    region = nodule_analysis.region_map.regions[label - 1]
    assert region.label == label
    assert region.kind == "focal"
    assert np.hypot(region.centroid[0] - row, region.centroid[1] - col) < radius
    # SIIM has no Patient Orientation: the image's side, said to be the image's.
    assert region.location == "image left, middle zone (image side: patient orientation unknown)"
    assert region.side is None and region.zone == "middle"
    assert nodule_analysis.abnormality_score >= 0.5


def test_the_same_film_without_the_nodule_has_no_region_there(siim_analysis: ImageAnalysis) -> None:
    row, col, _, _ = NODULE
    assert siim_analysis.region_map.labels[row, col] == 0


def test_areas_are_in_mm2_with_a_pixel_spacing(nodule_analysis: ImageAnalysis) -> None:
    assert nodule_analysis.decoded.pixel_spacing_mm == pytest.approx((0.168, 0.168))
    for region in nodule_analysis.region_map.regions:
        assert region.area_mm2 == pytest.approx(region.area_px * 0.168 * 0.168)
    assert any("mm²" in sentence for sentence in nodule_analysis.findings)


def test_analysis_is_deterministic(siim: DecodedImage, nodule_analysis: ImageAnalysis) -> None:
    again = analyse_image(_with_nodule(siim, *NODULE), SETTINGS)
    np.testing.assert_array_equal(again.region_map.labels, nodule_analysis.region_map.labels)
    assert again.region_map.regions == nodule_analysis.region_map.regions
    assert again.findings == nodule_analysis.findings
    assert again.abnormality_score == nodule_analysis.abnormality_score


def test_a_lateral_view_is_not_analysed_as_a_frontal_film(rg1: DecodedImage) -> None:
    lateral = analyse_image(replace(rg1, view_position="LL"), SETTINGS)
    assert lateral.method == "generic"
    assert set(lateral.stage_seconds) == GENERIC_STAGES


def test_the_chest_analysis_can_be_switched_off(rg1: DecodedImage) -> None:
    assert analyse_image(rg1, replace(SETTINGS, chest_analysis=False)).method == "generic"


def test_without_pixel_spacing_areas_are_in_pixels(rg1: DecodedImage) -> None:
    analysis = analyse_image(rg1, replace(SETTINGS, threshold=0.2))
    assert analysis.method == "chest"
    assert analysis.decoded.pixel_spacing_mm is None
    assert analysis.region_map.regions
    assert all(region.area_mm2 is None for region in analysis.region_map.regions)
    assert any("pixels (pixel spacing unknown)" in sentence for sentence in analysis.findings)


def test_an_extremity_film_gets_the_generic_analysis_without_its_marker() -> None:
    (image,) = decode_dataset(read_dicom_file(shared_file("dicom/transfer_syntaxes/cr_extremity_rg3/rg3_unc.dcm")))
    analysis = analyse_image(image, SETTINGS)
    assert analysis.method == "generic"
    assert set(analysis.stage_seconds) == GENERIC_STAGES
    # The lead "R" marker near the bottom right (rows 70-80 %, columns 85-90 %) is never flagged.
    rows, cols = image.pixels.shape
    assert not analysis.region_map.labels[int(0.7 * rows) : int(0.8 * rows), int(0.85 * cols) : int(0.9 * cols)].any()


def test_a_png_radiograph_runs_through() -> None:
    analysis = analyse_image(decode_image_file(shared_file("images/nih_00000001_000_512_txv.png")), SETTINGS)
    assert analysis.region_map.labels.shape == (512, 512)
    assert analysis.method == "chest"


def test_analyse_dataset_gives_one_analysis_per_frame_with_decode_time() -> None:
    analyses = analyse_dataset(read_dicom_file(get_testdata_file("emri_small.dcm")), SETTINGS)
    assert [a.decoded.frame_number for a in analyses] == list(range(1, 11))
    assert all(set(a.stage_seconds) == GENERIC_STAGES | {"decode"} for a in analyses)


def test_analyse_dataset_raises_decode_error_unwrapped() -> None:
    ds = read_dicom_file(shared_file("dicom/transfer_syntaxes/cr_extremity_rg3/rg3_jply.dcm"))
    with pytest.raises(DecodeError, match="could not be decoded"):
        analyse_dataset(ds, SETTINGS)


def test_a_bad_setting_fails_in_its_stage(rg1: DecodedImage) -> None:
    with pytest.raises(StageError, match="stage 'enhance' failed: ValueError: unknown denoise method") as raised:
        analyse_image(rg1, replace(SETTINGS, denoise_method="median"))
    assert raised.value.stage == "enhance"
    assert isinstance(raised.value.__cause__, ValueError)


@pytest.mark.parametrize(("name", "chest_analysis"), [("judge_chest", True), ("find_regions", False)])
def test_an_unexpected_failure_names_its_stage(
    rg1: DecodedImage, monkeypatch: pytest.MonkeyPatch, name: str, chest_analysis: bool
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of labels")

    monkeypatch.setattr(runner, name, broken)
    with pytest.raises(StageError, match="stage 'regions' failed: RuntimeError: out of labels") as raised:
        analyse_image(rg1, replace(SETTINGS, chest_analysis=chest_analysis))
    assert raised.value.stage == "regions"
