"""Abnormality scores of a frame and of a study, 0 (looks like a normal film) to 1.

A study is as abnormal as its most abnormal image: one abnormal view is enough for a radiologist to
look, whatever the other views show.
"""

from __future__ import annotations

from collections.abc import Sequence

from miemss_node.pipeline.base import ImageAnalysis


def study_abnormality_score(analyses: Sequence[ImageAnalysis]) -> float:
    """The study's abnormality score: the highest of its frames' scores, 0.0 when none was analysed."""
    return max((float(analysis.abnormality_score) for analysis in analyses), default=0.0)
