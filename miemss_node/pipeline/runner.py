"""Runs the pipeline stages in order on one frame or one dataset, timing each stage.

A failure inside a stage that is not already a :class:`~miemss_node.errors.MiemssError` is wrapped
in :class:`~miemss_node.errors.StageError` naming the stage, with the original as its cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from pydicom.dataset import Dataset

from miemss_node.errors import MiemssError, StageError
from miemss_node.pipeline.anomaly import score_patches
from miemss_node.pipeline.base import DecodedImage, EnhancedImage, ImageAnalysis, PipelineSettings
from miemss_node.pipeline.chest import is_frontal_chest_candidate, judge_chest, measure_chest, mm_per_pixel
from miemss_node.pipeline.chest_reference import load_chest_reference
from miemss_node.pipeline.decode import decode_dataset
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.features import patch_features, working_shape
from miemss_node.pipeline.modality import settings_for_image
from miemss_node.pipeline.models import NO_MODELS, ModelSet
from miemss_node.pipeline.regions import find_regions
from miemss_node.pipeline.report import findings_sentences
from miemss_node.pipeline.score import generic_abnormality
from miemss_node.pipeline.vit import VitPatches, attention_map, join_vit_features

logger = logging.getLogger(__name__)

T = TypeVar("T")


def analyse_image(
    image: DecodedImage, settings: PipelineSettings, models: ModelSet = NO_MODELS, *, caption: bool = True
) -> ImageAnalysis:
    """Run enhance, then the chest or the generic analysis, then the report, on one decoded frame.

    A frame that may be a frontal chest film (its View Position and Body Part do not say otherwise)
    and shows two lungs side by side gets the anatomy-aware chest analysis
    (:mod:`~miemss_node.pipeline.chest`); any other frame the generic patch analysis (HOG features and
    an Isolation Forest, with what is not anatomy left out).

    Parameters
    ----------
    image
        The decoded frame.
    settings
        The pipeline settings.
    models
        The worker's models: a ViT adds its attention map ("vit" stage) and, on the generic path, its
        patch features; a BLIP captions the enhanced frame ("caption" stage).
    caption
        False skips the BLIP caption (later frames of a multi-frame image).

    Returns
    -------
    ImageAnalysis
        With ``stage_seconds`` for "enhance", "anatomy" and "regions" (chest) or "features",
        "anomaly" and "regions" (generic), and "report".

    Raises
    ------
    StageError
        If a stage fails; ``stage`` names it and the cause is chained.
    """
    seconds: dict[str, float] = {}
    settings = settings_for_image(settings, image)
    enhanced = _timed("enhance", seconds, lambda: enhance(image, settings.denoise_method))
    attention = None
    vit_patches = None
    if models.vit is not None:
        vit = models.vit
        vit_patches = _timed("vit", seconds, lambda: vit.patches([enhanced.pixels])[0])
        attention = attention_map(vit_patches, image.pixels.shape)
    measured = None
    if settings.chest_analysis and is_frontal_chest_candidate(image):
        measured = _timed("anatomy", seconds, lambda: measure_chest(image, enhanced.pixels))
    if measured is not None:
        chest = measured
        reference = _timed("reference", seconds, lambda: load_chest_reference(settings.chest_reference))
        judged = _timed(
            "regions",
            seconds,
            lambda: judge_chest(
                chest, image, reference, threshold=settings.threshold, max_focal_regions=settings.max_focal_regions
            ),
        )
        analysis = ImageAnalysis(
            decoded=image,
            enhanced=enhanced,
            features=None,
            scores=None,
            region_map=judged.region_map,
            findings=(),
            abnormality_score=judged.abnormality_score,
            anatomy=chest.anatomy,
            method="chest",
            reference=reference.model_run,
        )
    else:
        analysis = _generic(image, enhanced, settings, vit_patches, seconds)
    findings = _timed("report", seconds, lambda: findings_sentences(analysis))
    text = None
    if caption and models.blip is not None:
        blip = models.blip
        text = _timed("caption", seconds, lambda: blip.caption(enhanced.pixels))
    logger.info(
        "analysed frame (%s): %d region(s), abnormality %.2f, in %.2f s",
        analysis.method,
        len(analysis.region_map.regions),
        analysis.abnormality_score,
        sum(seconds.values()),
        extra={"action": "pipeline.analysed", "sop_instance_uid": image.sop_instance_uid, "stage_seconds": seconds},
    )
    return replace(analysis, findings=findings, stage_seconds=seconds, attention=attention, caption=text)


def _generic(
    image: DecodedImage,
    enhanced: EnhancedImage,
    settings: PipelineSettings,
    vit_patches: VitPatches | None,
    seconds: dict[str, float],
) -> ImageAnalysis:
    """The generic analysis: patch features, Isolation Forest scores and regions, objects left out."""
    mm = mm_per_pixel(image, working_shape(image.pixels.shape[:2], settings.analysis_max_side)[0])
    features = _timed("features", seconds, lambda: patch_features(enhanced, settings, mm_per_px=mm))
    if vit_patches is not None:
        features = join_vit_features(features, vit_patches)
    scores = _timed("anomaly", seconds, lambda: score_patches(features, settings))
    region_map = _timed("regions", seconds, lambda: find_regions(scores, features, image, settings))
    return ImageAnalysis(
        decoded=image,
        enhanced=enhanced,
        features=features,
        scores=scores,
        region_map=region_map,
        findings=(),
        abnormality_score=generic_abnormality(scores, region_map),
        method="generic",
        reference=scores.model,
    )


def analyse_dataset(
    ds: Dataset, settings: PipelineSettings, models: ModelSet = NO_MODELS, *, max_frames: int | None = None
) -> list[ImageAnalysis]:
    """Decode a DICOM image dataset and analyse each of its frames.

    Parameters
    ----------
    ds
        An image dataset (see :func:`~miemss_node.pipeline.decode.is_image_dataset`).
    settings
        The pipeline settings.
    models
        The worker's models; a BLIP captions only the first frame (the frames of one image show
        the same thing, and each caption costs seconds on a CPU).
    max_frames
        Analyse at most this many frames (the first ones); None analyses all.

    Returns
    -------
    list of ImageAnalysis
        One per frame; each ``stage_seconds`` also holds "decode" (the whole dataset's decode time
        divided by the number of frames).

    Raises
    ------
    DecodeError
        If the dataset cannot be decoded.
    StageError
        If a later stage fails.
    """
    decode_seconds: dict[str, float] = {}
    frames = _timed("decode", decode_seconds, lambda: decode_dataset(ds, max_frames))
    per_frame = decode_seconds["decode"] / max(len(frames), 1)
    analyses = []
    for index, frame in enumerate(frames):
        analysis = analyse_image(frame, settings, models, caption=index == 0)
        analysis.stage_seconds["decode"] = per_frame
        analyses.append(analysis)
    return analyses


def _timed(stage: str, seconds: dict[str, float], run: Callable[[], T]) -> T:
    """Run one stage, record its duration, and wrap unexpected failures in StageError."""
    start = time.perf_counter()
    try:
        return run()
    except MiemssError:
        raise
    except Exception as exc:
        raise StageError(stage, f"{type(exc).__name__}: {exc}") from exc
    finally:
        seconds[stage] = time.perf_counter() - start
