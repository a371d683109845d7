"""A focal model: which round-density candidates look like a nodule, learned without labelled data.

Lung texture makes many candidates (rib crossings, vessels seen end-on, the hila); their strength alone
ranks nodules poorly. A focal model is a logistic regression over a few of each candidate's measurements
(:data:`MODEL_FEATURES`: how its gradients converge on it, where it lies in the lung, and its contrast),
trained by **lesion insertion** into films without nodules: nodules and masses of known place (the
projection of a sphere, 10 to 40 mm, faint to dense, blurred like a real edge) are added to each film
again and again; the candidates that land on them are the positives, every other candidate the
negatives. No film needs a label beyond "no nodule", so a hospital retrains it on its own films with
``miemss-node reference chest``.

Why so few measurements: with every one of
:data:`~miemss_node.pipeline.focal.FEATURE_NAMES` (the blob's strength at each scale, its rim and
surroundings too) the model fitted the few training films and ranked the nodules inserted into a film it
had not seen worse than convergence alone (README, "Round densities").

Its decision threshold is set on the films without lesions: at most
:data:`~miemss_node.pipeline.chest_reference.FOCAL_FLAGS_PER_NORMAL_FILM` flagged candidates per film.
The model is plain numbers in the reference's JSON file (no pickle).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from miemss_node.errors import ModelError
from miemss_node.pipeline.focal import FEATURE_NAMES, FocalCandidate

logger = logging.getLogger(__name__)

#: The measurements the model reads (names of :data:`~miemss_node.pipeline.focal.FEATURE_NAMES`).
MODEL_FEATURES = ("convergence", "medial_fraction", "hilar_distance", "wall_distance_mm", "contrast")
#: Nodules inserted per training copy of a film ...
TRAINING_NODULES = 3
#: ... in this many copies per film ...
TRAINING_COPIES = 20
#: ... with diameters (mm) and peak contrasts (display units) drawn from these ranges: up to the dense
#: masses a radiologist expects flagged, so that the model learns that contrast counts as well as shape.
TRAINING_DIAMETERS_MM = (10.0, 40.0)
TRAINING_CONTRASTS = (0.04, 0.3)
#: Inverse regularisation strength of the logistic regression.
REGULARISATION_C = 0.3
#: The threshold is raised by this much (log-odds) above what the training films allow, since a few
#: films have not shown every strong candidate normal films can have.
THRESHOLD_MARGIN = 0.5


@dataclass(frozen=True, kw_only=True)
class FocalModel:
    """Standardisation, weights and threshold of the logistic regression."""

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    #: Log-odds at which a candidate is flagged.
    threshold: float
    positives: int
    negatives: int

    def log_odds(self, candidate: FocalCandidate) -> float:
        """The model's log-odds that a candidate is a nodule."""
        if len(candidate.features) != len(FEATURE_NAMES):
            raise ModelError(
                f"the candidate has {len(candidate.features)} measurements, this version makes {len(FEATURE_NAMES)}"
            )
        x = (_columns(candidate.features, self.feature_names) - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(np.dot(x, np.asarray(self.coef)) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready values."""
        return {
            "feature_names": list(self.feature_names),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "positives": self.positives,
            "negatives": self.negatives,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FocalModel:
        """Read a model written by :meth:`to_dict`.

        Raises
        ------
        ModelError
            If it was made for other features.
        """
        names = tuple(data["feature_names"])
        if names != MODEL_FEATURES or len(data["coef"]) != len(names):
            raise ModelError(
                "the chest reference's focal model was built for other candidate features: "
                "build it again with this version (miemss-node reference chest)"
            )
        return cls(
            feature_names=names,
            mean=tuple(float(v) for v in data["mean"]),
            scale=tuple(float(v) for v in data["scale"]),
            coef=tuple(float(v) for v in data["coef"]),
            intercept=float(data["intercept"]),
            threshold=float(data["threshold"]),
            positives=int(data["positives"]),
            negatives=int(data["negatives"]),
        )


def fit_focal_model(
    clean: Sequence[Sequence[FocalCandidate]],
    labelled: Sequence[tuple[FocalCandidate, int]],
    flags_per_film: float,
    features: Sequence[str] = MODEL_FEATURES,
) -> FocalModel:
    """Fit the logistic regression on candidates and set its threshold on the clean films.

    Parameters
    ----------
    clean
        Per training film without inserted nodules, its candidates (all negatives).
    labelled
        Candidates of the copies with inserted nodules, each with the nodule it lies on (0: none).
    flags_per_film
        How many clean candidates per film may be flagged.
    features
        The measurements it reads (a reference file holds only a model of :data:`MODEL_FEATURES`; others
        are for comparing, as ``benchmarks/focal_features.py`` does).

    Raises
    ------
    ModelError
        Without positives or negatives to learn from.
    """
    from sklearn.linear_model import LogisticRegression

    samples = [(c, False) for film in clean for c in film] + [(c, bool(label)) for c, label in labelled]
    positives = sum(1 for _, label in samples if label)
    if positives < 5 or positives == len(samples):
        raise ModelError(f"{positives} inserted nodule(s) among {len(samples)} candidates: too few to learn from")
    names = tuple(features)
    x = np.array([_columns(c.features, names) for c, _ in samples], dtype=np.float64)
    y = np.array([label for _, label in samples], dtype=bool)
    mean = x.mean(axis=0)
    scale = np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
    model = LogisticRegression(C=REGULARISATION_C, class_weight="balanced", max_iter=5000)
    model.fit((x - mean) / scale, y)
    fitted = FocalModel(
        feature_names=names,
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in model.coef_[0]),
        intercept=float(model.intercept_[0]),
        threshold=0.0,
        positives=positives,
        negatives=len(samples) - positives,
    )
    odds = sorted((fitted.log_odds(c) for film in clean for c in film), reverse=True)
    allowed = int(flags_per_film * len(clean))
    base = odds[min(allowed, len(odds) - 1)] if odds else 0.0
    logger.info(
        "focal model fitted: %d positives, %d negatives", positives, len(samples) - positives,
        extra={"action": "reference.focal_fitted"},
    )
    return FocalModel(**{**fitted.__dict__, "threshold": float(base) + THRESHOLD_MARGIN})


def _columns(features: Sequence[float], names: Sequence[str]) -> np.ndarray:
    """The named measurements of a candidate's :data:`~miemss_node.pipeline.focal.FEATURE_NAMES` values."""
    return np.asarray(features, dtype=np.float64)[list(_indices(tuple(names)))]


@lru_cache(maxsize=16)
def _indices(names: tuple[str, ...]) -> tuple[int, ...]:
    """Where each named measurement sits in :data:`~miemss_node.pipeline.focal.FEATURE_NAMES`."""
    return tuple(FEATURE_NAMES.index(name) for name in names)


def training_copies(pixels: np.ndarray, placement: np.ndarray, spacing_mm: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Copies of a film's pixels with nodules inserted inside ``placement``, with their label images."""
    from miemss_node.evaluate.lesions import insert_lesions

    rng = np.random.default_rng(seed)
    copies = []
    for _ in range(TRAINING_COPIES):
        contrast = float(rng.uniform(*TRAINING_CONTRASTS))
        lesioned, labels, _lesions = insert_lesions(
            pixels,
            placement,
            spacing_mm,
            kind="nodule",
            contrast=contrast,
            count=TRAINING_NODULES,
            diameter_range_mm=TRAINING_DIAMETERS_MM,
            rng=rng,
        )
        copies.append((lesioned, labels))
    return copies
