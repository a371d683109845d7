"""Focal findings: round densities (nodule- or mass-like) inside the lungs, at several scales.

A bright round blob of radius r responds most to a Laplacian-of-Gaussian of sigma r / sqrt(2)
(Lindeberg's scale-normalised LoG). Lung texture varies a lot across a film (the hila, rib crossings
and vessels are "blobby" too), so each scale's response is divided by its local spread: the standard
deviation of the response in a window a few nodule-widths wide, floored at the film's typical spread
inside the lungs. A candidate is a local maximum of the strongest scale inside the lungs, away from
their edges (where the heart, diaphragm and chest wall give the strongest responses of all) and away
from anything that is not anatomy (an electrode or a clip is a very strong round blob).

The result is a list of candidates with a strength; how strong is unusual is decided against normal
films by :mod:`~miemss_node.pipeline.chest_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max

#: Nodule radii (mm) looked for: 5 to 30 mm across.
RADII_MM = (2.5, 3.5, 5.0, 7.0, 10.0, 14.0)
#: The local spread is measured over a window this many sigmas wide.
LOCAL_WINDOW_SIGMAS = 6.0
#: Candidates are at least this far (mm) inside the lungs' edges.
EDGE_MARGIN_MM = 4.0
#: At most this many candidates are returned per frame (the strongest).
MAX_CANDIDATES = 40
#: Two candidates are at least this far apart (mm).
MIN_SEPARATION_MM = 4.0


@dataclass(frozen=True, kw_only=True)
class FocalCandidate:
    """A round density candidate, in working pixels."""

    row: float
    col: float
    #: Radius of the best-matching blob, in working pixels.
    radius_px: float
    #: The locally normalised response (unitless; larger is more blob-like and more contrasted).
    strength: float


def focal_candidates(work: np.ndarray, lungs: np.ndarray, excluded: np.ndarray, mm_per_px: float) -> list[FocalCandidate]:
    """Find round-density candidates inside the lungs.

    Parameters
    ----------
    work
        Display-oriented working image (bright = dense).
    lungs
        Boolean mask of both hemithoraces, same shape.
    excluded
        Boolean mask of what is not anatomy, same shape.
    mm_per_px
        Working pixel size in mm.

    Returns
    -------
    list of FocalCandidate
        Strongest first, at most :data:`MAX_CANDIDATES`.
    """
    image = np.asarray(work, dtype=np.float32)
    margin = max(1, round(EDGE_MARGIN_MM / mm_per_px))
    allowed = ndimage.binary_erosion(lungs, iterations=margin) & ~excluded
    if not allowed.any():
        return []
    best = np.full(image.shape, -np.inf, dtype=np.float32)
    radius = np.zeros(image.shape, dtype=np.float32)
    for radius_mm in RADII_MM:
        sigma = radius_mm / np.sqrt(2.0) / mm_per_px
        response = -ndimage.gaussian_laplace(image, sigma) * np.float32(sigma * sigma)
        normalised = _locally_normalised(response, allowed, sigma)
        better = normalised > best
        best[better] = normalised[better]
        radius[better] = radius_mm / mm_per_px
    best = np.where(allowed, best, -np.inf)
    floor = float(best[allowed].min()) - 1.0
    peaks = peak_local_max(
        np.where(allowed, best, floor),
        min_distance=max(1, round(MIN_SEPARATION_MM / mm_per_px)),
        num_peaks=MAX_CANDIDATES,
        exclude_border=False,
    )
    candidates = [
        FocalCandidate(row=float(r), col=float(c), radius_px=float(radius[r, c]), strength=float(best[r, c]))
        for r, c in peaks
        if allowed[r, c]
    ]
    return sorted(candidates, key=lambda candidate: -candidate.strength)


def _locally_normalised(response: np.ndarray, allowed: np.ndarray, sigma: float) -> np.ndarray:
    """Response minus the lungs' median, over its local spread (floored at the lungs' median spread)."""
    window = max(3, int(LOCAL_WINDOW_SIGMAS * sigma))
    mean = ndimage.uniform_filter(response, window)
    mean_sq = ndimage.uniform_filter(response * response, window)
    spread = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    inside = spread[allowed]
    floor = float(np.median(inside)) if inside.size else 1e-6
    centre = float(np.median(response[allowed])) if allowed.any() else 0.0
    return (response - centre) / np.maximum(spread, max(floor, 1e-6))
