"""Enhance stage: denoising that keeps edges, every method, and its edge cases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from miemss_node.pipeline.base import DecodedImage
from miemss_node.pipeline.decode import decode_dataset, read_dicom_file
from miemss_node.pipeline.enhance import METHODS, calibrated_scale, enhance, noise_level_function
from tests.support.paths import wg04_chest_cr

STEP_COLUMN = 131
STEP_HEIGHT = 0.3
NOISE_SIGMA = 0.05


@pytest.fixture(scope="module")
def chest() -> DecodedImage:
    (image,) = decode_dataset(read_dicom_file(wg04_chest_cr()))
    return image


@pytest.fixture(scope="module")
def edge_scene(chest: DecodedImage) -> tuple[np.ndarray, np.ndarray]:
    """A 256x256 crop of the chest CR with a sharp step added, clean and with Gaussian noise."""
    clean = chest.pixels[600:856, 400:656] * 0.6
    clean[:, STEP_COLUMN:] += STEP_HEIGHT
    noise = np.random.default_rng(0).normal(0.0, NOISE_SIGMA, clean.shape)
    return clean, np.clip(clean + noise, 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_shape_dtype_and_range(chest: DecodedImage, method: str) -> None:
    crop = replace(chest, pixels=chest.pixels[:200, :300].copy())
    enhanced = enhance(crop, method)
    assert enhanced.method == method
    assert enhanced.pixels.shape == (200, 300)
    assert enhanced.pixels.dtype == np.float32
    assert 0.0 <= float(enhanced.pixels.min()) and float(enhanced.pixels.max()) <= 1.0


@pytest.mark.parametrize("method", ["wavelet", "vst_wavelet", "bilateral", "tv", "nlmeans"])
def test_denoising_removes_most_noise_and_keeps_a_step_edge(
    chest: DecodedImage, edge_scene: tuple[np.ndarray, np.ndarray], method: str
) -> None:
    clean, noisy = edge_scene
    out = enhance(replace(chest, pixels=noisy), method).pixels

    noisy_error = float(np.mean((noisy - clean) ** 2))
    assert float(np.mean((out - clean) ** 2)) < noisy_error / 4
    # A Gaussian blur with the same noise reduction keeps only ~70% of the step over 4 pixels.
    step = float(out[:, STEP_COLUMN + 1 : STEP_COLUMN + 3].mean() - out[:, STEP_COLUMN - 3 : STEP_COLUMN - 1].mean())
    assert step > 0.9 * STEP_HEIGHT


def test_self_supervised_calibration_removes_most_noise(
    chest: DecodedImage, edge_scene: tuple[np.ndarray, np.ndarray]
) -> None:
    clean, noisy = edge_scene
    out = enhance(replace(chest, pixels=noisy), "jinv_wavelet").pixels
    # It picks its own threshold with no clean image; it may smooth the step more than vst_wavelet.
    assert float(np.mean((out - clean) ** 2)) < float(np.mean((noisy - clean) ** 2)) / 4
    assert 0.7 <= calibrated_scale(noisy, NOISE_SIGMA) <= 1.45


def test_the_noise_level_function_is_recovered_from_the_image() -> None:
    rng = np.random.default_rng(1)
    ramp = np.tile(np.linspace(0.05, 0.95, 512, dtype=np.float32), (512, 1))
    gain, sigma = 500.0, 0.01
    noisy = (rng.poisson(ramp * gain) / gain + rng.normal(0.0, sigma, ramp.shape)).astype(np.float32)
    alpha, beta = noise_level_function(noisy)
    assert alpha == pytest.approx(1 / gain, rel=0.15)
    assert beta == pytest.approx(sigma**2, abs=5e-5)


def test_vst_wavelet_beats_the_haar_default_on_poisson_gaussian_noise(chest: DecodedImage) -> None:
    clean = chest.pixels[400:912, 300:812]
    rng = np.random.default_rng(2)
    noisy = np.clip(rng.poisson(clean * 500.0) / 500.0 + rng.normal(0.0, 0.01, clean.shape), 0, 1).astype(np.float32)
    errors = {
        method: float(np.mean((enhance(replace(chest, pixels=noisy), method).pixels - clean) ** 2))
        for method in ("wavelet", "vst_wavelet")
    }
    assert errors["vst_wavelet"] < 0.8 * errors["wavelet"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_noisy_16_pixel_frame_is_handled_without_warnings(method: str) -> None:
    # Smaller than the sym8 filter: vst_wavelet has no decomposition level and passes it through.
    noisy = np.random.default_rng(0).uniform(0.2, 0.8, (16, 16)).astype(np.float32)
    out = enhance(DecodedImage(pixels=noisy, pixel_spacing_mm=None), method).pixels
    assert out.shape == (16, 16)


def test_none_returns_a_copy(chest: DecodedImage) -> None:
    enhanced = enhance(chest, "none")
    np.testing.assert_array_equal(enhanced.pixels, chest.pixels)
    assert enhanced.pixels is not chest.pixels


def test_the_input_is_not_modified(chest: DecodedImage) -> None:
    before = chest.pixels.copy()
    enhance(chest, "wavelet")
    np.testing.assert_array_equal(chest.pixels, before)


def test_the_default_is_vst_wavelet(chest: DecodedImage) -> None:
    crop = replace(chest, pixels=chest.pixels[:64, :64].copy())
    assert enhance(crop).method == "vst_wavelet"


def test_unknown_method_names_the_valid_ones(chest: DecodedImage) -> None:
    with pytest.raises(ValueError, match="unknown denoise method 'median'; valid methods: wavelet, bilateral"):
        enhance(chest, "median")


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("shape", [(64, 64), (16, 16), (7, 9), (1, 1)])
def test_flat_and_tiny_frames_pass_through_without_warnings(method: str, shape: tuple[int, int]) -> None:
    flat = DecodedImage(pixels=np.full(shape, 0.5, dtype=np.float32), pixel_spacing_mm=None)
    np.testing.assert_allclose(enhance(flat, method).pixels, flat.pixels, atol=1e-6)
