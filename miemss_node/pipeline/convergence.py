"""How much a film's gradients converge on a point: the sliding band filter.

A nodule is round: all around it, its edge's gradient points at its centre, whatever its contrast. A
vessel, a rib's edge or a rib crossing has gradients in one or two directions only. The sliding band
filter (Pereira et al., "Sliding band filter for chest radiograph nodule detection", 2007; of the iris
filter family of Kobatake and Hashimoto) measures this: along each of :data:`DIRECTIONS` rays from the
point, the cosine between the gradient and the direction back to the point, averaged over a band of
:data:`BAND_MM` that slides between :data:`MIN_RADIUS_MM` and :data:`MAX_RADIUS_MM` to where it is
highest; the mean over the rays is in [-1, 1], 1 for a perfectly round bright blob.

Measured by lesion insertion into the reference's films, one film left out at a time, it ranks
inserted nodules above normal structures better than the blob detector's own strengths do
(``benchmarks/focal_features.py``; README, "Round densities").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Rays cast from the point.
DIRECTIONS = 16
#: The band slides between these distances (mm) from the point: nodules and masses 8 to 44 mm across.
MIN_RADIUS_MM = 4.0
MAX_RADIUS_MM = 22.0
#: Width of the band (mm).
BAND_MM = 2.0
#: The gradient is taken at this scale (Gaussian sigma, mm): the film's noise, not its edges, is smoothed.
GRADIENT_SIGMA_MM = 1.0


class GradientConvergence:
    """The sliding band filter of one image, evaluated at chosen points."""

    def __init__(self, image: np.ndarray, mm_per_px: float) -> None:
        pixels = np.asarray(image, dtype=np.float32)
        sigma = GRADIENT_SIGMA_MM / mm_per_px
        d_row = ndimage.gaussian_filter(pixels, sigma, order=(1, 0))
        d_col = ndimage.gaussian_filter(pixels, sigma, order=(0, 1))
        magnitude = np.maximum(np.hypot(d_row, d_col), np.float32(1e-9))
        self._unit_row = d_row / magnitude
        self._unit_col = d_col / magnitude
        self._band = max(1, int(round(BAND_MM / mm_per_px)))
        self._radii = np.arange(max(1.0, MIN_RADIUS_MM / mm_per_px), (MAX_RADIUS_MM + BAND_MM) / mm_per_px + 1.0)
        angles = 2.0 * np.pi * np.arange(DIRECTIONS) / DIRECTIONS
        self._sin, self._cos = np.sin(angles)[:, None], np.cos(angles)[:, None]

    def at(self, row: float, col: float) -> float:
        """The filter's value at (row, col), in [-1, 1]."""
        rows = row + self._sin * self._radii
        cols = col + self._cos * self._radii
        coords = np.array([rows.ravel(), cols.ravel()])
        unit_row = ndimage.map_coordinates(self._unit_row, coords, order=1, mode="nearest").reshape(rows.shape)
        unit_col = ndimage.map_coordinates(self._unit_col, coords, order=1, mode="nearest").reshape(rows.shape)
        # Cosine between the gradient and the direction back to the point, at each distance of each ray.
        inward = -(unit_row * self._sin + unit_col * self._cos)
        cumulative = np.concatenate([np.zeros((DIRECTIONS, 1)), np.cumsum(inward, axis=1)], axis=1)
        bands = (cumulative[:, self._band :] - cumulative[:, : -self._band]) / self._band
        return float(bands.max(axis=1).mean())
