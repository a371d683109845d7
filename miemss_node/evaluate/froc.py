"""Lesion insertion through the whole pipeline: sensitivity against false-positive regions (FROC).

Nodules with known masks (:mod:`~miemss_node.evaluate.lesions`) are added to normal films inside the
lungs *as drawn in the zone file* (not as the pipeline estimates them, so a lesion the anatomy step
misses counts as missed). The pipeline then runs as the node runs it, with the flagging threshold of
round densities lowered to :data:`CANDIDATE_THRESHOLD` so that weaker ones come out with their scores
too (lung zones are flagged at the configured threshold, as in service).

* A region **hits** a lesion when it overlaps it and is at most :data:`MAX_AREA_RATIO` times the
  lesion's area (a whole lung zone that happens to contain a small nodule did not localise it).
  A lesion's score is the best peak score of the regions that hit it.
* Every other region, on the lesioned films and on the same films without lesions, is a **false
  positive**.

Sweeping a threshold over the scores gives the FROC curve; the figures reported are the sensitivity at
0.5, 1 and 2 false-positive regions per normal film, and the Dice of the regions flagged at the
configured threshold against the lesion masks. Where the misses are is reported too: lesions centred
outside the hemithoraces the anatomy step found (no region can reach them), lesions that no region hit
at all, and the sensitivity at 1 false positive per normal film by lesion diameter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from miemss_node.evaluate.lesions import Lesion, insert_lesions
from miemss_node.evaluate.metrics import dice_iou
from miemss_node.pipeline.base import DecodedImage, ImageAnalysis, PipelineSettings
from miemss_node.pipeline.chest import ASSUMED_FIELD_MM

logger = logging.getLogger(__name__)

#: The round-density flagging threshold during the sweep (an abnormality score).
CANDIDATE_THRESHOLD = 0.05
#: Round densities kept per film during the sweep.
CANDIDATE_FOCAL_REGIONS = 8
#: A region larger than this many times a lesion does not localise it.
MAX_AREA_RATIO = 10.0
#: False-positive rates (per normal film) at which sensitivity is reported.
FP_RATES = (0.5, 1.0, 2.0)
#: Lesion diameters (mm) at which the sensitivity at 1 false positive per normal film is split.
DIAMETER_BANDS_MM = ((10.0, 15.0), (15.0, 20.0), (20.0, 30.0))


@dataclass(frozen=True, kw_only=True)
class FrocPlan:
    """What is inserted, and how often."""

    contrasts: tuple[float, ...] = (0.03, 0.06, 0.12)
    diameter_range_mm: tuple[float, float] = (10.0, 30.0)
    lesions_per_film: int = 2
    trials: int = 3
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class FrocRun:
    """One film (clean or lesioned) through the pipeline."""

    film: str
    contrast: float
    #: Best hitting score per lesion (-1 when no region hit it).
    lesion_scores: tuple[float, ...]
    #: Peak scores of the false-positive regions.
    false_positive_scores: tuple[float, ...]
    #: The same, counting round-density regions only: the focal detector on its own.
    focal_lesion_scores: tuple[float, ...] = ()
    focal_false_positive_scores: tuple[float, ...] = ()
    #: Dice of the regions flagged at the configured threshold against the lesions (None without lesions).
    dice: float | None
    #: Per lesion, in the order of ``lesion_scores``: its diameter, and whether its centre lies inside the
    #: hemithoraces the anatomy step found (a chest analysis; False without one).
    lesion_diameters_mm: tuple[float, ...] = ()
    lesions_in_found_lungs: tuple[bool, ...] = ()


def lesion_insertion(
    films: Sequence[tuple[str, DecodedImage, np.ndarray]],
    settings: PipelineSettings,
    plan: FrocPlan,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[FrocRun]:
    """Insert nodules into normal films and run the pipeline on each, clean and lesioned.

    Parameters
    ----------
    films
        (name, decoded normal film, boolean mask of its drawn lungs at its size).
    settings
        The pipeline settings; its ``threshold`` is where Dice is measured.
    plan
        Contrasts, sizes, counts, trials and seed.
    """
    from miemss_node.pipeline.runner import analyse_image

    sweep = settings.replaced(focal_threshold=CANDIDATE_THRESHOLD, max_focal_regions=CANDIDATE_FOCAL_REGIONS)
    runs = []
    for index, (name, image, lungs) in enumerate(films):
        rng = np.random.default_rng([plan.seed, index])
        spacing = min(image.pixel_spacing_mm) if image.pixel_spacing_mm else ASSUMED_FIELD_MM / max(image.pixels.shape)
        none = np.zeros(image.pixels.shape, dtype=np.uint16)
        runs.append(_run(name, 0.0, analyse_image(image, sweep), none, (), settings.threshold))
        for contrast in plan.contrasts:
            for _trial in range(plan.trials):
                pixels, labels, inserted = insert_lesions(
                    image.pixels,
                    lungs,
                    spacing,
                    kind="nodule",
                    contrast=contrast,
                    count=plan.lesions_per_film,
                    diameter_range_mm=plan.diameter_range_mm,
                    rng=rng,
                )
                lesioned = replace(image, pixels=pixels)
                runs.append(_run(name, contrast, analyse_image(lesioned, sweep), labels, inserted, settings.threshold))
        if progress is not None:
            progress(f"{name}: {1 + len(plan.contrasts) * plan.trials} runs")
    return runs


def _run(
    name: str,
    contrast: float,
    analysis: ImageAnalysis,
    lesions: np.ndarray,
    inserted: Sequence[Lesion],
    threshold: float,
) -> FrocRun:
    """Score one pipeline run: each lesion's best hitting region, the false positives, the Dice."""
    labels = analysis.region_map.labels
    lesion_ids = [int(v) for v in np.unique(lesions) if v]
    by_label = {lesion.label: lesion for lesion in inserted}
    best = {lesion: -1.0 for lesion in lesion_ids}
    best_focal = dict(best)
    false_positives, focal_false_positives = [], []
    flagged = np.zeros(labels.shape, dtype=bool)
    for region in analysis.region_map.regions:
        mask = labels == region.label
        focal = region.kind == "focal"
        if region.max_score >= threshold:
            flagged |= mask
        hit = False
        for lesion in lesion_ids:
            lesion_mask = lesions == lesion
            if (mask & lesion_mask).any() and mask.sum() <= MAX_AREA_RATIO * lesion_mask.sum():
                best[lesion] = max(best[lesion], region.max_score)
                if focal:
                    best_focal[lesion] = max(best_focal[lesion], region.max_score)
                hit = True
        if not hit:
            false_positives.append(region.max_score)
            if focal:
                focal_false_positives.append(region.max_score)
    dice = dice_iou(flagged, lesions > 0)[0] if lesion_ids else None
    return FrocRun(
        film=name,
        contrast=contrast,
        lesion_scores=tuple(best[lesion] for lesion in lesion_ids),
        false_positive_scores=tuple(false_positives),
        focal_lesion_scores=tuple(best_focal[lesion] for lesion in lesion_ids),
        focal_false_positive_scores=tuple(focal_false_positives),
        dice=dice,
        lesion_diameters_mm=tuple(by_label[lesion].diameter_mm for lesion in lesion_ids if lesion in by_label),
        lesions_in_found_lungs=tuple(
            _in_found_lungs(analysis, by_label[lesion].center) for lesion in lesion_ids if lesion in by_label
        ),
    )


def _in_found_lungs(analysis: ImageAnalysis, center: tuple[float, float]) -> bool:
    """Whether a source-pixel place lies inside the hemithoraces of a chest analysis."""
    anatomy = analysis.anatomy
    if anatomy is None or not anatomy.chest_frontal:
        return False
    rows, cols = anatomy.source_shape
    row = min(int(center[0] * anatomy.shape[0] / rows), anatomy.shape[0] - 1)
    col = min(int(center[1] * anatomy.shape[1] / cols), anatomy.shape[1] - 1)
    return bool(anatomy.hemithoraces[row, col] > 0)


def froc_summary(runs: Sequence[FrocRun], films: int, *, focal_only: bool = False) -> list[dict[str, Any]]:
    """Per contrast: lesions, sensitivity at each of :data:`FP_RATES`, and the mean Dice.

    False positives are counted over the clean films and the lesioned films of that contrast, per
    film run; sensitivity at a rate is taken at the lowest threshold whose FP rate does not exceed it.
    With ``focal_only``, only round-density regions count, as hits and as false positives.
    """
    rows = []
    for contrast in sorted({run.contrast for run in runs if run.contrast > 0}):
        group = [run for run in runs if run.contrast in (0.0, contrast)]
        lesions = np.array(
            [s for run in group for s in (run.focal_lesion_scores if focal_only else run.lesion_scores)],
            dtype=np.float64,
        )
        scores = [s for run in group for s in (run.focal_false_positive_scores if focal_only else run.false_positive_scores)]
        false_positives = np.sort(scores)[::-1]
        images = len(group)
        row: dict[str, Any] = {"contrast": contrast, "lesions": int(lesions.size), "film_runs": images}
        for rate in FP_RATES:
            found = (lesions > _cutoff(false_positives, rate, images)) & (lesions >= 0.0)  # -1: no region hit it
            row[f"sensitivity_at_{rate:g}_fp"] = round(float(found.mean()), 3) if lesions.size else None
        row.update(_where_missed(group, lesions, false_positives, images))
        dice = [run.dice for run in runs if run.contrast == contrast and run.dice is not None]
        row["dice"] = round(float(np.mean(dice)), 3) if dice else None
        row["films"] = films
        rows.append(row)
    return rows


def _cutoff(false_positives: np.ndarray, rate: float, images: int) -> float:
    """The score a lesion must beat at ``rate`` false positives per film run: just above the
    (allowed + 1)-th strongest false positive (``false_positives`` sorted, strongest first)."""
    allowed = int(np.floor(rate * images))
    return float(false_positives[allowed]) if allowed < false_positives.size else -np.inf


def _where_missed(
    group: Sequence[FrocRun], lesions: np.ndarray, false_positives: np.ndarray, images: int
) -> dict[str, Any]:
    """Lesions outside the found lungs, lesions no region hit, and the sensitivity at 1 FP per diameter
    band (None for a band without lesions). ``lesions`` are the group's scores, run by run."""
    diameters = np.array([d for run in group for d in run.lesion_diameters_mm], dtype=np.float64)
    inside = np.array([i for run in group for i in run.lesions_in_found_lungs], dtype=bool)
    found = (lesions > _cutoff(false_positives, 1.0, images)) & (lesions >= 0.0)
    by_band: dict[str, float | None] = {}
    for low, high in DIAMETER_BANDS_MM:
        band = (diameters >= low) & (diameters < high) if diameters.size == lesions.size else np.zeros(0, bool)
        by_band[f"{low:g}-{high:g} mm"] = round(float(found[band].mean()), 3) if band.any() else None
    return {
        "lesions_outside_found_lungs": int((~inside).sum()) if inside.size == lesions.size else None,
        "lesions_without_a_region": int((lesions < 0.0).sum()),
        "sensitivity_at_1_fp_by_diameter": by_band,
    }
