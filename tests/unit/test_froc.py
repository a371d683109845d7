"""The lesion-insertion scoring behind ``evaluate --insert-nodules``: hits, false positives, the FROC
points and where the misses are."""

from __future__ import annotations

import numpy as np
import pytest

from miemss_node.evaluate.froc import FrocRun, _run, froc_summary
from miemss_node.evaluate.lesions import Lesion
from miemss_node.pipeline.base import DecodedImage, EnhancedImage, ImageAnalysis
from miemss_node.pipeline.regions import draft_region, measure_drafts

SIDE = 100


def _analysis(regions: list[tuple[np.ndarray, float, str]]) -> ImageAnalysis:
    """An analysis whose regions are the given (mask, peak score, kind), without anatomy."""
    labels = np.zeros((SIDE, SIDE), dtype=np.int32)
    heat = np.zeros((SIDE, SIDE), dtype=np.float32)
    drafts = []
    for label, (mask, score, kind) in enumerate(regions, start=1):
        labels[mask & (labels == 0)] = label
        heat[mask] = score
        drafts.append(draft_region(label, "somewhere", kind=kind))
    pixels = np.zeros((SIDE, SIDE), dtype=np.float32)
    decoded = DecodedImage(pixels=pixels, pixel_spacing_mm=(1.0, 1.0), sop_instance_uid="2.25.1", modality="CR")
    return ImageAnalysis(
        decoded=decoded,
        enhanced=EnhancedImage(pixels=pixels, method="none"),
        features=None,
        scores=None,
        region_map=measure_drafts(labels, heat, drafts, (1.0, 1.0)),
        findings=(),
        abnormality_score=0.0,
    )


def _box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def test_a_region_hits_a_lesion_it_overlaps_unless_it_is_much_larger() -> None:
    lesions = np.zeros((SIDE, SIDE), dtype=np.uint16)
    lesions[10:15, 10:15] = 1  # 25 pixels
    lesions[60:65, 60:65] = 2
    inserted = (
        Lesion(label=1, kind="nodule", diameter_mm=12.0, contrast=0.06, center=(12.0, 12.0)),
        Lesion(label=2, kind="nodule", diameter_mm=25.0, contrast=0.06, center=(62.0, 62.0)),
    )
    analysis = _analysis(
        [
            (_box(8, 8, 16, 16), 0.8, "focal"),  # 64 pixels over lesion 1: a hit
            (_box(40, 40, 100, 100), 0.9, "zone"),  # over lesion 2 but 144 times its area: a false positive
            (_box(80, 0, 90, 10), 0.3, "focal"),  # on no lesion: a false positive
        ]
    )

    run = _run("film", 0.06, analysis, lesions, inserted, threshold=0.5)

    assert run.lesion_scores == pytest.approx((0.8, -1.0))
    assert run.focal_lesion_scores == pytest.approx((0.8, -1.0))
    assert sorted(run.false_positive_scores) == pytest.approx([0.3, 0.9])
    assert run.focal_false_positive_scores == pytest.approx((0.3,))
    assert run.lesion_diameters_mm == (12.0, 25.0)
    assert run.lesions_in_found_lungs == (False, False)  # no chest anatomy: nothing is inside found lungs
    assert run.dice is not None and 0.0 < run.dice < 1.0


def _runs() -> list[FrocRun]:
    clean = FrocRun(film="a", contrast=0.0, lesion_scores=(), false_positive_scores=(0.9, 0.4), dice=None)
    lesioned = FrocRun(
        film="a",
        contrast=0.06,
        lesion_scores=(0.95, 0.35, -1.0),
        false_positive_scores=(0.3,),
        focal_lesion_scores=(0.95, -1.0, -1.0),
        focal_false_positive_scores=(),
        dice=0.2,
        lesion_diameters_mm=(12.0, 18.0, 25.0),
        lesions_in_found_lungs=(True, True, False),
    )
    return [clean, lesioned]


def test_sensitivity_is_taken_above_the_allowed_false_positives() -> None:
    (row,) = froc_summary(_runs(), films=1)

    # Two film runs, false positives 0.9, 0.4, 0.3: at 0.5 FP per run one is allowed (beat 0.4), at 1 two
    # (beat 0.3), at 2 all of them; a lesion no region hit is never found.
    assert row["lesions"] == 3
    assert row["sensitivity_at_0.5_fp"] == pytest.approx(1 / 3, abs=1e-3)
    assert row["sensitivity_at_1_fp"] == pytest.approx(2 / 3, abs=1e-3)
    assert row["sensitivity_at_2_fp"] == pytest.approx(2 / 3, abs=1e-3)
    assert row["dice"] == pytest.approx(0.2)


def test_the_summary_says_where_lesions_were_missed() -> None:
    (row,) = froc_summary(_runs(), films=1)

    assert row["lesions_outside_found_lungs"] == 1
    assert row["lesions_without_a_region"] == 1
    assert row["sensitivity_at_1_fp_by_diameter"] == {"10-15 mm": 1.0, "15-20 mm": 1.0, "20-30 mm": 0.0}


def test_round_densities_alone_count_only_their_own_hits() -> None:
    (row,) = froc_summary(_runs(), films=1, focal_only=True)

    # No focal false positives at all: every threshold is open, but two lesions had no round region.
    assert row["sensitivity_at_0.5_fp"] == pytest.approx(1 / 3, abs=1e-3)
    assert row["lesions_without_a_region"] == 2
    assert row["sensitivity_at_1_fp_by_diameter"] == {"10-15 mm": 1.0, "15-20 mm": 0.0, "20-30 mm": 0.0}


def test_runs_from_before_the_breakdown_leave_it_unknown() -> None:
    old = [
        FrocRun(film="a", contrast=0.0, lesion_scores=(), false_positive_scores=(0.5,), dice=None),
        FrocRun(film="a", contrast=0.12, lesion_scores=(0.9,), false_positive_scores=(), dice=0.5),
    ]

    (row,) = froc_summary(old, films=1)

    assert row["sensitivity_at_1_fp"] == 1.0
    assert row["lesions_outside_found_lungs"] is None
    assert row["sensitivity_at_1_fp_by_diameter"] == {"10-15 mm": None, "15-20 mm": None, "20-30 mm": None}
