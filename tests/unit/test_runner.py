"""The runner: the whole classical pipeline on real radiographs, timings and error wrapping."""

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
STAGES = {"enhance", "features", "anomaly", "regions", "report"}

#: A soft-edged bright disk (a synthetic nodule) pasted into the right lung of the WG04 chest CR:
#: centre row, centre column, radius in pixels, added brightness.
NODULE = (700, 1300, 90, 0.3)


@pytest.fixture(scope="module")
def chest() -> DecodedImage:
    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    return image


@pytest.fixture(scope="module")
def chest_with_nodule(chest: DecodedImage) -> DecodedImage:
    row, col, radius, brightness = NODULE
    rows, cols = np.mgrid[: chest.pixels.shape[0], : chest.pixels.shape[1]]
    distance = np.hypot(rows - row, cols - col)
    nodule = brightness / (1.0 + np.exp((distance - radius) / (0.15 * radius)))
    return replace(chest, pixels=np.clip(chest.pixels + nodule, 0.0, 1.0).astype(np.float32))


@pytest.fixture(scope="module")
def nodule_analysis(chest_with_nodule: DecodedImage) -> ImageAnalysis:
    return analyse_image(chest_with_nodule, SETTINGS)


def test_a_pasted_nodule_is_found_as_a_region_at_its_place(nodule_analysis: ImageAnalysis) -> None:
    row, col, radius, _ = NODULE
    label = int(nodule_analysis.region_map.labels[row, col])
    assert label > 0
    region = nodule_analysis.region_map.regions[label - 1]
    assert region.label == label
    assert np.hypot(region.centroid[0] - row, region.centroid[1] - col) < radius
    assert region.location == "middle right"  # row 700 of 1955 is just below the upper third


def test_the_nodule_is_among_the_strongest_regions(nodule_analysis: ImageAnalysis) -> None:
    row, col, _, _ = NODULE
    assert 0 < int(nodule_analysis.region_map.labels[row, col]) <= 3


def test_the_same_image_without_the_nodule_has_no_region_there(chest: DecodedImage) -> None:
    row, col, _, _ = NODULE
    assert analyse_image(chest, SETTINGS).region_map.labels[row, col] == 0


def test_analysis_is_complete_and_timed(nodule_analysis: ImageAnalysis, chest_with_nodule: DecodedImage) -> None:
    assert set(nodule_analysis.stage_seconds) == STAGES
    assert all(seconds >= 0 for seconds in nodule_analysis.stage_seconds.values())
    assert nodule_analysis.decoded is chest_with_nodule
    assert nodule_analysis.enhanced.pixels.shape == chest_with_nodule.pixels.shape
    assert nodule_analysis.region_map.heatmap.shape == chest_with_nodule.pixels.shape
    n_regions = len(nodule_analysis.region_map.regions)
    plural = "1 anomalous region was found." if n_regions == 1 else f"{n_regions} anomalous regions were found."
    assert nodule_analysis.findings[0] == plural
    assert len(nodule_analysis.findings) == n_regions + 1


def test_without_pixel_spacing_areas_are_in_pixels(nodule_analysis: ImageAnalysis) -> None:
    assert nodule_analysis.decoded.pixel_spacing_mm is None
    assert all(region.area_mm2 is None for region in nodule_analysis.region_map.regions)
    assert "pixels (pixel spacing unknown)" in nodule_analysis.findings[1]


def test_analysis_is_deterministic(chest_with_nodule: DecodedImage, nodule_analysis: ImageAnalysis) -> None:
    again = analyse_image(chest_with_nodule, SETTINGS)
    np.testing.assert_array_equal(again.scores.scores, nodule_analysis.scores.scores)
    np.testing.assert_array_equal(again.region_map.labels, nodule_analysis.region_map.labels)
    assert again.region_map.regions == nodule_analysis.region_map.regions
    assert again.findings == nodule_analysis.findings


def test_areas_are_in_mm2_with_a_pixel_spacing() -> None:
    (image,) = decode_dataset(read_dicom_file(shared_file("dicom/xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm")))
    analysis = analyse_image(image, SETTINGS)
    assert image.pixel_spacing_mm == pytest.approx((0.168, 0.168))
    for region in analysis.region_map.regions:
        assert region.area_mm2 == pytest.approx(region.area_px * 0.168 * 0.168)
        assert region.area_mm2 >= SETTINGS.min_region_area_mm2 * 0.5  # measured at source size


def test_a_png_radiograph_runs_through() -> None:
    analysis = analyse_image(decode_image_file(shared_file("images/nih_00000001_000_512_txv.png")), SETTINGS)
    assert analysis.region_map.labels.shape == (512, 512)


def test_analyse_dataset_gives_one_analysis_per_frame_with_decode_time() -> None:
    analyses = analyse_dataset(read_dicom_file(get_testdata_file("emri_small.dcm")), SETTINGS)
    assert [a.decoded.frame_number for a in analyses] == list(range(1, 11))
    assert all(set(a.stage_seconds) == STAGES | {"decode"} for a in analyses)


def test_analyse_dataset_raises_decode_error_unwrapped() -> None:
    ds = read_dicom_file(shared_file("dicom/transfer_syntaxes/cr_extremity_rg3/rg3_jply.dcm"))
    with pytest.raises(DecodeError, match="could not be decoded"):
        analyse_dataset(ds, SETTINGS)


def test_a_bad_setting_fails_in_its_stage(chest: DecodedImage) -> None:
    with pytest.raises(StageError, match="stage 'enhance' failed: ValueError: unknown denoise method") as raised:
        analyse_image(chest, replace(SETTINGS, denoise_method="median"))
    assert raised.value.stage == "enhance"
    assert isinstance(raised.value.__cause__, ValueError)


def test_an_unexpected_failure_names_its_stage(chest: DecodedImage, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("out of labels")

    monkeypatch.setattr(runner, "find_regions", broken)
    with pytest.raises(StageError, match="stage 'regions' failed: RuntimeError: out of labels") as raised:
        analyse_image(chest, SETTINGS)
    assert raised.value.stage == "regions"
