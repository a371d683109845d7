"""Synthetic lesions with known masks, added to real radiographs in display values.

Two kinds, both brighter than their surroundings as dense tissue is on a display-oriented film:

* ``"nodule"``: the projection of a sphere, ``contrast * sqrt(1 - (r / R)^2)``, round and well
  defined, like a solitary pulmonary nodule;
* ``"opacity"``: an irregular blob (an ellipse whose radius wobbles with a few random harmonics)
  with a flat top and soft edges, like a patchy consolidation or ground-glass opacity.

The ground-truth mask of a lesion is its full extent (r <= R). Diameters are in mm from the pixel
spacing; positions are drawn inside a placement mask (lungs or field of view) so that the whole
lesion lies in it, without overlapping another. Each profile is blurred by the imaging chain's
unsharpness (:data:`SYSTEM_BLUR_MM`), so that its edge is as sharp as a tissue edge on a film, not a
mathematical step (which only metal comes close to).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: The lesion kinds.
KINDS = ("nodule", "opacity")

#: Gaussian sigma (mm) of the blur of the imaging chain (focal spot, detector) applied to each lesion.
SYSTEM_BLUR_MM = 0.4

#: Attempts at placing one lesion before giving up on it.
MAX_PLACEMENT_TRIES = 200


@dataclass(frozen=True, kw_only=True)
class Lesion:
    """One inserted lesion."""

    #: 1-based, also its value in the lesion label image.
    label: int
    kind: str
    diameter_mm: float
    contrast: float
    #: Centre (row, col) in source pixels.
    center: tuple[float, float]


def lesion_profile(
    kind: str, radius_px: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The intensity profile (peak 1) and the mask of one lesion on a square patch of side ~2R+3."""
    half = int(np.ceil(radius_px)) + 1
    rows, cols = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    if kind == "nodule":
        rho = np.hypot(rows, cols) / max(radius_px, 0.5)
        profile = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
    elif kind == "opacity":
        angle = np.arctan2(rows, cols)
        squash = rng.uniform(0.65, 1.0)
        tilt = rng.uniform(0.0, np.pi)
        # An ellipse of the given major radius, then a radius that wobbles with harmonics 2..4.
        ellipse = 1.0 / np.sqrt(np.cos(angle - tilt) ** 2 + (np.sin(angle - tilt) / squash) ** 2)
        wobble = 1.0 + sum(
            rng.uniform(-0.12, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 5)
        )
        rho = np.hypot(rows, cols) / np.maximum(radius_px * ellipse * wobble, 0.5)
        profile = np.clip(1.6 * (1.0 - rho), 0.0, 1.0)
    else:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {KINDS}")
    return profile.astype(np.float32), rho <= 1.0


def insert_lesions(
    pixels: np.ndarray,
    placement: np.ndarray,
    spacing_mm: float,
    *,
    kind: str,
    contrast: float,
    count: int,
    diameter_range_mm: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, tuple[Lesion, ...]]:
    """Add ``count`` lesions to a copy of ``pixels``.

    Parameters
    ----------
    pixels
        Display values in [0, 1].
    placement
        Boolean, same shape: where lesions may lie (wholly).
    spacing_mm
        Pixel spacing (mm per pixel).
    kind, contrast
        Lesion kind and peak added value (display units).
    count
        How many lesions (fewer when the placement mask has no room).
    diameter_range_mm
        Diameters are drawn uniformly from this range.
    rng
        The random generator (seeded by the caller, for a repeatable evaluation).

    Returns
    -------
    tuple
        The new pixels (clipped to [0, 1]), the lesion label image (uint16, 0 = none) and the lesions.
    """
    out = pixels.astype(np.float32, copy=True)
    labels = np.zeros(pixels.shape, dtype=np.uint16)
    lesions: list[Lesion] = []
    # Placement runs on a coarse grid (about 512 on the long side): a distance transform per lesion
    # at full size would cost more than the pipeline run it prepares.
    step = max(1, max(pixels.shape) // 512)
    free = placement[::step, ::step].copy()
    for label in range(1, count + 1):
        diameter = float(rng.uniform(*diameter_range_mm))
        radius = diameter / 2.0 / spacing_mm
        # The centre must be at least a radius (plus a margin) inside the allowed area.
        room = ndimage.distance_transform_edt(free) * step > radius * 1.3 + 2 * step
        candidates = np.flatnonzero(room)
        if candidates.size == 0:
            logger.debug("no room for a %.0f mm lesion", diameter, extra={"action": "evaluate.no_room"})
            continue
        coarse = np.unravel_index(int(rng.choice(candidates)), free.shape)
        center = (int(coarse[0]) * step, int(coarse[1]) * step)
        profile, mask = lesion_profile(kind, radius, rng)
        profile = ndimage.gaussian_filter(profile, SYSTEM_BLUR_MM / spacing_mm)
        half = profile.shape[0] // 2
        window = (slice(center[0] - half, center[0] + half + 1), slice(center[1] - half, center[1] + half + 1))
        out[window] += np.float32(contrast) * profile
        labels[window][mask] = label
        # Keep the next lesions a lesion's width away from this one.
        rr, cc = np.ogrid[: free.shape[0], : free.shape[1]]
        free &= (rr - coarse[0]) ** 2 + (cc - coarse[1]) ** 2 > (2.5 * radius / step) ** 2
        lesions.append(
            Lesion(label=label, kind=kind, diameter_mm=diameter, contrast=contrast, center=(float(center[0]), float(center[1])))
        )
    return np.clip(out, 0.0, 1.0), labels, tuple(lesions)
