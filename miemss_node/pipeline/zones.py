"""Lung zones of a frontal chest film, their density, and how far each is from normal.

Each hemithorax is cut into thirds of its height: the upper, middle and lower zones, the radiologist's
usual frontal-film zones. On each zone the pipeline measures how dense the lung is, in units that do
not depend on the film's exposure or processing: 0 is the darkest aerated lung of the film (the 2nd
percentile inside both hemithoraces) and 1 is the mediastinum (the median of a narrow band around the
midline). Pixels that are not anatomy (wires, electrodes, markers) are left out of the measurements.

Two kinds of evidence say that a zone is abnormal, each as a z-score against a reference of normal
films (:mod:`~miemss_node.pipeline.chest_reference`):

* **density**: the zone's median and lower quartile against the same zone on normal films (diffuse
  or bilateral disease, where both sides are abnormal);
* **asymmetry**: the zone minus its mirror zone across the midline, against the same difference on
  normal films (unilateral disease: an opaque hemithorax, a lobar consolidation). Only the denser
  side of a pair gets this evidence.

A zone's evidence is the larger of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The zones of one hemithorax, top to bottom.
ZONE_NAMES = ("upper", "middle", "lower")
#: The hemithoraces, by the side of the image they are on (label 1 and 2 of ``Anatomy.hemithoraces``).
SIDES = ("image-left", "image-right")
#: Percentiles measured in every zone.
PERCENTILES = (25, 50)


@dataclass(frozen=True, kw_only=True)
class ZoneKey:
    """One lung zone."""

    side: str
    zone: str

    @property
    def name(self) -> str:
        """E.g. "image-left.lower"."""
        return f"{self.side}.{self.zone}"


#: All six zones, in a fixed order.
ZONES = tuple(ZoneKey(side=side, zone=zone) for side in SIDES for zone in ZONE_NAMES)


def zone_masks(hemithoraces: np.ndarray, bottoms: dict[str, int] | None = None) -> dict[ZoneKey, np.ndarray]:
    """Cut each hemithorax into upper, middle and lower thirds of its own height.

    Parameters
    ----------
    hemithoraces
        uint8 label image: 1 = image-left hemithorax, 2 = image-right.
    bottoms
        Per side, the row the thirds are measured to instead (``Anatomy.zone_bottoms``); what lies
        below it joins the lower zone.

    Returns
    -------
    dict
        Boolean mask per zone (all False for a side that is absent).
    """
    masks = {}
    rows = np.arange(hemithoraces.shape[0])[:, None]
    for number, side in enumerate(SIDES, start=1):
        hemithorax = hemithoraces == number
        present = np.flatnonzero(hemithorax.any(axis=1))
        top, bottom = (int(present[0]), int(present[-1]) + 1) if present.size else (0, 0)
        measured_to = min(bottom, bottoms[side] + 1) if bottoms and side in bottoms else bottom
        cuts = [top + k * (measured_to - top) / 3.0 for k in range(3)] + [bottom]
        for index, zone in enumerate(ZONE_NAMES):
            masks[ZoneKey(side=side, zone=zone)] = hemithorax & (rows >= cuts[index]) & (rows < cuts[index + 1])
    return masks


def normalised_density(
    smooth: np.ndarray, hemithoraces: np.ndarray, midline_col: float, usable: np.ndarray
) -> np.ndarray:
    """Rescale a working image so that 0 is the darkest lung and 1 the mediastinum.

    Parameters
    ----------
    smooth
        Lightly smoothed working image (bright = dense).
    hemithoraces
        The hemithorax labels.
    midline_col
        The midline column.
    usable
        Pixels that are anatomy (the not-anatomy objects are False).
    """
    rows, cols = smooth.shape
    lungs = (hemithoraces > 0) & usable
    if not lungs.any():
        lungs = hemithoraces > 0
    darkest = float(np.percentile(smooth[lungs], 2))
    centre = int(round(midline_col))
    half = max(1, int(0.03 * cols))
    band = smooth[int(0.2 * rows) : int(0.6 * rows), max(0, centre - half) : centre + half + 1]
    mediastinum = float(np.median(band)) if band.size else float(smooth.max())
    return (smooth - darkest) / max(mediastinum - darkest, 1e-3)


def zone_features(density: np.ndarray, zones: dict[ZoneKey, np.ndarray], usable: np.ndarray) -> dict[str, float]:
    """Measure every zone: its percentiles, and each percentile's asymmetry with the mirror zone.

    Returns
    -------
    dict
        ``"image-left.lower.p50"`` ... for each zone and percentile, and ``"lower.p50.asym"`` (the
        image-left zone minus the image-right one) for each zone name and percentile. A zone with
        too few pixels gives NaN.
    """
    features: dict[str, float] = {}
    for key, mask in zones.items():
        values = density[mask & usable]
        if values.size < 20:
            values = density[mask]
        for percentile in PERCENTILES:
            value = float(np.percentile(values, percentile)) if values.size >= 20 else float("nan")
            features[f"{key.name}.p{percentile}"] = value
    for zone in ZONE_NAMES:
        for percentile in PERCENTILES:
            left = features[f"image-left.{zone}.p{percentile}"]
            right = features[f"image-right.{zone}.p{percentile}"]
            features[f"{zone}.p{percentile}.asym"] = left - right
    return features


def feature_names() -> tuple[str, ...]:
    """The names :func:`zone_features` returns, in a fixed order."""
    names = [f"{key.name}.p{p}" for key in ZONES for p in PERCENTILES]
    names += [f"{zone}.p{p}.asym" for zone in ZONE_NAMES for p in PERCENTILES]
    return tuple(names)
