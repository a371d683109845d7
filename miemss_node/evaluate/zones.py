"""Zone files: what a reader drew on real films, and how the pipeline's regions fall on it.

A zone file is JSON (``benchmarks/zones/shared_chest_films.json`` is the development set)::

    {"format": "miemss-zones", "version": 1, "units": "percent",
     "images": [{"file": "images/film.png", "status": "abnormal", "view": "AP", "split": "development",
                 "zones": [{"kind": "lung", "side": "image-left", "box": [top, left, bottom, right]},
                           {"kind": "disease", "box": [...]},
                           {"kind": "object", "what": "marker", "box": [...]},
                           {"kind": "object", "what": "wire", "polyline": [[row, col], ...]}]}]}

Boxes are ``[top, left, bottom, right]`` and polyline points ``[row, col]``, in percent of the image's
rows and columns (``"units": "percent"``) or in pixels (``"pixels"``). ``status`` is "abnormal",
"normal" or "unlabelled"; ``split`` "development" or "held-out". ``file`` is relative to the data root
given on the command line.

Each region the pipeline outputs is put in one class, by the share of its pixels:

* **object**: at least :data:`MAJORITY` of it on objects (each widened by :data:`OBJECT_MARGIN_MM`);
* **outside**: less than :data:`MAJORITY` of it in the drawn lungs (and disease);
* **disease**: it overlaps a disease zone by at least :data:`DISEASE_OVERLAP` of its own area, or of
  the disease zone's area;
* **lung**: anything else (inside the lungs, not on the drawn disease).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.draw import line

from miemss_node.errors import MiemssError

#: A region is "on" objects, or "inside" the lungs, when this share of its pixels is.
MAJORITY = 0.5
#: A region is on the disease when its overlap with a disease zone is this share of either.
DISEASE_OVERLAP = 0.2
#: Objects are widened by this margin (mm) when regions are classified.
OBJECT_MARGIN_MM = 3.0
#: Width (mm) of a polyline object (a wire) before the margin.
LINE_WIDTH_MM = 3.0
#: Lung interiors (for inserted lesions) are the ellipse inscribed in each lung box, this fraction of
#: its half-axes.
INTERIOR = 0.85
#: The region classes, in the order of precedence.
CLASSES = ("object", "outside", "disease", "lung")


class ZoneFileError(MiemssError):
    """A zone file is not in the expected format: see ``miemss_node/evaluate/zones.py`` for it."""


@dataclass(frozen=True, kw_only=True)
class ZonedFilm:
    """One film of a zone file."""

    file: str
    status: str
    split: str
    view: str
    finding: str
    zones: tuple[dict[str, Any], ...]
    units: str


@dataclass(frozen=True, kw_only=True)
class ZoneMasks:
    """A film's drawn zones as masks at its size."""

    lungs: np.ndarray
    #: The ellipse inscribed in each lung box, shrunk to :data:`INTERIOR` of its half-axes: where a
    #: lesion is surely in the lung (a box's corners hold the heart, the diaphragm, the chest wall).
    lung_interiors: np.ndarray
    disease: list[np.ndarray]
    objects: np.ndarray


def load_zone_file(path: Path) -> list[ZonedFilm]:
    """Read and check a zone file.

    Raises
    ------
    ZoneFileError
        If it is not JSON or not in the format above.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZoneFileError(f"zone file {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "miemss-zones" or payload.get("version") != 1:
        raise ZoneFileError(f"{path} is not a miemss-zones version 1 file")
    units = payload.get("units", "percent")
    if units not in ("percent", "pixels"):
        raise ZoneFileError(f"{path}: units must be 'percent' or 'pixels', not {units!r}")
    films = []
    for number, item in enumerate(payload.get("images", []), start=1):
        if "file" not in item or not isinstance(item.get("zones", []), list):
            raise ZoneFileError(f"{path}: image {number} needs 'file' and a list of 'zones'")
        status = item.get("status", "unlabelled")
        if status not in ("abnormal", "normal", "unlabelled"):
            raise ZoneFileError(f"{path}: image {number} status {status!r} is not abnormal, normal or unlabelled")
        for zone in item.get("zones", []):
            if zone.get("kind") not in ("lung", "disease", "object") or not ("box" in zone or "polyline" in zone):
                raise ZoneFileError(f"{path}: image {number} has a zone without a known kind and a box or polyline")
        films.append(
            ZonedFilm(
                file=str(item["file"]),
                status=status,
                split=str(item.get("split", "development")),
                view=str(item.get("view", "")).upper(),
                finding=str(item.get("finding", "")),
                zones=tuple(item.get("zones", [])),
                units=units,
            )
        )
    return films


def zone_masks(film: ZonedFilm, shape: tuple[int, int], mm_per_px: float) -> ZoneMasks:
    """Draw a film's zones at ``shape`` (rows, columns)."""
    rows, cols = shape
    scale = (rows / 100.0, cols / 100.0) if film.units == "percent" else (1.0, 1.0)
    lungs = np.zeros(shape, dtype=bool)
    interiors = np.zeros(shape, dtype=bool)
    objects = np.zeros(shape, dtype=bool)
    disease = []
    for zone in film.zones:
        mask = _draw(zone, shape, scale, mm_per_px)
        if zone["kind"] == "lung":
            lungs |= mask
            interiors |= _inner_ellipse(mask)
        elif zone["kind"] == "disease":
            disease.append(mask)
        else:
            objects |= mask
    margin = max(1, round(OBJECT_MARGIN_MM / mm_per_px))
    objects = ndimage.binary_dilation(objects, iterations=margin) if objects.any() else objects
    return ZoneMasks(lungs=lungs, lung_interiors=interiors, disease=disease, objects=objects)


def classify_region(region: np.ndarray, masks: ZoneMasks) -> str:
    """The class of one region (a boolean mask at the film's size); see the module docstring."""
    area = int(region.sum())
    if area == 0:
        return "lung"
    if (region & masks.objects).sum() >= MAJORITY * area:
        return "object"
    thorax = masks.lungs.copy()
    for disease in masks.disease:
        thorax |= disease
    if (region & thorax).sum() < MAJORITY * area:
        return "outside"
    if any(_on_disease(region, area, disease) for disease in masks.disease):
        return "disease"
    return "lung"


def disease_zones_found(regions: list[np.ndarray], classes: list[str], masks: ZoneMasks) -> tuple[bool, ...]:
    """Per drawn disease zone, whether a region of class "disease" (``classes``: each region's
    :func:`classify_region`) lies on it."""
    on = [region for region, name in zip(regions, classes, strict=True) if name == "disease"]
    return tuple(any(_on_disease(region, int(region.sum()), disease) for region in on) for disease in masks.disease)


def _on_disease(region: np.ndarray, area: int, disease: np.ndarray) -> bool:
    """Whether a region overlaps a disease zone by :data:`DISEASE_OVERLAP` of its own area or of the zone's."""
    overlap = int((region & disease).sum())
    return bool(overlap) and (overlap >= DISEASE_OVERLAP * area or overlap >= DISEASE_OVERLAP * int(disease.sum()))


def _inner_ellipse(box: np.ndarray) -> np.ndarray:
    """The ellipse inscribed in a box mask, shrunk to :data:`INTERIOR` of its half-axes."""
    if not box.any():
        return box
    rows, cols = np.nonzero(box)
    centre = ((rows.min() + rows.max()) / 2.0, (cols.min() + cols.max()) / 2.0)
    half = (max(1.0, INTERIOR * (rows.max() - rows.min()) / 2.0), max(1.0, INTERIOR * (cols.max() - cols.min()) / 2.0))
    rr, cc = np.ogrid[: box.shape[0], : box.shape[1]]
    return ((rr - centre[0]) / half[0]) ** 2 + ((cc - centre[1]) / half[1]) ** 2 <= 1.0


def _draw(zone: dict[str, Any], shape: tuple[int, int], scale: tuple[float, float], mm_per_px: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    if "box" in zone:
        top, left, bottom, right = (float(v) for v in zone["box"])
        r0, r1 = sorted((int(round(top * scale[0])), int(round(bottom * scale[0]))))
        c0, c1 = sorted((int(round(left * scale[1])), int(round(right * scale[1]))))
        mask[max(0, r0) : min(shape[0], r1 + 1), max(0, c0) : min(shape[1], c1 + 1)] = True
        return mask
    points = [(round(float(r) * scale[0]), round(float(c) * scale[1])) for r, c in zone["polyline"]]
    for (row0, col0), (row1, col1) in zip(points, points[1:], strict=False):
        rr, cc = line(row0, col0, row1, col1)
        keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        mask[rr[keep], cc[keep]] = True
    width = max(1, round(LINE_WIDTH_MM / 2 / mm_per_px))
    return ndimage.binary_dilation(mask, iterations=width)
