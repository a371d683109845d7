"""Segmentation and detection metrics: Dice, IoU, per-lesion hits, false-positive regions, PSNR/SSIM."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


@dataclass(frozen=True, kw_only=True)
class Detection:
    """How one predicted label image matches one reference label image."""

    #: None when both masks are empty (no lesion and nothing flagged).
    dice: float | None
    iou: float | None
    lesions: int
    #: Lesions overlapped by at least one predicted region.
    hits: int
    #: Predicted regions that overlap no lesion.
    false_positives: int
    #: Per lesion label: whether it was hit.
    hit_by_label: dict[int, bool]


def dice_iou(predicted: np.ndarray, reference: np.ndarray) -> tuple[float | None, float | None]:
    """Dice and IoU of two boolean masks; (None, None) when both are empty."""
    predicted = np.asarray(predicted, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    overlap = int(np.count_nonzero(predicted & reference))
    total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(reference))
    if total == 0:
        return None, None
    union = total - overlap
    return 2.0 * overlap / total, overlap / union


def match(predicted_labels: np.ndarray, lesion_labels: np.ndarray) -> Detection:
    """Compare predicted regions (labels 1..N) with reference lesions (labels 1..M).

    A lesion is hit when a predicted region overlaps it by at least one pixel; a predicted region is a
    false positive when it overlaps no lesion.
    """
    if predicted_labels.shape != lesion_labels.shape:
        raise ValueError(f"shapes differ: predicted {predicted_labels.shape}, reference {lesion_labels.shape}")
    dice, iou = dice_iou(predicted_labels > 0, lesion_labels > 0)
    both = (predicted_labels > 0) & (lesion_labels > 0)
    hit_lesions = set(np.unique(lesion_labels[both]).tolist())
    touching = set(np.unique(predicted_labels[both]).tolist())
    predicted = set(np.unique(predicted_labels).tolist()) - {0}
    lesions = set(np.unique(lesion_labels).tolist()) - {0}
    return Detection(
        dice=dice,
        iou=iou,
        lesions=len(lesions),
        hits=len(hit_lesions & lesions),
        false_positives=len(predicted - touching),
        hit_by_label={int(label): label in hit_lesions for label in sorted(lesions)},
    )


def psnr_ssim(clean: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of ``test`` against ``clean``, both in [0, 1]."""
    clean = np.asarray(clean, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    return (
        float(peak_signal_noise_ratio(clean, test, data_range=1.0)),
        float(structural_similarity(clean, test, data_range=1.0)),
    )
