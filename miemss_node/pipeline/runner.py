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
from miemss_node.pipeline.regions import find_regions
from miemss_node.pipeline.report import findings_sentences

logger = logging.getLogger(__name__)

T = TypeVar("T")


def analyse_image(image: DecodedImage, settings: PipelineSettings) -> ImageAnalysis:
    """Run enhance, features, anomaly, regions and report on one decoded frame.

    Parameters
    ----------
    image
        The decoded frame.
    settings
        The pipeline settings.

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
    enhanced = _timed("enhance", seconds, lambda: enhance(image, settings.denoise_method))
    features = _timed("features", seconds, lambda: patch_features(enhanced, settings))
    scores = _timed("anomaly", seconds, lambda: score_patches(features, settings))
    region_map = _timed("regions", seconds, lambda: find_regions(scores, features, image, settings))
    findings = _timed("report", seconds, lambda: findings_sentences(region_map, image))
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
    )


def analyse_dataset(ds: Dataset, settings: PipelineSettings) -> list[ImageAnalysis]:
    """Decode a DICOM image dataset and analyse each of its frames.

    Parameters
    ----------
    ds
        An image dataset (see :func:`~miemss_node.pipeline.decode.is_image_dataset`).
    settings
        The pipeline settings.

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
    frames = _timed("decode", decode_seconds, lambda: decode_dataset(ds))
    per_frame = decode_seconds["decode"] / max(len(frames), 1)
    analyses = []
    for frame in frames:
        analysis = analyse_image(frame, settings)
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
