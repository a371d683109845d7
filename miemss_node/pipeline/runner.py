"""Runs the pipeline stages in order on one frame or one dataset, timing each stage.

A failure inside a stage that is not already a :class:`~miemss_node.errors.MiemssError` is wrapped
in :class:`~miemss_node.errors.StageError` naming the stage, with the original as its cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from pydicom.dataset import Dataset

from miemss_node.errors import MiemssError, StageError
from miemss_node.pipeline.base import DecodedImage, EnhancedImage, ImageAnalysis, PipelineSettings
from miemss_node.pipeline.chest import (
    ChestMeasurements,
    is_frontal_chest_candidate,
    judge_chest,
    measure_chest,
    mm_per_pixel,
)
from miemss_node.pipeline.chest_reference import ChestReference, load_chest_reference, reference_anatomy_notes
from miemss_node.pipeline.decode import decode_dataset
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.features import patch_features, working_shape
from miemss_node.pipeline.modality import settings_for_image
from miemss_node.pipeline.models import NO_MODELS, ModelSet
from miemss_node.pipeline.pathology import add_pathology_regions, pathology_sentences
from miemss_node.pipeline.regions import find_regions
from miemss_node.pipeline.report import findings_sentences
from miemss_node.pipeline.score import combined_abnormality, generic_abnormality
from miemss_node.pipeline.vit import VitPatches, attention_map, join_vit_features

if TYPE_CHECKING:
    from miemss_node.pipeline.xrv_models import ChestClassifier

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
    chosen = settings_for_image(settings, image)
    enhanced = _timed("enhance", seconds, lambda: enhance(image, chosen.denoise_method))
    vit_patches = None
    if models.vit is not None:
        vit = models.vit
        vit_patches = _timed("vit", seconds, lambda: vit.patches([enhanced.pixels])[0])
    return _analyse_enhanced(image, enhanced, vit_patches, chosen, models, seconds, caption=caption)


def _analyse_enhanced(
    image: DecodedImage,
    enhanced: EnhancedImage,
    vit_patches: VitPatches | None,
    settings: PipelineSettings,
    models: ModelSet,
    seconds: dict[str, float],
    *,
    caption: bool,
) -> ImageAnalysis:
    """The stages after enhance and the ViT: the chest or the generic analysis, the report, the caption."""
    attention = None if vit_patches is None else attention_map(vit_patches, image.pixels.shape)
    measured = None
    if settings.chest_analysis and is_frontal_chest_candidate(image):
        measured = _timed("anatomy", seconds, lambda: measure_chest(image, enhanced.pixels, models.anatomy))
    notes: tuple[str, ...] = ()
    if measured is not None:
        chest = measured
        reference = _timed("reference", seconds, lambda: load_chest_reference(settings.chest_reference))
        analysis = _timed("regions", seconds, lambda: judged_chest(image, enhanced, chest, reference, settings))
        notes = reference_anatomy_notes(reference, chest.anatomy, image)
        if models.chest is not None:
            classifier = models.chest
            analysis = _timed("classifier", seconds, lambda: with_classifier(analysis, classifier))
            notes += pathology_sentences(analysis.pathologies, classifier.run)
    else:
        analysis = _generic(image, enhanced, settings, vit_patches, seconds)
    findings = _timed("report", seconds, lambda: findings_sentences(analysis)) + notes
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


def judged_chest(
    image: DecodedImage,
    enhanced: EnhancedImage,
    measured: ChestMeasurements,
    reference: ChestReference,
    settings: PipelineSettings,
) -> ImageAnalysis:
    """The chest analysis of a frame whose anatomy was measured: its zones and round densities judged
    against the normal reference with the settings' thresholds (no findings sentences yet)."""
    judged = judge_chest(
        measured,
        image,
        reference,
        threshold=settings.threshold,
        max_focal_regions=settings.max_focal_regions,
        focal_threshold=settings.focal_threshold or None,
    )
    return ImageAnalysis(
        decoded=image,
        enhanced=enhanced,
        features=None,
        scores=None,
        region_map=judged.region_map,
        findings=(),
        abnormality_score=judged.abnormality_score,
        anatomy=measured.anatomy,
        method="chest",
        reference=reference.model_run,
    )


def with_classifier(analysis: ImageAnalysis, classifier: ChestClassifier) -> ImageAnalysis:
    """A chest analysis with the classifier's probabilities, its pathology regions and the combined score.

    See :mod:`~miemss_node.pipeline.pathology` and :func:`~miemss_node.pipeline.score.combined_abnormality`.
    """
    assert analysis.anatomy is not None
    result = classifier.classify(analysis.decoded.pixels)
    region_map = add_pathology_regions(
        analysis.region_map, result.attributions, result.pathologies, analysis.anatomy, analysis.decoded
    )
    return replace(
        analysis,
        region_map=region_map,
        pathologies=result.pathologies,
        abnormality_score=combined_abnormality(analysis.abnormality_score, result.pathologies),
    )


def _generic(
    image: DecodedImage,
    enhanced: EnhancedImage,
    settings: PipelineSettings,
    vit_patches: VitPatches | None,
    seconds: dict[str, float],
) -> ImageAnalysis:
    """The generic analysis: patch features, Isolation Forest scores and regions, objects left out."""
    # scikit-learn takes seconds to import and only this path needs it: a chest film starts without it.
    from miemss_node.pipeline.anomaly import score_patches

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
    ds: Dataset,
    settings: PipelineSettings,
    models: ModelSet = NO_MODELS,
    *,
    max_frames: int | None = None,
    caption: bool = True,
) -> list[ImageAnalysis]:
    """Decode a DICOM image dataset and analyse each of its frames.

    Parameters
    ----------
    ds
        An image dataset (see :func:`~miemss_node.pipeline.decode.is_image_dataset`).
    settings
        The pipeline settings.
    models
        The worker's models. A ViT sees all the frames in one batch; a BLIP captions only the first
        frame (the frames of one image show the same thing, and each caption costs seconds on a CPU).
    max_frames
        Analyse at most this many frames (the first ones); None analyses all.
    caption
        False leaves the caption to the caller (a study captions its key image once).

    Returns
    -------
    list of ImageAnalysis
        One per frame; each ``stage_seconds`` also holds "decode" (the whole dataset's decode time
        divided by the number of frames, as "vit" is the batch's time divided so).

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
    analyses = analyse_frames(frames, settings, models, caption=caption)
    for analysis in analyses:
        analysis.stage_seconds["decode"] = per_frame
    return analyses


def analyse_frames(
    frames: Sequence[DecodedImage], settings: PipelineSettings, models: ModelSet = NO_MODELS, *, caption: bool = True
) -> list[ImageAnalysis]:
    """Analyse frames as :func:`analyse_image` does, with the ViT (when configured) run on them as one batch.

    Only the first frame is captioned, and only when ``caption`` is True.
    """
    seconds = [dict[str, float]() for _ in frames]
    chosen = [settings_for_image(settings, frame) for frame in frames]
    enhanced = [
        _timed("enhance", spent, partial(enhance, frame, choice.denoise_method))
        for frame, choice, spent in zip(frames, chosen, seconds, strict=True)
    ]
    patches: list[VitPatches | None] = [None] * len(frames)
    if models.vit is not None and frames:
        vit = models.vit
        batch: dict[str, float] = {}
        patches = list(_timed("vit", batch, lambda: vit.patches([e.pixels for e in enhanced])))
        for spent in seconds:
            spent["vit"] = batch["vit"] / len(frames)
    return [
        _analyse_enhanced(frame, done, patch, choice, models, spent, caption=caption and index == 0)
        for index, (frame, done, patch, choice, spent) in enumerate(
            zip(frames, enhanced, patches, chosen, seconds, strict=True)
        )
    ]


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
