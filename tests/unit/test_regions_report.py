"""Regions (heatmap, mask, measurements) and the report text made from them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from miemss_node.pipeline.base import (
    Anatomy,
    AnomalyScores,
    DecodedImage,
    EnhancedImage,
    ImageAnalysis,
    ModelRun,
    PatchFeatures,
    PipelineSettings,
    Region,
    RegionMap,
)
from miemss_node.pipeline.regions import MAX_REGIONS, find_regions, heatmap, location_words, measure_drafts
from miemss_node.pipeline.report import DISCLAIMER, NO_REGION, build_report, findings_sentences

SETTINGS = PipelineSettings(min_region_area_mm2=25.0)
GRID = (16, 16)
SOURCE = (1024, 1024)  # working 512 x 512, patches of 32 x 32 working = 64 x 64 source pixels
PATCH = (64.0, 64.0)


def _image(spacing: tuple[float, float] | None = (0.2, 0.2)) -> DecodedImage:
    return DecodedImage(pixels=np.zeros(SOURCE, dtype=np.float32), pixel_spacing_mm=spacing, sop_instance_uid="1.2.3")


def _features(valid: np.ndarray | None = None) -> PatchFeatures:
    vectors = np.zeros((GRID[0] * GRID[1], 5), dtype=np.float32)
    return PatchFeatures(vectors=vectors, grid_shape=GRID, patch_size_px=PATCH, extractors=("hog",), valid=valid)


def _scores(*hot: tuple[int, int, float]) -> AnomalyScores:
    grid = np.full(GRID, 0.1, dtype=np.float32)
    for row, col, value in hot:
        grid[row, col] = value
    return AnomalyScores(scores=grid, method="isolation_forest")


# --- heatmap ------------------------------------------------------------------------------------


def test_heatmap_peaks_at_the_hot_patch_centre_and_is_smooth() -> None:
    grid = np.zeros(GRID, dtype=np.float32)
    grid[4, 10] = 1.0
    heat = heatmap(grid, PATCH, SOURCE, SOURCE)
    assert heat.shape == SOURCE
    assert heat.dtype == np.float32
    peak = np.unravel_index(np.argmax(heat), SOURCE)
    assert abs(peak[0] - (4.5 * 64)) <= 1 and abs(peak[1] - (10.5 * 64)) <= 1
    assert float(np.abs(np.diff(heat, axis=1)).max()) <= 1.0 / 64 + 1e-6  # linear between centres


def test_heatmap_beyond_the_outer_centres_takes_the_edge_value() -> None:
    grid = np.full((2, 2), 0.5, dtype=np.float32)
    grid[1, 1] = 1.0
    heat = heatmap(grid, (10.0, 10.0), (25, 25), (25, 25))
    assert heat[24, 24] == pytest.approx(1.0)
    assert heat[0, 0] == pytest.approx(0.5)


# --- regions ------------------------------------------------------------------------------------


def test_one_hot_block_gives_one_measured_region() -> None:
    scores = _scores((4, 10, 1.0), (4, 11, 1.0), (5, 10, 1.0), (5, 11, 1.0))
    region_map = find_regions(scores, _features(), _image(), SETTINGS)

    (region,) = region_map.regions
    assert region_map.labels.dtype == np.uint16
    assert region_map.labels.shape == SOURCE
    assert region_map.heatmap.shape == SOURCE
    assert region.label == 1
    assert region.area_px == int((region_map.labels == 1).sum())
    assert region.area_mm2 == pytest.approx(region.area_px * 0.04)
    assert region.centroid == pytest.approx((5 * 64, 11 * 64), abs=8)
    min_row, min_col, max_row, max_col = region.bbox
    assert min_row < 5 * 64 < max_row and min_col < 11 * 64 < max_col
    assert region.max_score == pytest.approx(1.0, abs=0.01)
    assert SETTINGS.threshold <= region.mean_score <= region.max_score
    assert region.location == "upper right of the image"


def test_regions_are_ordered_by_max_score_and_limited() -> None:
    hot = [(row, col, 0.7 + 0.02 * (row + col) / 3) for row in (2, 6, 10, 14) for col in (2, 6, 10, 14)]
    region_map = find_regions(_scores(*hot), _features(), _image(), SETTINGS)

    assert len(region_map.regions) == MAX_REGIONS
    assert [r.label for r in region_map.regions] == list(range(1, MAX_REGIONS + 1))
    maxima = [r.max_score for r in region_map.regions]
    assert maxima == sorted(maxima, reverse=True)
    assert set(np.unique(region_map.labels)) == set(range(MAX_REGIONS + 1))
    assert region_map.labels[14 * 64 + 32, 14 * 64 + 32] == 1  # the strongest, bottom right


def test_small_regions_are_dropped_in_mm2() -> None:
    scores = _scores((8, 8, 1.0))
    assert find_regions(scores, _features(), _image(), SETTINGS).regions
    assert not find_regions(scores, _features(), _image(), replace(SETTINGS, min_region_area_mm2=1000.0)).regions


def test_without_spacing_areas_are_pixels_and_the_minimum_is_in_pixels() -> None:
    scores = _scores((8, 8, 1.0))
    settings = replace(SETTINGS, min_region_area_mm2=100.0)
    (region,) = find_regions(scores, _features(), _image(spacing=None), settings).regions
    assert region.area_mm2 is None
    assert region.area_px > 100
    too_big = replace(SETTINGS, min_region_area_mm2=float(region.area_px + 1000))
    assert not find_regions(scores, _features(), _image(spacing=None), too_big).regions


def test_patches_outside_the_field_are_never_flagged() -> None:
    valid = np.ones(GRID, dtype=bool)
    valid[:, 8:] = False
    scores = _scores((4, 3, 1.0), (4, 12, 1.0), (10, 8, 1.0))
    region_map = find_regions(scores, _features(valid), _image(), SETTINGS)
    assert len(region_map.regions) == 1
    assert not region_map.labels[:, 8 * 64 :].any()


def test_nothing_above_the_threshold_gives_no_region() -> None:
    region_map = find_regions(_scores(), _features(), _image(), SETTINGS)
    assert region_map.regions == ()
    assert not region_map.labels.any()


@pytest.mark.parametrize(
    ("centroid", "words"),
    [((10, 10), "upper left"), ((10, 500), "upper central"), ((500, 500), "central"), ((500, 990), "middle right"),
     ((1000, 0), "lower left"), ((1023, 1023), "lower right")],
)
def test_location_words(centroid: tuple[float, float], words: str) -> None:
    assert location_words(centroid, SOURCE) == words


# --- report -------------------------------------------------------------------------------------


def _region(label: int, area_mm2: float | None = 412.4) -> Region:
    return Region(
        label=label, area_px=10310, area_mm2=area_mm2, centroid=(100.0, 100.0), bbox=(50, 50, 150, 150),
        mean_score=0.871, max_score=0.954, location="upper left",
    )


def _region_map(*regions: Region) -> RegionMap:
    return RegionMap(heatmap=np.zeros(SOURCE, np.float32), labels=np.zeros(SOURCE, np.uint16), regions=regions)


def _analysis(regions: tuple[Region, ...], frame: int | None = None, score: float = 0.91) -> ImageAnalysis:
    image = replace(_image(), frame_number=frame)
    analysis = ImageAnalysis(
        decoded=image,
        enhanced=EnhancedImage(pixels=image.pixels, method="wavelet"),
        features=_features(),
        scores=_scores(),
        region_map=_region_map(*regions),
        findings=(),
        abnormality_score=score,
    )
    return replace(analysis, findings=findings_sentences(analysis))


GENERIC = "Generic analysis (not a frontal chest film): parts of the image that are unusual within it are flagged."


def test_no_region_sentences() -> None:
    assert _analysis((), score=0.12).findings == (GENERIC, "Abnormality score 0.12.", NO_REGION)


def test_region_sentences_in_mm2() -> None:
    sentences = _analysis((_region(1), _region(2, 7.25))).findings
    assert sentences == (
        GENERIC,
        "Abnormality score 0.91.",
        "2 regions were flagged.",
        "Region 1: upper left, unusual within the image, 412 mm², score 0.87 (max 0.95).",
        "Region 2: upper left, unusual within the image, 7.2 mm², score 0.87 (max 0.95).",
    )


def test_region_sentence_in_pixels_without_spacing() -> None:
    analysis = replace(_analysis((_region(1, None),)), decoded=_image(spacing=None))
    sentences = findings_sentences(analysis)
    assert sentences[2:] == (
        "1 region was flagged.",
        "Region 1: upper left, unusual within the image, 10310 pixels (pixel spacing unknown), score 0.87 (max 0.95).",
    )


def test_chest_regions_say_what_they_are_and_the_devices_seen() -> None:
    zone = replace(_region(1), location="right lower zone", kind="zone", side="right", zone="lower")
    focal = replace(_region(2, 150.0), location="left upper zone", kind="focal", side="left", zone="upper")
    anatomy = Anatomy(
        shape=(4, 4), source_shape=SOURCE, view="PA", chest_frontal=True, body=np.ones((4, 4), bool),
        hemithoraces=np.zeros((4, 4), np.uint8), mediastinum=np.zeros((4, 4), bool), midline_col=2.0,
        not_anatomy=np.zeros((4, 4), bool), devices=("line, tube or wire",), patient_right_on_image_left=True,
    )
    analysis = replace(_analysis((zone, focal)), method="chest", anatomy=anatomy)
    sentences = findings_sentences(analysis)
    assert sentences[0].startswith("Frontal chest film: each lung zone was compared with normal films")
    assert sentences[3] == "Region 1: right lower zone, denser than on normal films, 412 mm², score 0.87 (max 0.95)."
    assert sentences[4] == "Region 2: left upper zone, a round density, 150 mm², score 0.87 (max 0.95)."
    assert sentences[5] == "Seen and left out of the analysis: line, tube or wire."


def test_report_numbers_images_and_states_it_is_unverified() -> None:
    analyses = [_analysis((_region(1),)), _analysis((), frame=2, score=0.2)]
    report = build_report(analyses)

    assert report.caption is None
    assert report.models == ()
    assert report.findings[:2] == (f"Image 1: {GENERIC}", "Image 1: Abnormality score 0.91.")
    assert report.findings[-1] == f"Image 2 (frame 2): {NO_REGION}"
    lines = report.text.splitlines()
    assert lines[0].startswith(f"Image 1: {GENERIC} Abnormality score 0.91. 1 region was flagged. Region 1:")
    assert lines[1] == f"Image 2 (frame 2): {GENERIC} Abnormality score 0.20. {NO_REGION}"
    assert lines[-1] == DISCLAIMER
    assert "not been verified" in report.text
    assert "No learned model was used" in report.text


def test_report_with_caption_and_models() -> None:
    models = (ModelRun(role="blip", name="blip-local", revision="abc123"),)
    report = build_report([_analysis(())], caption="a chest x-ray of an adult", models=models)
    assert report.text.splitlines()[0] == "Automatic caption: A chest x-ray of an adult."
    assert report.caption == "a chest x-ray of an adult"
    assert "Models used: blip blip-local (abc123)." in report.text
    assert report.models == models


def test_report_of_nothing() -> None:
    report = build_report([])
    assert report.text.startswith("No image was analysed.")
    assert report.findings == ()


def test_measured_drafts_have_the_centroid_mean_and_peak_of_their_pixels() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(3)
    labels = np.zeros((300, 200), dtype=np.int32)
    labels[20:90, 30:80][rng.random((70, 50)) > 0.4] = 1
    labels[150:280, 120:190] = 2
    heat = rng.random(labels.shape).astype(np.float32)
    drafts = [
        Region(label=k, area_px=0, area_mm2=None, centroid=(0.0, 0.0), bbox=(0, 0, 1, 1), mean_score=0.0, max_score=0.0, location="")
        for k in (1, 2, 3)
    ]
    measured = measure_drafts(labels, heat, drafts, (0.5, 0.5))
    assert len(measured.regions) == 2  # draft 3 has no pixel
    for region in measured.regions:
        inside = measured.labels == region.label
        assert region.centroid == pytest.approx(ndimage.center_of_mass(inside))
        assert region.mean_score == pytest.approx(float(heat[inside].mean()))
        assert region.max_score == float(heat[inside].max())
        assert region.area_mm2 == pytest.approx(inside.sum() * 0.25)
