"""The offline ``process`` command: run the pipeline on files, with no network and no database."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from miemss_node.encode.context import KINDS
from miemss_node.encode.overlay import render_analysis_overlay
from miemss_node.encode.study import EncodeContext, encode_study
from miemss_node.encode.templates import CaptureTemplate, load_templates
from miemss_node.errors import DecodeError, MiemssError
from miemss_node.pipeline.base import ImageAnalysis, PipelineSettings
from miemss_node.pipeline.caption import study_caption
from miemss_node.pipeline.decode import (
    decode_image_file,
    is_image_dataset,
    read_dicom_file,
)
from miemss_node.pipeline.models import NO_MODELS, ModelSet
from miemss_node.pipeline.report import build_report
from miemss_node.pipeline.runner import analyse_dataset, analyse_image
from miemss_node.pipeline.score import study_abnormality_score

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}

#: zlib level of the PNGs ``process`` writes (Pillow's default is 6).
PNG_COMPRESS_LEVEL = 1
#: Threads that write the PNGs.
PNG_WRITERS = 2


@dataclass(frozen=True, kw_only=True)
class ProcessedFile:
    """What ``process`` wrote for one input file."""

    source: Path
    output_dir: Path
    regions: int
    error: str | None = None


def process_path(
    input_path: Path,
    output_dir: Path,
    settings: PipelineSettings,
    models: ModelSet = NO_MODELS,
    *,
    kinds: frozenset[str] | None = None,
) -> list[ProcessedFile]:
    """Process a file, or every file under a folder, writing one output folder per input.

    ``models`` are loaded once by the caller (``[models]`` of ``--config``) and used for every file;
    ``kinds`` are the DICOM results written for a DICOM input (None: every kind).
    """
    files = sorted(p for p in input_path.rglob("*") if p.is_file()) if input_path.is_dir() else [input_path]
    done = []
    for path in files:
        target = output_dir / path.stem if input_path.is_dir() else output_dir
        try:
            done.append(process_file(path, target, settings, models, kinds=kinds))
        except MiemssError as exc:
            # The caller names the file and the reason (``process`` prints one line per file).
            logger.debug("%s not processed: %s", path.name, exc, extra={"action": "process.skipped"})
            done.append(ProcessedFile(source=path, output_dir=target, regions=0, error=_one_line(exc)))
    return done


def process_file(
    path: Path,
    output_dir: Path,
    settings: PipelineSettings,
    models: ModelSet = NO_MODELS,
    *,
    kinds: frozenset[str] | None = None,
) -> ProcessedFile:
    """Run the pipeline on one PNG/JPEG or DICOM file and write its outputs.

    With a ViT, ``attention.png`` holds its attention rollout; ``report.txt`` names the models
    that ran (or says none did). A DICOM input also gets the DICOM results named by ``kinds``
    (None: every kind, ``encode.context.KINDS``), as ``<KIND>_<SOP Instance UID>.dcm``.

    Raises
    ------
    DecodeError
        When the file is neither a readable raster image nor a DICOM image.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in RASTER_SUFFIXES:
        analyses = [analyse_image(decode_image_file(path), settings, models)]
        source = None
    else:
        source = read_dicom_file(path)
        if not is_image_dataset(source):
            raise DecodeError(f"{path.name} is not an image (SOP class {source.get('SOPClassUID', '?')})")
        analyses = analyse_dataset(source, settings, models)
    report = build_report(analyses, caption=study_caption(analyses), models=models.runs)
    capture = load_templates().capture
    # The PNGs are compressed by threads while the DICOM results are encoded: zlib lets go of the GIL.
    with ThreadPoolExecutor(max_workers=PNG_WRITERS, thread_name_prefix="png-writer") as writers:
        written = []
        for index, analysis in enumerate(analyses, start=1):
            suffix = "" if len(analyses) == 1 else f"_frame{index:03d}"
            for name, array in _images(analysis, capture):
                written.append(writers.submit(_save_png, array, output_dir / f"{name}{suffix}.png"))
        (output_dir / "report.txt").write_text(report.text + "\n", encoding="utf-8")
        (output_dir / "findings.json").write_text(json.dumps(_findings(analyses), indent=2) + "\n", encoding="utf-8")
        if source is not None:
            context = EncodeContext(
                job_key=f"process/{source.get('SOPInstanceUID', path.name)}",
                models=report.models,
                kinds=frozenset(KINDS) if kinds is None else kinds,
            )
            for item in encode_study([source], analyses, report, context):
                item.dataset.save_as(output_dir / f"{item.kind}_{item.dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        for future in written:
            future.result()  # a PNG that could not be written fails the file, as before
    regions = sum(len(a.region_map.regions) for a in analyses)
    return ProcessedFile(source=path, output_dir=output_dir, regions=regions)


def _one_line(exc: BaseException) -> str:
    """The reason on one line (our errors' messages already say what went wrong and where)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _images(analysis: ImageAnalysis, capture: CaptureTemplate) -> list[tuple[str, np.ndarray]]:
    """The pictures of one analysed image, by file name (without suffix)."""
    images = [
        ("enhanced", _to_uint8(analysis.enhanced.pixels)),
        ("heatmap", _to_uint8(analysis.region_map.heatmap)),
        ("mask", np.where(analysis.region_map.labels > 0, 255, 0).astype(np.uint8)),
        ("overlay", render_analysis_overlay(analysis, capture)),
    ]
    if analysis.attention is not None:
        images.append(("attention", _to_uint8(analysis.attention.heatmap)))
    return images


def _save_png(array: np.ndarray, path: Path) -> None:
    # Level 1: the same pixels, a few times faster than Pillow's default level 6 on a 2k film.
    Image.fromarray(array).save(path, compress_level=PNG_COMPRESS_LEVEL)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def _findings(analyses: list[ImageAnalysis]) -> dict[str, object]:
    """``findings.json``: the study's abnormality score, and per image its measures and regions."""
    return {
        "abnormality_score": round(study_abnormality_score(analyses), 4),
        "images": [_image_findings(analysis) for analysis in analyses],
    }


def _image_findings(a: ImageAnalysis) -> dict[str, object]:
    return {
        "sop_instance_uid": a.decoded.sop_instance_uid,
        "frame_number": a.decoded.frame_number,
        "rows": int(a.decoded.pixels.shape[0]),
        "columns": int(a.decoded.pixels.shape[1]),
        "pixel_spacing_mm": a.decoded.pixel_spacing_mm,
        "abnormality_score": round(float(a.abnormality_score), 4),
        "devices": [] if a.anatomy is None else list(a.anatomy.devices),
        "stage_seconds": {k: round(v, 4) for k, v in a.stage_seconds.items()},
        "findings": list(a.findings),
        "caption": a.caption,
        "anatomy": None if a.anatomy is None else a.anatomy.method,
        "pathologies": [
            {"label": p.label, "probability": round(p.probability, 4), "threshold": p.threshold, "reported": p.reported}
            for p in a.pathologies
        ],
        "regions": [
            {
                "label": r.label,
                "location": r.location,
                "side": r.side,
                "zone": r.zone,
                "kind": r.kind,
                "pathology": r.pathology,
                "area_px": r.area_px,
                "area_mm2": r.area_mm2,
                "centroid": list(r.centroid),
                "bbox": list(r.bbox),
                "mean_score": r.mean_score,
                "max_score": r.max_score,
            }
            for r in a.region_map.regions
        ],
    }
