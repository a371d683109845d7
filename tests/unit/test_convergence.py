"""The sliding band filter: high on a round bright blob whatever its contrast, low on a line or an edge."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from miemss_node.pipeline.convergence import GradientConvergence

MM_PER_PX = 0.8
SIDE = 160


def _background(seed: int = 0) -> np.ndarray:
    """Lung-like texture: smooth at the scale of a few pixels, as the working image is."""
    rng = np.random.default_rng(seed)
    return (0.4 + ndimage.gaussian_filter(rng.normal(0.0, 0.06, (SIDE, SIDE)), 3.0)).astype(np.float32)


def _nodule(image: np.ndarray, diameter_mm: float, contrast: float) -> np.ndarray:
    rows, cols = np.mgrid[:SIDE, :SIDE]
    rho = np.hypot(rows - SIDE / 2, cols - SIDE / 2) / (diameter_mm / 2 / MM_PER_PX)
    return image + np.float32(contrast) * np.sqrt(np.clip(1 - rho**2, 0, 1)).astype(np.float32)


def test_a_round_nodule_converges_whatever_its_contrast_or_size() -> None:
    for diameter, contrast in ((12.0, 0.06), (12.0, 0.2), (28.0, 0.06)):
        value = GradientConvergence(_nodule(_background(), diameter, contrast), MM_PER_PX).at(SIDE / 2, SIDE / 2)
        assert value > 0.97, (diameter, contrast, value)


def test_a_vessel_an_edge_and_plain_texture_converge_less() -> None:
    """Within a band the ray's gradients are all that counts, so texture scores high too (about 0.9):
    what tells a nodule apart is the last few hundredths, which the focal model learns to read."""
    centre = SIDE // 2
    line = _background()
    line[:, centre - 2 : centre + 3] += 0.1  # a vessel through the point
    edge = _background()
    edge[:, centre:] += 0.1  # a rib's edge at the point
    nodule = GradientConvergence(_nodule(_background(), 12.0, 0.06), MM_PER_PX).at(centre, centre)
    for name, image in (("line", line), ("edge", edge), ("texture", _background(1))):
        value = GradientConvergence(ndimage.gaussian_filter(image, 1.0), MM_PER_PX).at(centre, centre)
        assert value < nodule - 0.04, (name, value, nodule)


def test_the_nodule_stands_above_the_film_around_it() -> None:
    filt = GradientConvergence(_nodule(_background(), 16.0, 0.06), MM_PER_PX)
    elsewhere = [filt.at(r, c) for r in (30, 60, 100, 130) for c in (30, 130)]
    assert filt.at(SIDE / 2, SIDE / 2) > max(elsewhere) + 0.04
