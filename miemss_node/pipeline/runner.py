"""Runs the pipeline stages in order on one frame or one dataset, timing each stage.

A failure inside a stage that is not already a :class:`~miemss_node.errors.MiemssError` is wrapped
in :class:`~miemss_node.errors.StageError` naming the stage, with the original as its cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pydicom.dataset import Dataset

from miemss_node.errors import MiemssError, StageError
from miemss_node.pipeline.anomaly import score_patches
from miemss_node.pipeline.base import DecodedImage, ImageAnalysis, PipelineSettings
from miemss_node.pipeline.decode import decode_dataset
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.features import patch_features
from miemss_node.pipeline.modality import settings_for_image
from miemss_node.pipeline.models import NO_MODELS, ModelSet
from miemss_node.pipeline.regions import find_regions
from miemss_node.pipeline.report import findings_sentences
from miemss_node.pipeline.vit import attention_map, join_vit_features

logger = logging.getLogger(__name__)

T = TypeVar("T")


def analyse_image(
    image: DecodedImage, settings: PipelineSettings, models: ModelSet = NO_MODELS, *, caption: bool = True
) -> ImageAnalysis:
    """Run enhance, features, anomaly, regions and report on one decoded frame.

    Parameters
    ----------
    image
        The decoded frame.
    settings
        The pipeline settings.
    models
        The worker's models: a ViT adds its features and the attention map ("vit" stage), a BLIP
        captions the enhanced frame ("caption" stage).
    caption
        False skips the BLIP caption (later frames of a multi-frame image).

    Returns
    -------
    ImageAnalysis
        With ``stage_seconds`` for "enhance", "features", "anomaly", "regions" and "report".

    Raises
    ------
    StageError
        If a stage fails; ``stage`` names it and the cause is chained.
    """
    seconds: dict[str, float] = {}
    settings = settings_for_image(settings, image)
    enhanced = _timed("enhance", seconds, lambda: enhance(image, settings.denoise_method))
    features = _timed("features", seconds, lambda: patch_features(enhanced, settings))
    attention = None
    if models.vit is not None:
        vit = models.vit
        patches = _timed("vit", seconds, lambda: vit.patches([enhanced.pixels])[0])
        features = join_vit_features(features, patches)
        attention = attention_map(patches, image.pixels.shape)
    scores = _timed("anomaly", seconds, lambda: score_patches(features, settings))
    region_map = _timed("regions", seconds, lambda: find_regions(scores, features, image, settings))
    findings = _timed("report", seconds, lambda: findings_sentences(region_map, image))
    text = None
    if caption and models.blip is not None:
        blip = models.blip
        text = _timed("caption", seconds, lambda: blip.caption(enhanced.pixels))
    logger.info(
        "analysed frame: %d region(s) in %.2f s",
        len(region_map.regions),
        sum(seconds.values()),
        extra={"action": "pipeline.analysed", "sop_instance_uid": image.sop_instance_uid, "stage_seconds": seconds},
    )
    return ImageAnalysis(
        decoded=image,
        enhanced=enhanced,
        features=features,
        scores=scores,
        region_map=region_map,
        findings=findings,
        stage_seconds=seconds,
        attention=attention,
        caption=text,
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
