"""Abnormality scores of a frame and of a study, 0 (looks like a normal film) to 1.

A frontal chest film's score comes from the chest analysis (:func:`~miemss_node.pipeline.chest.judge_chest`:
the logistic of its strongest evidence against normal films). Other films have no normal reference, so
their score is only how unusual their most unusual part is within the image
(:func:`generic_abnormality`); the report says which analysis ran.

A study is as abnormal as its most abnormal image: one abnormal view is enough for a radiologist to
look, whatever the other views show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from miemss_node.pipeline.base import AnomalyScores, ImageAnalysis, RegionMap


def study_abnormality_score(analyses: Sequence[ImageAnalysis]) -> float:
    """The study's abnormality score: the highest of its frames' scores, 0.0 when none was analysed."""
    return max((float(analysis.abnormality_score) for analysis in analyses), default=0.0)


def generic_abnormality(scores: AnomalyScores, region_map: RegionMap) -> float:
    """Score of the generic analysis: the strongest region's peak, else the 99th percentile of patch scores."""
    if region_map.regions:
        return float(max(region.max_score for region in region_map.regions))
    values = scores.scores[scores.scores > 0]
    return float(np.percentile(values, 99)) if values.size else 0.0
