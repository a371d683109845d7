"""Evaluation on real films: where the pipeline's regions land, and how its abnormality score ranks.

For every film of a zone file (:mod:`~miemss_node.evaluate.zones`) the whole pipeline runs as the node
runs it (:func:`~miemss_node.pipeline.runner.analyse_image`); each region is classified against the
drawn zones. The summary counts, per split (development, held-out):

* regions on objects or outside the thorax (they should be none);
* abnormal films with a region on the drawn disease, and drawn disease zones with a region on them (a
  film with disease in both lungs has a zone drawn on each);
* regions per normal film;
* how much of the drawn lungs' interiors the hemithoraces found cover (the anatomy's own figure: a
  disease the outline misses cannot get a region);
* the statements "line, tube or wire" and "metal device" against the drawn objects
  (:mod:`~miemss_node.evaluate.devices`);
* the image-level AUC of the abnormality score (normal against abnormal), with a bootstrap 95 %
  interval, over all films and within each view (AP films and PA films apart: a portable AP film looks
  denser than a PA one, so view alone separates much of a set where most abnormal films are AP).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from miemss_node.errors import DecodeError
from miemss_node.evaluate.devices import device_statements
from miemss_node.evaluate.zones import CLASSES, ZonedFilm, classify_region, disease_zones_found, zone_masks
from miemss_node.pipeline.base import DecodedImage, ImageAnalysis, PipelineSettings
from miemss_node.pipeline.chest import mm_per_pixel, resize_labels

if TYPE_CHECKING:
    from miemss_node.pipeline.models import ModelSet

logger = logging.getLogger(__name__)

#: Picture files among the inputs (no DICOM header).
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
#: Bootstrap resamples for the AUC's interval.
BOOTSTRAP = 2000
#: Labels (case-insensitive) that mean a normal film in a labels CSV.
NORMAL_LABELS = frozenset({"no finding", "normal", "no findings", "0", "negative"})


@dataclass(frozen=True, kw_only=True)
class FilmResult:
    """One real film through the pipeline."""

    file: str
    status: str
    split: str
    view: str
    method: str
    abnormality_score: float
    #: Per region: its label, class, kind, location and peak score.
    regions: tuple[dict[str, Any], ...]
    #: The chest classifier's probability per pathology ({} without a classifier).
    pathologies: dict[str, float] = field(default_factory=dict)
    #: What the analysis said it saw and left out (``anatomy.devices``).
    devices: tuple[str, ...] = ()
    #: The ``what`` of each object drawn on it; None for a film without drawn zones.
    drawn_objects: tuple[str, ...] | None = None
    #: Per drawn disease zone, whether a region lies on it.
    disease_zones_found: tuple[bool, ...] = ()
    #: Share of the drawn lungs' interiors inside the hemithoraces found; None when no lungs were found
    #: (or none drawn).
    lungs_covered: float | None = None

    def count(self, region_class: str) -> int:
        """How many of its regions are of ``region_class``."""
        return sum(1 for region in self.regions if region["class"] == region_class)


def decode_film(path: Path, *, view: str = "", picture_modality: str = "CR") -> DecodedImage:
    """Decode the first frame of a film; a picture gets ``picture_modality`` and the given view.

    Raises
    ------
    DecodeError
        If the file cannot be decoded.
    """
    from miemss_node.pipeline.decode import decode_dataset, decode_image_file, read_dicom_file

    if path.suffix.lower() in PICTURE_SUFFIXES:
        image = replace(decode_image_file(path), modality=picture_modality)
    else:
        image = decode_dataset(read_dicom_file(path), max_frames=1)[0]
    if view and not image.view_position:
        # A picture carries no View Position; the zone file (or labels) says what the DICOM would.
        image = replace(image, view_position=view)
    return image


def evaluate_films(
    films: Sequence[ZonedFilm],
    root: Path,
    settings: PipelineSettings,
    *,
    progress: Callable[[str], None] | None = None,
    models: ModelSet | None = None,
) -> list[FilmResult]:
    """Run the pipeline on every film of a zone file and classify its regions.

    ``models`` are the node's models (``[models]`` of ``--config``); None runs without any.
    """
    from miemss_node.pipeline.models import NO_MODELS
    from miemss_node.pipeline.runner import analyse_image

    results = []
    for film in films:
        try:
            image = decode_film(root / film.file, view=film.view)
        except DecodeError as exc:
            logger.warning("%s skipped: %s", film.file, exc, extra={"action": "evaluate.skipped"})
            continue
        analysis = analyse_image(image, settings, models or NO_MODELS)
        results.append(_film_result(film, image, analysis))
        if progress is not None:
            last = results[-1]
            progress(
                f"{film.file}: {last.method}, score {last.abnormality_score:.2f}, "
                f"regions {[region['class'] for region in last.regions]}"
            )
    return results


def _film_result(film: ZonedFilm, image: DecodedImage, analysis: ImageAnalysis) -> FilmResult:
    shape = (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
    masks = zone_masks(film, shape, mm_per_pixel(image, shape[0]))
    labels = analysis.region_map.labels
    region_masks = [labels == region.label for region in analysis.region_map.regions]
    classes = [classify_region(mask, masks) for mask in region_masks]
    regions = tuple(
        {
            "label": region.label,
            "class": name,
            "kind": region.kind,
            "location": region.location,
            "max_score": round(region.max_score, 4),
        }
        for region, name in zip(analysis.region_map.regions, classes, strict=True)
    )
    drawn = tuple(str(zone.get("what", "")) for zone in film.zones if zone.get("kind") == "object")
    lungs_covered = None
    if analysis.anatomy is not None and analysis.anatomy.chest_frontal and masks.lung_interiors.any():
        found = resize_labels(analysis.anatomy.hemithoraces, shape) > 0
        lungs_covered = float((found & masks.lung_interiors).sum() / masks.lung_interiors.sum())
    return FilmResult(
        file=film.file,
        status=film.status,
        split=film.split,
        view=film.view,
        method=analysis.method,
        abnormality_score=float(analysis.abnormality_score),
        regions=regions,
        pathologies={p.label: round(p.probability, 4) for p in analysis.pathologies},
        devices=analysis.anatomy.devices if analysis.anatomy is not None else (),
        drawn_objects=drawn if film.zones else None,
        disease_zones_found=disease_zones_found(region_masks, classes, masks),
        lungs_covered=lungs_covered,
    )


def summarise_films(results: Sequence[FilmResult], *, seed: int = 0) -> dict[str, Any]:
    """The summary of the module docstring, for one group of films."""
    abnormal = [r for r in results if r.status == "abnormal"]
    normal = [r for r in results if r.status == "normal"]
    summary: dict[str, Any] = {
        "films": len(results),
        "regions_by_class": {name: sum(r.count(name) for r in results) for name in CLASSES},
        "regions_on_objects_or_outside": sum(r.count("object") + r.count("outside") for r in results),
        "abnormal_films": len(abnormal),
        "abnormal_with_region_on_disease": sum(1 for r in abnormal if r.count("disease") > 0),
        "disease_zones": sum(len(r.disease_zones_found) for r in results),
        "disease_zones_with_a_region": sum(sum(r.disease_zones_found) for r in results),
        "normal_films": len(normal),
        "regions_per_normal_film": [len(r.regions) for r in normal],
        "normal_films_with_more_than_one_region": sum(1 for r in normal if len(r.regions) > 1),
        "auc": auc_with_interval([r.abnormality_score for r in abnormal], [r.abnormality_score for r in normal], seed),
        "device_statements": device_statements(results),
        "lungs_covered": _median_and_lowest([r.lungs_covered for r in results if r.lungs_covered is not None]),
    }
    for view in sorted({r.view for r in results if r.view}):
        in_view = [r for r in results if r.view == view]
        summary[f"auc_{view}"] = auc_with_interval(
            [r.abnormality_score for r in in_view if r.status == "abnormal"],
            [r.abnormality_score for r in in_view if r.status == "normal"],
            seed,
        )
    return summary


def _median_and_lowest(values: Sequence[float]) -> dict[str, float] | None:
    """{"median": ..., "lowest": ...} of some shares, rounded; None without any."""
    if not values:
        return None
    return {"median": round(float(np.median(values)), 3), "lowest": round(float(np.min(values)), 3)}


def auc_with_interval(positives: Sequence[float], negatives: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """ROC AUC (the chance a positive outscores a negative, ties half) and a bootstrap 95 % interval."""
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if not pos.size or not neg.size:
        return {"auc": None, "low": None, "high": None, "positives": int(pos.size), "negatives": int(neg.size)}
    rng = np.random.default_rng(seed)
    resampled = [
        _auc(rng.choice(pos, pos.size), rng.choice(neg, neg.size)) for _ in range(BOOTSTRAP)
    ]
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "auc": round(_auc(pos, neg), 3),
        "low": round(float(low), 3),
        "high": round(float(high), 3),
        "positives": int(pos.size),
        "negatives": int(neg.size),
    }


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def films_from_labels(path: Path) -> list[ZonedFilm]:
    """Films from a labels CSV (columns ``file`` and ``finding`` or ``label``; optional ``view``).

    A finding of "No finding" (or "normal") is a normal film; any other is abnormal. Files are
    relative to the CSV's folder. No zones: only the AUC is measured on them.
    """
    films = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            finding = (row.get("finding") or row.get("label") or "").strip()
            status = "normal" if finding.lower() in NORMAL_LABELS else "abnormal"
            films.append(
                ZonedFilm(
                    file=str(row["file"]),
                    status=status,
                    split=row.get("split", "development") or "development",
                    view=(row.get("view") or "").upper(),
                    finding=finding,
                    zones=(),
                    units="percent",
                )
            )
    return films
