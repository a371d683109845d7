"""Anomaly stage: an unsupervised score per patch with an Isolation Forest (Liu, Ting and Zhou, 2008).

By default the forest is fitted on the valid patches of the image itself, so "anomalous" means
"unlike the rest of this image": no labelled data and no model weights are needed. With
``reference_model`` set, a forest fitted once on a folder of normal films
(:mod:`~miemss_node.pipeline.reference`) scores the patches instead.

How raw scores become heatmap values (``score_scale``):

* ``"robust"`` (default): the deviation of a patch's raw score from the typical patch (the median of
  this image's patches, or of the reference films' patches), in robust standard deviations
  (1.4826 x MAD), divided by :data:`ROBUST_Z_AT_ONE` and clipped to [0, 1]. A normal film, whose
  patches are all alike, then scores low everywhere and gets few or no regions.
* ``"minmax"``: the first behaviour, min-max over the image's patches; the most unusual patch of
  every image scores 1, so every image gets regions.

:func:`intensity_zscore` is the naive baseline that ``miemss-node evaluate`` compares against.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from miemss_node.pipeline.base import AnomalyScores, EnhancedImage, PatchFeatures, PipelineSettings

if TYPE_CHECKING:
    from miemss_node.pipeline.reference import ReferenceModel

logger = logging.getLogger(__name__)

#: Name recorded in :class:`AnomalyScores` (and so in the SR).
METHOD = "isolation_forest"
#: The same, scored against a reference model.
REFERENCE_METHOD = "isolation_forest_reference"
#: The naive baseline of the evaluation.
BASELINE_METHOD = "intensity_zscore"

#: With fewer valid patches than this there is no "rest of the image" to compare with: all 0.
MIN_PATCHES = 8

#: A spread of raw scores below this means all patches are alike: all 0.
MIN_SPREAD = 1e-9

#: Robust z of a patch's raw score that maps to heatmap value 1 ("robust" scale).
ROBUST_Z_AT_ONE = 10.0

#: Intensity z-score that maps to heatmap value 1 in the baseline.
BASELINE_Z_AT_ONE = 4.0

#: 1 / Phi^-1(3/4): makes the MAD a consistent estimate of the standard deviation.
MAD_TO_SIGMA = 1.4826


def score_patches(
    features: PatchFeatures, settings: PipelineSettings, valid: np.ndarray | None = None
) -> AnomalyScores:
    """Score every patch; higher is more anomalous.

    Parameters
    ----------
    features
        Patch feature vectors and grid.
    settings
        ``n_estimators`` trees, seeded with ``random_seed`` so a retry gives the same scores;
        ``score_scale``; ``reference_model`` (a path, or "" to fit on this image).
    valid
        Boolean of shape ``grid_shape``; patches outside it score 0 and are not used to fit.
        Defaults to ``features.valid``, then to every patch.

    Returns
    -------
    AnomalyScores
        float32 of shape ``grid_shape`` in [0, 1]; ``model`` names the reference model when one
        scored the patches.

    Raises
    ------
    ModelError
        If ``reference_model`` cannot be loaded or does not match these features.
    """
    grid = features.grid_shape
    mask = _valid_mask(features, valid)
    scores = np.zeros(grid[0] * grid[1], dtype=np.float32)
    if settings.reference_model:
        from miemss_node.pipeline.reference import load_reference_model

        return score_against_reference(features, load_reference_model(settings.reference_model), settings, valid)
    if int(mask.sum()) >= MIN_PATCHES:
        scores[mask] = _forest_scores(features.vectors[mask], settings)
    else:
        logger.info("too few valid patches (%d) to score", int(mask.sum()), extra={"action": "anomaly.skipped"})
    return AnomalyScores(scores=scores.reshape(grid), method=METHOD)


def score_against_reference(
    features: PatchFeatures, reference: ReferenceModel, settings: PipelineSettings, valid: np.ndarray | None = None
) -> AnomalyScores:
    """Score every valid patch with a reference model of normal films (see :func:`score_patches`).

    Raises
    ------
    ModelError
        If the model was fitted on other feature columns.
    """
    grid = features.grid_shape
    mask = _valid_mask(features, valid)
    reference.check_features(features)
    scores = np.zeros(grid[0] * grid[1], dtype=np.float32)
    if mask.any():
        raw = reference.raw_scores(features.vectors[mask])
        scores[mask] = _scale(raw, settings.score_scale, reference.center, reference.spread)
    return AnomalyScores(scores=scores.reshape(grid), method=REFERENCE_METHOD, model=reference.model_run)


def intensity_zscore(enhanced: EnhancedImage, features: PatchFeatures, settings: PipelineSettings) -> AnomalyScores:
    """The naive baseline: each valid patch's mean intensity as a z-score over the valid patches.

    Bright patches (a nodule or opacity is denser than lung) score high: ``z / BASELINE_Z_AT_ONE``
    clipped to [0, 1]. It uses the same grid and field of view as :func:`score_patches`.
    """
    from miemss_node.pipeline.features import to_working

    grid = features.grid_shape
    work = to_working(enhanced.pixels, settings.analysis_max_side)
    patch = max(1, round(features.patch_size_px[0] * work.shape[0] / enhanced.pixels.shape[0]))
    rows, cols = grid
    means = work[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch).mean(axis=(1, 3)).ravel()
    mask = _valid_mask(features, None)
    scores = np.zeros(rows * cols, dtype=np.float32)
    if int(mask.sum()) >= MIN_PATCHES:
        inside = means[mask]
        spread = float(inside.std())
        if spread > MIN_SPREAD:
            z = (inside - float(inside.mean())) / spread
            scores[mask] = np.clip(z / BASELINE_Z_AT_ONE, 0.0, 1.0)
    return AnomalyScores(scores=scores.reshape(grid), method=BASELINE_METHOD)


def robust_center_spread(raw: np.ndarray) -> tuple[float, float]:
    """Median and robust standard deviation (1.4826 x MAD) of raw scores."""
    center = float(np.median(raw))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(raw - center)))
    return center, spread


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
    """Fit a standardised Isolation Forest on ``vectors`` and scale its raw scores to [0, 1]."""
    standardised = StandardScaler().fit_transform(vectors.astype(np.float64))
    forest = IsolationForest(
        n_estimators=settings.n_estimators, contamination="auto", random_state=settings.random_seed
    )
    raw = -forest.fit(standardised).score_samples(standardised)
    center, spread = robust_center_spread(raw)
    return _scale(raw, settings.score_scale, center, spread)


def _scale(raw: np.ndarray, scale: str, center: float, spread: float) -> np.ndarray:
    """Raw scores (higher is more anomalous) to heatmap values in [0, 1]."""
    if scale == "minmax":
        low, high = float(raw.min()), float(raw.max())
        if high - low < MIN_SPREAD:
            return np.zeros(raw.shape, dtype=np.float32)
        return ((raw - low) / (high - low)).astype(np.float32)
    if scale != "robust":
        raise ValueError(f"unknown score_scale {scale!r}; expected 'robust' or 'minmax'")
    if spread < MIN_SPREAD:
        return np.zeros(raw.shape, dtype=np.float32)
    return np.clip((raw - center) / (spread * ROBUST_Z_AT_ONE), 0.0, 1.0).astype(np.float32)
