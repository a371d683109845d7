"""Features, field of view and anomaly scores."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from miemss_node.pipeline.anomaly import METHOD, score_patches
from miemss_node.pipeline.base import DecodedImage, EnhancedImage, PatchFeatures, PipelineSettings
from miemss_node.pipeline.decode import decode_dataset, read_dicom_file
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.features import (
    FEATURE_NAMES,
    effective_patch,
    patch_features,
    to_working,
    working_shape,
)
from miemss_node.pipeline.field_of_view import field_mask, patch_validity
from tests.support.paths import shared_file, wg04_chest_cr

SETTINGS = PipelineSettings(lung_field=False)
#: The first scaling: the top patch of every image scores 1.
MINMAX = replace(SETTINGS, score_scale="minmax")


@pytest.fixture(scope="module")
def chest() -> DecodedImage:
    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    return image


@pytest.fixture(scope="module")
def chest_features(chest: DecodedImage) -> PatchFeatures:
    return patch_features(enhance(chest, "wavelet"), SETTINGS)


def _enhanced(pixels: np.ndarray) -> EnhancedImage:
    return EnhancedImage(pixels=pixels.astype(np.float32), method="none")


# --- working image and features -----------------------------------------------------------------


def test_working_shape_keeps_aspect_and_never_upscales() -> None:
    assert working_shape((1955, 1841), 512) == (512, 482)
    assert working_shape((1841, 1955), 512) == (482, 512)
    assert working_shape((64, 64), 512) == (64, 64)


def test_effective_patch_shrinks_for_tiny_images() -> None:
    assert effective_patch((512, 482), 16) == 16
    assert effective_patch((16, 16), 32) == 16


def test_to_working_downscales_with_anti_aliasing() -> None:
    stripes = np.tile(np.array([0.0, 1.0], dtype=np.float32), (400, 200))  # 400 x 400, 1-pixel stripes
    working = to_working(stripes, 100)
    assert working.shape == (100, 100)
    assert float(working.std()) < 0.05  # aliasing would keep stripes


def test_chest_features_grid_and_patch_size_in_source_pixels(chest_features: PatchFeatures) -> None:
    assert chest_features.grid_shape == (32, 30)
    assert chest_features.vectors.shape == (32 * 30, len(FEATURE_NAMES))
    assert chest_features.vectors.dtype == np.float32
    assert np.isfinite(chest_features.vectors).all()
    assert chest_features.patch_size_px == pytest.approx((16 * 1955 / 512, 16 * 1841 / 482))
    assert chest_features.extractors == ("hog",)
    assert chest_features.valid is not None
    assert chest_features.valid.shape == (32, 30)


def test_the_chest_fills_its_field(chest_features: PatchFeatures) -> None:
    valid = chest_features.valid
    assert valid is not None
    assert float(valid.mean()) > 0.8
    # Inside the border, only what is not anatomy (markers, wires, electrodes) is left out.
    assert float(valid[1:-1, 1:-1].mean()) > 0.9
    assert not valid[0].any() and not valid[-1].any()  # on the image border


def test_patches_over_the_dental_black_padding_are_invalid() -> None:
    (image,) = decode_dataset(read_dicom_file(shared_file("dicom/xray/cr_dental_mono1_modalitylutseq_jpll.dcm")))
    features = patch_features(_enhanced(image.pixels), SETTINGS)
    valid = features.valid
    assert valid is not None
    assert not valid[:3].any()  # the top of the frame is constant black
    assert valid[12, 10:20].all()  # the teeth
    assert 0.2 < float(valid.mean()) < 0.6


def test_features_of_a_tiny_image_use_one_patch() -> None:
    small = DecodedImage(pixels=np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), pixel_spacing_mm=None)
    features = patch_features(_enhanced(small.pixels), replace(SETTINGS, patch_size=32))
    assert features.grid_shape == (1, 1)
    assert features.patch_size_px == (16.0, 16.0)


def test_a_bright_nodule_has_the_highest_local_contrast(chest: DecodedImage) -> None:
    rows, cols = np.mgrid[: chest.pixels.shape[0], : chest.pixels.shape[1]]
    nodule = 0.3 / (1 + np.exp((np.hypot(rows - 700, cols - 1300) - 90) / 13.5))
    pixels = np.clip(chest.pixels + nodule, 0, 1)
    features = patch_features(_enhanced(pixels), SETTINGS)
    contrast = features.vectors[:, FEATURE_NAMES.index("contrast_5")].reshape(features.grid_shape)
    row, col = np.unravel_index(np.argmax(np.where(features.valid, contrast, -np.inf)), features.grid_shape)
    assert abs(row * features.patch_size_px[0] - 700) < 2 * features.patch_size_px[0]
    assert abs(col * features.patch_size_px[1] - 1300) < 2 * features.patch_size_px[1]


# --- field of view ------------------------------------------------------------------------------


def test_constant_padding_and_burned_in_letters_are_outside_the_field(chest: DecodedImage) -> None:
    working = to_working(chest.pixels, 256)
    canvas = np.zeros((working.shape[0] + 80, working.shape[1] + 80), dtype=np.float32)
    canvas[40:-40, 40:-40] = working
    letters = Image.fromarray(np.zeros((40, 120), dtype=np.uint8))
    ImageDraw.Draw(letters).text((5, 10), "R  PA", fill=255)
    canvas[:40, :120] = np.asarray(letters, dtype=np.float32) / 255.0

    field = field_mask(canvas)

    assert not field[:38, :].any()  # the 3x3 smoothing may reach one pixel past the body
    assert not field[:, :38].any()
    assert field[100:200, 100:200].all()


def test_a_saturated_structure_inside_the_body_stays_in_the_field(chest: DecodedImage) -> None:
    working = to_working(chest.pixels, 256).copy()
    working[100:120, 100:120] = 1.0  # metal, clipped white
    assert field_mask(working)[100:120, 100:120].all()


def test_dental_black_padding_is_outside_the_field() -> None:
    (image,) = decode_dataset(read_dicom_file(shared_file("dicom/xray/cr_dental_mono1_modalitylutseq_jpll.dcm")))
    field = field_mask(to_working(image.pixels, 512))
    assert not field[:50, :].any()
    assert field[200, 250]


def test_a_flat_image_has_no_field() -> None:
    assert not field_mask(np.full((64, 64), 0.5, dtype=np.float32)).any()


def test_field_mask_rejects_a_non_2d_array() -> None:
    with pytest.raises(ValueError, match="expected a non-empty 2-D image"):
        field_mask(np.zeros((4, 4, 3), dtype=np.float32))


def test_patch_validity_needs_the_patch_well_inside_the_field() -> None:
    field = np.zeros((64, 64), dtype=bool)
    field[:, :40] = True
    valid = patch_validity(field, 16, (4, 4))
    assert valid[1:3, 1].all()
    assert not valid[:, 2:].any()  # columns 32-47 are within half a patch of the edge at 40
    assert not valid[0].any() and not valid[:, 0].any()  # the image border is an edge too


# --- anomaly scores -----------------------------------------------------------------------------


def _gaussian_features(n: int, seed: int = 0) -> PatchFeatures:
    vectors = np.random.default_rng(seed).normal(size=(n * n, 5)).astype(np.float32)
    return PatchFeatures(vectors=vectors, grid_shape=(n, n), patch_size_px=(16.0, 16.0), extractors=("hog",))


def test_scores_are_in_unit_range_with_the_grid_shape(chest_features: PatchFeatures) -> None:
    scores = score_patches(chest_features, MINMAX)
    assert scores.method == METHOD
    assert scores.scores.shape == chest_features.grid_shape
    assert scores.scores.dtype == np.float32
    valid = chest_features.valid
    assert valid is not None
    assert float(scores.scores[valid].min()) == 0.0
    assert float(scores.scores[valid].max()) == 1.0
    assert not scores.scores[~valid].any()


def test_an_outlier_patch_scores_highest() -> None:
    features = _gaussian_features(12)
    features.vectors[37] = 8.0
    scores = score_patches(features, SETTINGS)
    assert scores.scores.ravel()[37] == 1.0


def test_scores_are_deterministic_for_a_seed(chest_features: PatchFeatures) -> None:
    first = score_patches(chest_features, SETTINGS).scores
    second = score_patches(chest_features, SETTINGS).scores
    other_seed = score_patches(chest_features, replace(SETTINGS, random_seed=7)).scores
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_an_explicit_valid_mask_overrides_the_features_own() -> None:
    features = _gaussian_features(10)
    valid = np.zeros((10, 10), dtype=bool)
    valid[:5] = True
    scores = score_patches(features, MINMAX, valid=valid).scores
    assert not scores[5:].any()
    assert float(scores[:5].max()) == 1.0


def test_too_few_valid_patches_score_zero() -> None:
    features = _gaussian_features(2)
    assert not score_patches(features, SETTINGS).scores.any()


def test_identical_patches_score_zero() -> None:
    features = replace(_gaussian_features(10), vectors=np.ones((100, 5), dtype=np.float32))
    assert not score_patches(features, SETTINGS).scores.any()


def test_a_valid_mask_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"valid has 4 entries, the grid \(10, 10\) has 100"):
        score_patches(_gaussian_features(10), SETTINGS, valid=np.ones((2, 2), dtype=bool))
