"""Build realistic :class:`ImageAnalysis` objects from real DICOM images, for encoder tests.

The pixels are decoded here, simply (pydicom's ``pixel_array``, min-max to [0, 1], MONOCHROME1
inverted), so the encoder tests do not depend on the pipeline's decode stage. The label image holds
0, 1 or 2 regions (a rectangle, then an ellipse) with a heatmap that peaks inside them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from miemss_node.pipeline.base import (
    Anatomy,
    AnomalyScores,
    DecodedImage,
    EnhancedImage,
    ImageAnalysis,
    ModelRun,
    PatchFeatures,
    Region,
    RegionMap,
    Report,
)


def read_source(path: Path | str) -> Dataset:
    """Read a source image, also a raw dataset without File Meta (read as Implicit VR LE)."""
    dataset = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in dataset.file_meta:
        # No File Meta: pydicom guessed the encoding; record it so the pixels can be decoded.
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return dataset


def _pixel_array(dataset: Dataset) -> np.ndarray:
    try:
        return np.asarray(dataset.pixel_array)
    except (RuntimeError, ValueError, NotImplementedError):
        # WG04 RG3_JPLY: an encoder bug (SOS Se=0) that pylibjpeg and GDCM refuse; dcmdjpeg
        # decodes it, so the encoders can still be exercised on that header.
        dcmdjpeg = shutil.which("dcmdjpeg")
        if dcmdjpeg is None or dataset.filename is None:
            raise
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "decoded.dcm"
            subprocess.run([dcmdjpeg, str(dataset.filename), str(out)], check=True, capture_output=True)
            return np.asarray(pydicom.dcmread(out).pixel_array)


def decode_frame(dataset: Dataset, frame_number: int | None = None) -> np.ndarray:
    """Return one frame as float32 in [0, 1], display-oriented (MONOCHROME1 inverted)."""
    pixels = _pixel_array(dataset).astype(np.float32)
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[(frame_number or 1) - 1]
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=-1)
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels.astype(np.float32)


def pixel_spacing_mm(dataset: Dataset) -> tuple[float, float] | None:
    """Pixel Spacing, else Imager Pixel Spacing; None when absent or not positive (WG04: 0)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = dataset.get(keyword)
        if values is not None and len(values) == 2:
            row, col = float(values[0]), float(values[1])
            if row > 0 and col > 0:
                return (row, col)
    return None


def region_labels(shape: tuple[int, int], n_regions: int) -> np.ndarray:
    """A uint16 label image with ``n_regions`` (0, 1 or 2) regions: a rectangle, an ellipse."""
    if n_regions not in (0, 1, 2):
        raise ValueError(f"n_regions must be 0, 1 or 2, got {n_regions}")
    rows, cols = shape
    labels = np.zeros(shape, dtype=np.uint16)
    if n_regions >= 1:
        top, left = rows // 5, cols // 6
        labels[top : top + max(2, rows // 6), left : left + max(2, cols // 5)] = 1
    if n_regions == 2:
        centre_r, centre_c = rows * 0.65, cols * 0.6
        radius_r, radius_c = max(1.5, rows / 9), max(1.5, cols / 7)
        grid_r, grid_c = np.ogrid[:rows, :cols]
        inside = ((grid_r - centre_r) / radius_r) ** 2 + ((grid_c - centre_c) / radius_c) ** 2 <= 1.0
        labels[inside & (labels == 0)] = 2
    return labels


def _heatmap(labels: np.ndarray) -> np.ndarray:
    rows, cols = labels.shape
    grid_r, grid_c = np.mgrid[:rows, :cols].astype(np.float32)
    background = 0.1 + 0.3 * (grid_r / max(rows - 1, 1)) * (grid_c / max(cols - 1, 1))
    heat = background.astype(np.float32)
    heat[labels == 1] = 0.8
    heat[labels == 2] = 0.9
    return heat


def _regions(
    labels: np.ndarray,
    heatmap: np.ndarray,
    spacing: tuple[float, float] | None,
    *,
    side: str | None = None,
    zone: str | None = None,
    kind: str = "patch",
) -> tuple[Region, ...]:
    regions = []
    for label in range(1, int(labels.max()) + 1):
        mask = labels == label
        rows, cols = np.nonzero(mask)
        area_px = int(mask.sum())
        regions.append(
            Region(
                label=label,
                area_px=area_px,
                area_mm2=None if spacing is None else area_px * spacing[0] * spacing[1],
                centroid=(float(rows.mean()), float(cols.mean())),
                bbox=(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1),
                mean_score=float(heatmap[mask].mean()),
                max_score=float(heatmap[mask].max()),
                location="upper left" if label == 1 else "lower right",
                side=side,
                zone=zone,
                kind=kind,
            )
        )
    return tuple(regions)


def make_anatomy(
    shape: tuple[int, int], *, devices: tuple[str, ...] = (), chest_frontal: bool = True
) -> Anatomy:
    """An :class:`Anatomy` of a frame of ``shape`` whose masks are empty, naming ``devices``."""
    working = (max(1, shape[0] // 8), max(1, shape[1] // 8))
    empty = np.zeros(working, dtype=bool)
    return Anatomy(
        shape=working,
        source_shape=shape,
        view="PA" if chest_frontal else "",
        chest_frontal=chest_frontal,
        body=np.ones(working, dtype=bool),
        hemithoraces=np.zeros(working, dtype=np.uint8),
        mediastinum=empty,
        midline_col=working[1] / 2,
        not_anatomy=empty,
        devices=devices,
        patient_right_on_image_left=True if chest_frontal else None,
    )


def make_analysis(
    dataset: Dataset,
    *,
    n_regions: int = 2,
    frame_number: int | None = None,
    abnormality_score: float = 0.0,
    side: str | None = None,
    zone: str | None = None,
    kind: str = "patch",
    anatomy: Anatomy | None = None,
) -> ImageAnalysis:
    """Build the analysis of one image (or frame) of ``dataset`` with ``n_regions`` regions.

    Parameters
    ----------
    dataset
        A real source image, as read.
    n_regions
        0, 1 or 2.
    frame_number
        1-based frame of a multi-frame image; None for a single-frame image.
    abnormality_score
        The frame's abnormality score, 0..1.
    side, zone, kind
        Given to every region (``Region.side``, ``.zone``, ``.kind``).
    anatomy
        The frame's anatomy (see :func:`make_anatomy`), or None.
    """
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1 and frame_number is None:
        frame_number = 1
    pixels = decode_frame(dataset, frame_number)
    spacing = pixel_spacing_mm(dataset)
    labels = region_labels(pixels.shape, n_regions)
    heatmap = _heatmap(labels)
    regions = _regions(labels, heatmap, spacing, side=side, zone=zone, kind=kind)
    findings = tuple(
        f"Anomalous region {region.label} in the {region.location} "
        + (f"({region.area_mm2:.0f} mm²)." if region.area_mm2 is not None else f"({region.area_px} pixels).")
        for region in regions
    )
    return ImageAnalysis(
        decoded=DecodedImage(
            pixels=pixels,
            pixel_spacing_mm=spacing,
            sop_instance_uid=str(dataset.SOPInstanceUID),
            frame_number=frame_number,
            modality=str(dataset.get("Modality", "OT")),
        ),
        enhanced=EnhancedImage(pixels=pixels, method="none"),
        features=PatchFeatures(
            vectors=np.zeros((1, 1), dtype=np.float32),
            grid_shape=(1, 1),
            patch_size_px=(float(pixels.shape[0]), float(pixels.shape[1])),
            extractors=("hog",),
        ),
        scores=AnomalyScores(scores=np.zeros((1, 1), dtype=np.float32), method="isolation_forest"),
        region_map=RegionMap(heatmap=heatmap, labels=labels, regions=regions),
        findings=findings,
        abnormality_score=abnormality_score,
        anatomy=anatomy,
    )


def make_report(
    analyses: list[ImageAnalysis], *, caption: str | None = None, models: tuple[ModelRun, ...] = ()
) -> Report:
    """A report whose text lists the findings of ``analyses``."""
    findings = tuple(finding for analysis in analyses for finding in analysis.findings)
    summary = " ".join(findings) if findings else "No anomalous region was found."
    text = f"AI anomaly screening (not for diagnosis). {summary}"
    return Report(text=text, caption=caption, findings=findings, models=models)
