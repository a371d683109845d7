"""Lesion insertion through the whole pipeline: sensitivity against false-positive regions (FROC).

Nodules with known masks (:mod:`~miemss_node.evaluate.lesions`) are added to normal films inside the
lungs *as drawn in the zone file* (not as the pipeline estimates them, so a lesion the anatomy step
misses counts as missed). The pipeline then runs as the node runs it, with its flagging threshold
lowered to :data:`CANDIDATE_THRESHOLD` so that weaker regions come out with their scores too.

* A region **hits** a lesion when it overlaps it and is at most :data:`MAX_AREA_RATIO` times the
  lesion's area (a whole lung zone that happens to contain a small nodule did not localise it).
  A lesion's score is the best peak score of the regions that hit it.
* Every other region, on the lesioned films and on the same films without lesions, is a **false
  positive**.

Sweeping a threshold over the scores gives the FROC curve; the figures reported are the sensitivity at
0.5, 1 and 2 false-positive regions per normal film, and the Dice of the regions flagged at the
configured threshold against the lesion masks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from miemss_node.evaluate.lesions import insert_lesions
from miemss_node.evaluate.metrics import dice_iou
from miemss_node.pipeline.base import DecodedImage, ImageAnalysis, PipelineSettings
from miemss_node.pipeline.chest import ASSUMED_FIELD_MM

logger = logging.getLogger(__name__)

#: The pipeline's flagging threshold during the sweep (an abnormality score).
CANDIDATE_THRESHOLD = 0.05
#: Round densities kept per film during the sweep.
CANDIDATE_FOCAL_REGIONS = 8
#: A region larger than this many times a lesion does not localise it.
MAX_AREA_RATIO = 10.0
#: False-positive rates (per normal film) at which sensitivity is reported.
FP_RATES = (0.5, 1.0, 2.0)


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
    #: Dice of the regions flagged at the configured threshold against the lesions (None without lesions).
    dice: float | None


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

    sweep = replace(settings, threshold=CANDIDATE_THRESHOLD, max_focal_regions=CANDIDATE_FOCAL_REGIONS)
    runs = []
    for index, (name, image, lungs) in enumerate(films):
        rng = np.random.default_rng([plan.seed, index])
        spacing = min(image.pixel_spacing_mm) if image.pixel_spacing_mm else ASSUMED_FIELD_MM / max(image.pixels.shape)
        none = np.zeros(image.pixels.shape, dtype=np.uint16)
        runs.append(_run(name, 0.0, analyse_image(image, sweep), none, settings.threshold))
        for contrast in plan.contrasts:
            for _trial in range(plan.trials):
                pixels, labels, _lesions = insert_lesions(
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
                runs.append(_run(name, contrast, analyse_image(lesioned, sweep), labels, settings.threshold))
        if progress is not None:
            progress(f"{name}: {1 + len(plan.contrasts) * plan.trials} runs")
    return runs


def _run(name: str, contrast: float, analysis: ImageAnalysis, lesions: np.ndarray, threshold: float) -> FrocRun:
    labels = analysis.region_map.labels
    lesion_ids = [int(v) for v in np.unique(lesions) if v]
    best = {lesion: -1.0 for lesion in lesion_ids}
    false_positives = []
    flagged = np.zeros(labels.shape, dtype=bool)
    for region in analysis.region_map.regions:
        mask = labels == region.label
        if region.max_score >= threshold:
            flagged |= mask
        hit = False
        for lesion in lesion_ids:
            lesion_mask = lesions == lesion
            if (mask & lesion_mask).any() and mask.sum() <= MAX_AREA_RATIO * lesion_mask.sum():
                best[lesion] = max(best[lesion], region.max_score)
                hit = True
        if not hit:
            false_positives.append(region.max_score)
    dice = dice_iou(flagged, lesions > 0)[0] if lesion_ids else None
    return FrocRun(
        film=name,
        contrast=contrast,
        lesion_scores=tuple(best[lesion] for lesion in lesion_ids),
        false_positive_scores=tuple(false_positives),
        dice=dice,
    )


def froc_summary(runs: Sequence[FrocRun], films: int) -> list[dict[str, Any]]:
    """Per contrast: lesions, sensitivity at each of :data:`FP_RATES`, and the mean Dice.

    False positives are counted over the clean films and the lesioned films of that contrast, per
    film run; sensitivity at a rate is taken at the lowest threshold whose FP rate does not exceed it.
    """
    rows = []
    for contrast in sorted({run.contrast for run in runs if run.contrast > 0}):
        group = [run for run in runs if run.contrast in (0.0, contrast)]
        lesions = np.array([s for run in group for s in run.lesion_scores], dtype=np.float64)
        false_positives = np.sort([s for run in group for s in run.false_positive_scores])[::-1]
        images = len(group)
        row: dict[str, Any] = {"contrast": contrast, "lesions": int(lesions.size), "film_runs": images}
        for rate in FP_RATES:
            allowed = int(np.floor(rate * images))
            # The threshold sits just above the (allowed + 1)-th strongest false positive.
            cutoff = false_positives[allowed] if allowed < false_positives.size else -np.inf
            row[f"sensitivity_at_{rate:g}_fp"] = round(float((lesions > cutoff).mean()), 3) if lesions.size else None
        dice = [run.dice for run in runs if run.contrast == contrast and run.dice is not None]
        row["dice"] = round(float(np.mean(dice)), 3) if dice else None
        row["films"] = films
        rows.append(row)
    return rows
