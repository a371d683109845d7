"""Anomaly stage: an unsupervised score per patch with an Isolation Forest (Liu, Ting and Zhou, 2008).

The forest is fitted on the valid patches of the image itself, so "anomalous" means "unlike the
rest of this image": no labelled data and no model weights are needed. The scores are min-max
scaled over the valid patches, so the most unusual patch of every image scores 1; the threshold and
minimum area of the regions stage decide what is reported.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from miemss_node.pipeline.base import AnomalyScores, PatchFeatures, PipelineSettings

logger = logging.getLogger(__name__)

#: Name recorded in :class:`AnomalyScores` (and so in the SR).
METHOD = "isolation_forest"

#: With fewer valid patches than this there is no "rest of the image" to compare with: all 0.
MIN_PATCHES = 8

#: A spread of raw scores below this means all patches are alike: all 0.
MIN_SPREAD = 1e-9


def score_patches(
    features: PatchFeatures, settings: PipelineSettings, valid: np.ndarray | None = None
) -> AnomalyScores:
    """Score every patch; higher is more anomalous.

    Parameters
    ----------
    features
        Patch feature vectors and grid.
    settings
        ``n_estimators`` trees, seeded with ``random_seed`` so a retry gives the same scores.
    valid
        Boolean of shape ``grid_shape``; patches outside it score 0 and are not used to fit.
        Defaults to ``features.valid``, then to every patch.

    Returns
    -------
    AnomalyScores
        float32 of shape ``grid_shape`` in [0, 1].
    """
    grid = features.grid_shape
    mask = _valid_mask(features, valid)
    scores = np.zeros(grid[0] * grid[1], dtype=np.float32)
    if int(mask.sum()) >= MIN_PATCHES:
        scores[mask] = _forest_scores(features.vectors[mask], settings)
    else:
        logger.info("too few valid patches (%d) to score", int(mask.sum()), extra={"action": "anomaly.skipped"})
    return AnomalyScores(scores=scores.reshape(grid), method=METHOD)


def _valid_mask(features: PatchFeatures, valid: np.ndarray | None) -> np.ndarray:
    """Flattened validity: the given mask, else the features' own, else all; non-finite rows excluded."""
    chosen = valid if valid is not None else features.valid
    n_patches = features.grid_shape[0] * features.grid_shape[1]
    if chosen is None:
        mask = np.ones(n_patches, dtype=bool)
    else:
        mask = np.asarray(chosen, dtype=bool).ravel()
        if mask.size != n_patches:
            raise ValueError(f"valid has {mask.size} entries, the grid {features.grid_shape} has {n_patches}")
    return mask & np.isfinite(features.vectors).all(axis=1)


def _forest_scores(vectors: np.ndarray, settings: PipelineSettings) -> np.ndarray:
    """Fit a standardised Isolation Forest on ``vectors`` and min-max its anomaly scores to [0, 1]."""
    standardised = StandardScaler().fit_transform(vectors.astype(np.float64))
    forest = IsolationForest(
        n_estimators=settings.n_estimators, contamination="auto", random_state=settings.random_seed
    )
    raw = -forest.fit(standardised).score_samples(standardised)
    low, high = float(raw.min()), float(raw.max())
    if high - low < MIN_SPREAD:
        return np.zeros(raw.shape, dtype=np.float32)
    return ((raw - low) / (high - low)).astype(np.float32)
