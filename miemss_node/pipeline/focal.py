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

#: Nodule radii (mm) looked for: about 10 to 30 mm across (smaller ones are lost among vessels seen
#: end-on at the working resolution).
RADII_MM = (5.0, 7.0, 10.0, 14.0)
#: The local spread is measured over a window this many sigmas wide.
LOCAL_WINDOW_SIGMAS = 6.0
#: Candidates are at least this far (mm) inside the lungs' edges.
EDGE_MARGIN_MM = 4.0
#: A candidate whose rim is this many times sharper than the body's 99th-percentile gradient has the
#: crisp outline of metal (a device, a clip), not the soft edge of tissue: it is dropped.
METAL_RIM_SHARPNESS = 1.5
#: A candidate this small (radius, mm) and this contrasted (fraction of the body's display range) is
#: an electrode or a snap, not a nodule: it is dropped.
ELECTRODE_MAX_RADIUS_MM = 7.0
ELECTRODE_MIN_CONTRAST = 0.3
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
    #: The response over its local spread (unitless): a blob that stands out from its surroundings.
    strength: float
    #: The response over the lungs' typical spread: a blob that is strong for this film (a large or
    #: dense nodule raises its own local spread, so ``strength`` alone understates it).
    global_strength: float = 0.0


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
    best_global = np.full(image.shape, -np.inf, dtype=np.float32)
    radius = np.zeros(image.shape, dtype=np.float32)
    for radius_mm in RADII_MM:
        sigma = radius_mm / np.sqrt(2.0) / mm_per_px
        response = -ndimage.gaussian_laplace(image, sigma) * np.float32(sigma * sigma)
        normalised, globally = _normalised(response, allowed, sigma)
        better = normalised > best
        best[better] = normalised[better]
        radius[better] = radius_mm / mm_per_px
        np.maximum(best_global, globally, out=best_global)
    best = np.where(allowed, best, -np.inf)
    floor = float(best[allowed].min()) - 1.0
    peaks = peak_local_max(
        np.where(allowed, best, floor),
        min_distance=max(1, round(MIN_SEPARATION_MM / mm_per_px)),
        num_peaks=MAX_CANDIDATES,
        exclude_border=False,
    )
    candidates = [
        FocalCandidate(
            row=float(r),
            col=float(c),
            radius_px=float(radius[r, c]),
            strength=float(best[r, c]),
            global_strength=float(best_global[r, c]),
        )
        for r, c in peaks
        if allowed[r, c]
    ]
    tissue = _TissueCheck(image, lungs | ~excluded, mm_per_px)
    return sorted((c for c in candidates if tissue.looks_like_tissue(c)), key=lambda candidate: -candidate.strength)


class _TissueCheck:
    """Tells a tissue density from metal by its rim's sharpness and its contrast for its size."""

    def __init__(self, image: np.ndarray, inside: np.ndarray, mm_per_px: float) -> None:
        self.image = image
        self.mm_per_px = mm_per_px
        low, high = np.percentile(image[inside], [2, 98]) if inside.any() else (0.0, 1.0)
        self.scale = max(float(high - low), 1e-3)
        self.gradient = ndimage.gaussian_gradient_magnitude(image, sigma=1.0)
        self.reference = max(float(np.percentile(self.gradient[inside], 99)) if inside.any() else 1.0, 1e-6)

    def looks_like_tissue(self, candidate: FocalCandidate) -> bool:
        rows, cols = self.image.shape
        r, c, radius = candidate.row, candidate.col, max(candidate.radius_px, 1.0)
        reach = int(np.ceil(2.5 * radius)) + 1
        r0, r1 = max(0, int(r) - reach), min(rows, int(r) + reach + 1)
        c0, c1 = max(0, int(c) - reach), min(cols, int(c) + reach + 1)
        rr, cc = np.ogrid[r0:r1, c0:c1]
        distance = np.hypot(rr - r, cc - c)
        window = self.image[r0:r1, c0:c1]
        inner = distance <= max(1.5, 0.5 * radius)
        ring = (distance > 1.5 * radius) & (distance <= 2.5 * radius)
        rim = (distance > 0.5 * radius) & (distance <= 1.5 * radius)
        if not (inner.any() and ring.any() and rim.any()):
            return True
        sharpness = float(np.percentile(self.gradient[r0:r1, c0:c1][rim], 95)) / self.reference
        contrast = (float(np.median(window[inner])) - float(np.median(window[ring]))) / self.scale
        small = radius * self.mm_per_px <= ELECTRODE_MAX_RADIUS_MM
        return sharpness <= METAL_RIM_SHARPNESS and not (small and contrast >= ELECTRODE_MIN_CONTRAST)


def _normalised(response: np.ndarray, allowed: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The response minus the lungs' median, over its local spread and over the lungs' spread.

    The local spread is the standard deviation in a window :data:`LOCAL_WINDOW_SIGMAS` sigmas wide,
    floored at its median over the lungs; the lungs' spread is their robust standard deviation.
    """
    inside = response[allowed] if allowed.any() else response.ravel()
    centre = float(np.median(inside))
    robust = max(1.4826 * float(np.median(np.abs(inside - centre))), 1e-6)
    window = max(3, int(LOCAL_WINDOW_SIGMAS * sigma))
    mean = ndimage.uniform_filter(response, window)
    mean_sq = ndimage.uniform_filter(response * response, window)
    spread = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    floor = float(np.median(spread[allowed])) if allowed.any() else 1e-6
    return (response - centre) / np.maximum(spread, max(floor, 1e-6)), (response - centre) / robust
