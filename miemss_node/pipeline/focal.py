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

from miemss_node.pipeline.convergence import GradientConvergence

#: Nodule and mass radii (mm) looked for: about 10 to 40 mm across (smaller ones are lost among vessels
#: seen end-on at the working resolution).
RADII_MM = (5.0, 7.0, 10.0, 14.0, 20.0)
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
#: The mirrored place is searched this far (mm) around, for the patient's rotation and asymmetry.
MIRROR_SEARCH_MM = 12.0
#: The hilum is taken at this fraction of the hemithorax's height from its apex, on its medial edge.
HILUM_HEIGHT = 0.45
#: At most this many candidates are returned per frame (the strongest).
MAX_CANDIDATES = 40
#: Two candidates are at least this far apart (mm).
MIN_SEPARATION_MM = 4.0
#: At most this many moves towards a blob's middle (:func:`blob_extent`).
EXTENT_STEPS = 4


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
    #: Its measurements (:data:`FEATURE_NAMES`, in order); a focal model reads some of them.
    features: tuple[float, ...] = ()
    #: Where its outline is drawn, in working pixels: the blob's middle (row, column) and radius, found
    #: by :func:`blob_extent` (the candidate's own place and scale stand out locally, which on a large
    #: faint mass is often a smaller blob of texture near its edge). None: its place and radius.
    outline: tuple[float, float, float] | None = None


#: The measurements of a candidate, from which a focal model (``focal_model.FocalModel``) reads
#: those it was built on: its locally and globally normalised response at each radius of
#: :data:`RADII_MM`, its shape, its place, and how its gradients converge
#: (:mod:`~miemss_node.pipeline.convergence`).
FEATURE_NAMES = (
    *(f"local_{r:g}mm" for r in RADII_MM),
    *(f"global_{r:g}mm" for r in RADII_MM),
    "radius_mm",
    "contrast",
    "rim_sharpness",
    "isotropy",
    "wall_distance_mm",
    "surround_texture",
    "mirror_local",
    "mirror_ratio",
    "medial_fraction",
    "hilar_distance",
    "convergence",
)


def focal_candidates(
    work: np.ndarray, lungs: np.ndarray, excluded: np.ndarray, mm_per_px: float, midline_col: float | None = None
) -> list[FocalCandidate]:
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
    midline_col
        The midline's column: the other side's response at the mirrored place (a rib crossing has its
        twin there, a nodule does not) becomes a feature. None: the image's centre.

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
    local_maps, global_maps = [], []
    responses = scale_responses(image, mm_per_px)
    for radius_mm, response in zip(RADII_MM, responses, strict=True):
        sigma = radius_mm / np.sqrt(2.0) / mm_per_px
        normalised, globally = _normalised(response, allowed, sigma)
        local_maps.append(normalised)
        global_maps.append(globally)
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
    shape = _Shape(image, lungs, excluded, mm_per_px)
    convergence = GradientConvergence(image, mm_per_px)
    midline = image.shape[1] / 2.0 if midline_col is None else midline_col
    candidates = []
    for r, c in peaks:
        if not allowed[r, c]:
            continue
        measured = shape.measure(float(r), float(c), float(radius[r, c]))
        if measured is None or not shape.looks_like_tissue(measured, float(radius[r, c])):
            continue
        mirror = _mirrored_response(best, allowed, r, c, midline, max(1, round(MIRROR_SEARCH_MM / mm_per_px)))
        candidates.append(
            FocalCandidate(
                row=float(r),
                col=float(c),
                radius_px=float(radius[r, c]),
                strength=float(best[r, c]),
                global_strength=float(best_global[r, c]),
                features=(
                    *(float(m[r, c]) for m in local_maps),
                    *(float(m[r, c]) for m in global_maps),
                    float(radius[r, c]) * mm_per_px,
                    *measured,
                    mirror,
                    float(best[r, c]) - mirror,
                    *place_in_lung(lungs, r, c, midline),
                    convergence.at(float(r), float(c)),
                ),
                outline=blob_extent(responses, allowed, int(r), int(c), mm_per_px),
            )
        )
    return sorted(candidates, key=lambda candidate: -candidate.strength)


class _Shape:
    """Measures a candidate's shape: contrast, rim sharpness, isotropy, place and surroundings."""

    def __init__(self, image: np.ndarray, lungs: np.ndarray, excluded: np.ndarray, mm_per_px: float) -> None:
        inside = lungs | ~excluded
        self.image = image
        self.mm_per_px = mm_per_px
        low, high = np.percentile(image[inside], [2, 98]) if inside.any() else (0.0, 1.0)
        self.scale = max(float(high - low), 1e-3)
        self.gradient = ndimage.gaussian_gradient_magnitude(image, sigma=1.0)
        self.reference = max(float(np.percentile(self.gradient[inside], 99)) if inside.any() else 1.0, 1e-6)
        # The found base is where the rows turn as bright as the abdomen, often above the domes and the
        # costophrenic angles, not an edge of the lung: only the walls and the apex count.
        self.wall_distance = ndimage.distance_transform_edt(np.maximum.accumulate(lungs, axis=0)) * mm_per_px

    def measure(self, r: float, c: float, radius: float) -> tuple[float, float, float, float, float] | None:
        """(contrast, rim sharpness, isotropy, distance to the lungs' walls or apex in mm, surround texture)."""
        rows, cols = self.image.shape
        radius = max(radius, 1.0)
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
            return None
        sharpness = float(np.percentile(self.gradient[r0:r1, c0:c1][rim], 95)) / self.reference
        contrast = (float(np.median(window[inner])) - float(np.median(window[ring]))) / self.scale
        texture = float(np.std(window[ring])) / self.scale
        sigma = radius / np.sqrt(2.0)
        centre = (min(int(r) - r0, window.shape[0] - 1), min(int(c) - c0, window.shape[1] - 1))
        high, low = hessian_eigenvalues_at(window.astype(np.float64), sigma, centre)
        isotropy = float(high / low) if low < 0 and high < 0 else 0.0
        wall = float(self.wall_distance[min(int(r), rows - 1), min(int(c), cols - 1)])
        return contrast, sharpness, isotropy, wall, texture

    def looks_like_tissue(self, measured: tuple[float, float, float, float, float], radius: float) -> bool:
        """Whether a candidate's rim and contrast are those of tissue, not of metal or an electrode."""
        contrast, sharpness = measured[0], measured[1]
        small = radius * self.mm_per_px <= ELECTRODE_MAX_RADIUS_MM
        return sharpness <= METAL_RIM_SHARPNESS and not (small and contrast >= ELECTRODE_MIN_CONTRAST)


def scale_responses(image: np.ndarray, mm_per_px: float) -> list[np.ndarray]:
    """The scale-normalised Laplacian-of-Gaussian response (bright blobs positive) at each radius of
    :data:`RADII_MM`."""
    responses = []
    for radius_mm in RADII_MM:
        sigma = radius_mm / np.sqrt(2.0) / mm_per_px
        responses.append(-ndimage.gaussian_laplace(image, sigma) * np.float32(sigma * sigma))
    return responses


def blob_extent(
    responses: list[np.ndarray], allowed: np.ndarray, r: int, c: int, mm_per_px: float
) -> tuple[float, float, float]:
    """The middle and radius (working pixels) of the blob at (r, c): the scale whose scale-normalised
    response is strongest there (Lindeberg's scale selection, one scale per :data:`RADII_MM`), then the
    strongest place of that scale within half its radius, inside ``allowed``, until neither changes."""
    for _ in range(EXTENT_STEPS):
        k = int(np.argmax([float(response[r, c]) for response in responses]))
        reach = max(1, round(RADII_MM[k] / mm_per_px / 2))
        r0, c0 = max(0, r - reach), max(0, c - reach)
        window = np.where(
            allowed[r0 : r + reach + 1, c0 : c + reach + 1], responses[k][r0 : r + reach + 1, c0 : c + reach + 1], -np.inf
        )
        dr, dc = np.unravel_index(int(np.argmax(window)), window.shape)
        if (r0 + int(dr), c0 + int(dc)) == (r, c):
            break
        r, c = r0 + int(dr), c0 + int(dc)
    return float(r), float(c), RADII_MM[k] / mm_per_px


def place_in_lung(lungs: np.ndarray, r: int, c: int, midline: float) -> tuple[float, float]:
    """Where a candidate at (r, c) lies in its hemithorax (``lungs``: both, one each side of ``midline``).

    Returns its distance from the medial edge as a fraction of the hemithorax's width on its row, and its
    distance from the hilum (the medial edge at :data:`HILUM_HEIGHT` of the hemithorax's height) as a
    fraction of that height; (0.5, 1.0) on a row without lung. End-on hilar vessels are the commonest
    round blobs of a normal film, and a focal model learns how much a place near them says.
    """
    left = c < midline
    half = lungs[:, : int(midline)] if left else lungs[:, int(midline) :]
    offset = 0 if left else int(midline)
    row_cols = np.flatnonzero(half[r]) + offset
    rows = np.flatnonzero(half.any(axis=1))
    if not row_cols.size or not rows.size:
        return 0.5, 1.0
    medial, lateral = (row_cols.max(), row_cols.min()) if left else (row_cols.min(), row_cols.max())
    fraction = float(np.clip(abs(c - medial) / max(abs(lateral - medial), 1), 0.0, 1.0))
    top, bottom = int(rows[0]), int(rows[-1])
    hilum_row = top + HILUM_HEIGHT * (bottom - top)
    hilum_cols = np.flatnonzero(half[int(hilum_row)]) + offset
    hilum_col = (hilum_cols.max() if left else hilum_cols.min()) if hilum_cols.size else medial
    distance = float(np.hypot(r - hilum_row, c - hilum_col) / max(bottom - top, 1))
    return fraction, distance


def hessian_eigenvalues_at(image: np.ndarray, sigma: float, point: tuple[int, int]) -> tuple[float, float]:
    """The Hessian's eigenvalues (larger first) at one pixel of a Gaussian-smoothed image.

    The same finite differences as scikit-image's ``hessian_matrix(..., use_gaussian_derivatives=False)``
    (a model learned on them reads the same values), with SciPy alone: importing
    ``skimage.feature.corner`` imports ``scipy.stats``, 0.4 s of a cold start.
    """
    smoothed = ndimage.gaussian_filter(image, sigma, mode="constant", cval=0.0)
    d_row, d_col = np.gradient(smoothed)
    h_rr = float(np.gradient(d_row, axis=0)[point])
    h_rc = float(np.gradient(d_row, axis=1)[point])
    h_cc = float(np.gradient(d_col, axis=1)[point])
    half_gap = float(np.sqrt(h_rc**2 + ((h_rr - h_cc) / 2.0) ** 2))
    return (h_rr + h_cc) / 2.0 + half_gap, (h_rr + h_cc) / 2.0 - half_gap


def _mirrored_response(
    best: np.ndarray, allowed: np.ndarray, r: int, c: int, midline: float, reach: int
) -> float:
    """The strongest response near the mirror image of (r, c) across the midline (0 outside the lungs)."""
    rows, cols = best.shape
    mc = int(round(2 * midline - c))
    r0, r1 = max(0, r - reach), min(rows, r + reach + 1)
    c0, c1 = max(0, mc - reach), min(cols, mc + reach + 1)
    if r0 >= r1 or c0 >= c1:
        return 0.0
    window = np.where(allowed[r0:r1, c0:c1], best[r0:r1, c0:c1], -np.inf)
    value = float(window.max()) if window.size else -np.inf
    return value if np.isfinite(value) else 0.0


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
