"""Our Douglas-Peucker is scikit-image's, point for point, on real region outlines and on noise."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse
from skimage.measure import approximate_polygon as skimage_approximate_polygon
from skimage.measure import find_contours

from miemss_node.encode.polygon import approximate_polygon


def _outlines() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    mask = np.zeros((300, 400), dtype=np.float32)
    rr, cc = ellipse(150, 200, 90, 140, mask.shape, rotation=0.4)
    mask[rr, cc] = 1
    mask[100:130, 150:330] = 0  # a notch
    walk = np.cumsum(rng.normal(0, 1.0, (500, 2)), axis=0)
    return [max(find_contours(mask, 0.5), key=len), walk, walk[:3], np.array([[0.0, 0.0], [0.0, 0.0]])]


@pytest.mark.parametrize("tolerance", [0.0, 0.75, 1.5, 6.0, 48.0])
def test_approximate_polygon_matches_scikit_image(tolerance: float) -> None:
    for coords in _outlines():
        ours = approximate_polygon(coords, tolerance)
        theirs = skimage_approximate_polygon(coords, tolerance)
        assert np.array_equal(ours, theirs)
    assert len(approximate_polygon(_outlines()[0], 6.0)) < len(_outlines()[0]) / 10
