"""The enhance stage's wavelet code is scikit-image's arithmetic, without importing scipy.stats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.restoration import denoise_wavelet, estimate_sigma

from miemss_node.pipeline.wavelet import bayes_shrink, noise_sigma


@pytest.mark.parametrize("shape", [(257, 300), (64, 64), (33, 45)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bayes_shrink_and_noise_sigma_are_scikit_images_to_the_last_bit(
    shape: tuple[int, int], dtype: type
) -> None:
    rng = np.random.default_rng(7)
    ramp = np.linspace(0.0, 1.0, shape[1])[None, :] * np.ones(shape)
    image = (ramp + rng.normal(0.0, 0.05, shape)).astype(dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Level value of", category=UserWarning)
        ours_sym8 = bayes_shrink(image, 0.05, "sym8", 2)
        theirs_sym8 = denoise_wavelet(image, sigma=0.05, wavelet="sym8", method="BayesShrink", mode="soft", wavelet_levels=2)
    ours_haar = bayes_shrink(image, 0.05, "db1")
    theirs_haar = denoise_wavelet(image, sigma=0.05, wavelet="db1", method="BayesShrink", mode="soft", rescale_sigma=True)
    assert ours_sym8.dtype == theirs_sym8.dtype == dtype
    assert np.array_equal(ours_sym8, theirs_sym8)
    assert np.array_equal(ours_haar, theirs_haar)
    assert noise_sigma(image) == float(estimate_sigma(image))
    assert 0.04 < noise_sigma(image) < 0.06

