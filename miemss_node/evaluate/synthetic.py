"""Synthetic-lesion evaluation: known lesions in real radiographs, found or missed by each detector.

For each image, lesion kind, contrast and trial, lesions with known masks are added
(:mod:`~miemss_node.evaluate.lesions`) inside the area the pipeline looks at (the lung fields of a
chest film, else the field of view). The enhance and features stages run once per lesioned image;
then each detector scores the patches and the regions stage makes its mask:

* ``per_image``: the Isolation Forest fitted on the image itself (the default pipeline);
* ``reference``: the Isolation Forest of a reference model of normal films (given, fitted on a
  folder, or fitted leave-one-out on the *other* evaluation images before any lesion is added);
* ``zscore``: the naive baseline, each patch's mean intensity as a z-score.

The same images without lesions measure false-positive regions on normal films (contrast 0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from miemss_node.errors import DecodeError
from miemss_node.evaluate.lesions import KINDS, insert_lesions
from miemss_node.evaluate.metrics import match, psnr_ssim
from miemss_node.pipeline.anomaly import intensity_zscore, score_against_reference, score_patches
from miemss_node.pipeline.base import AnomalyScores, DecodedImage, EnhancedImage, PatchFeatures, PipelineSettings
from miemss_node.pipeline.chest import ASSUMED_FIELD_MM
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.features import analysis_mask, patch_features, to_working
from miemss_node.pipeline.modality import settings_for_image
from miemss_node.pipeline.reference import ReferenceModel, fit_on_vectors
from miemss_node.pipeline.regions import find_regions

logger = logging.getLogger(__name__)

#: The detectors compared, in the order of the tables.
DETECTORS = ("per_image", "reference", "zscore")


#: Poisson gain and Gaussian sigma of the noise added to measure the enhancement (display units).
ENHANCE_NOISE = (500.0, 0.01)

#: Lesion size bins (mm) for the sensitivity by size.
SIZE_BINS = ((5.0, 10.0), (10.0, 20.0), (20.0, 30.0))

#: The fraction of an image's patches that counts as "top" for the threshold-free ranking measure.
TOP_FRACTION = 0.05

#: Picture files (no DICOM header) among the inputs.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True, kw_only=True)
class EvaluationImage:
    """A real radiograph to insert lesions into."""

    name: str
    image: DecodedImage
    #: True when the pixel spacing was not in the file and :data:`ASSUMED_FIELD_MM` was used.
    spacing_assumed: bool


@dataclass(frozen=True, kw_only=True)
class SyntheticPlan:
    """What to insert and how often."""

    kinds: tuple[str, ...] = KINDS
    #: Peak added display value (0..1) of the lesions.
    contrasts: tuple[float, ...] = (0.03, 0.06, 0.12)
    lesions_per_image: int = 3
    diameter_range_mm: tuple[float, float] = (5.0, 30.0)
    trials: int = 2
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One detector on one (lesioned or clean) image."""

    image: str
    detector: str
    #: "none" for the image without lesions.
    kind: str
    contrast: float
    trial: int
    dice: float | None
    iou: float | None
    lesions: int
    hits: int
    false_positives: int
    #: (diameter mm, hit) per lesion.
    lesion_hits: tuple[tuple[float, bool], ...] = ()
    #: Per lesion: whether its highest-scoring patch is among the image's top :data:`TOP_FRACTION` of
    #: valid patches; a threshold-free measure of how well the scores rank lesions.
    lesion_top: tuple[bool, ...] = ()


@dataclass(frozen=True, kw_only=True)
class EnhanceRecord:
    """PSNR/SSIM of the enhancement against the clean image, with the noisy input beside it."""

    image: str
    method: str
    noisy_psnr_db: float
    noisy_ssim: float
    enhanced_psnr_db: float
    enhanced_ssim: float


@dataclass(kw_only=True)
class SyntheticResult:
    """Everything an evaluation measured."""

    runs: list[RunRecord] = field(default_factory=list)
    enhancement: list[EnhanceRecord] = field(default_factory=list)
    images: list[dict[str, object]] = field(default_factory=list)
    #: How the reference model was obtained ("given: NAME", "fitted on DIR", "leave-one-out", "none").
    reference: str = "none"
    seconds: float = 0.0


def load_images(
    paths: Sequence[Path], picture_modality: str = "CR", *, assume_spacing: bool = True
) -> list[EvaluationImage]:
    """Decode the first frame of each DICOM or picture file; files that fail are skipped (logged).

    Pictures get ``picture_modality`` (so the per-Modality settings apply) and, with ``assume_spacing``,
    like any image without a pixel spacing, a spacing of :data:`ASSUMED_FIELD_MM` over the long side.
    """
    from miemss_node.pipeline.decode import decode_dataset, decode_image_file, read_dicom_file

    images = []
    for path in paths:
        try:
            if path.suffix.lower() in PICTURE_SUFFIXES:
                image = replace(decode_image_file(path), modality=picture_modality)
            else:
                image = decode_dataset(read_dicom_file(path), max_frames=1)[0]
        except DecodeError as exc:
            logger.warning("%s skipped: %s", path.name, exc, extra={"action": "evaluate.skipped"})
            continue
        assumed = image.pixel_spacing_mm is None and assume_spacing
        if assumed:
            spacing = ASSUMED_FIELD_MM / max(image.pixels.shape)
            image = replace(image, pixel_spacing_mm=(spacing, spacing))
        images.append(EvaluationImage(name=path.name, image=image, spacing_assumed=assumed))
    return images


ReferenceFor = Callable[[int], ReferenceModel | None]


def leave_one_out_references(images: Sequence[EvaluationImage], settings: PipelineSettings) -> ReferenceFor:
    """Reference models that leave out the image being evaluated (None with fewer than 2 images)."""
    vectors = [_clean_vectors(item.image, settings) for item in images]

    def reference_for(index: int) -> ReferenceModel | None:
        others = [v for i, v in enumerate(vectors) if i != index]
        if not others:
            return None
        return fit_on_vectors(np.concatenate(others), settings, name="leave-one-out", n_images=len(others))

    return reference_for


def evaluate_synthetic(
    images: Sequence[EvaluationImage],
    settings: PipelineSettings,
    plan: SyntheticPlan,
    reference_for: ReferenceFor | None = None,
    *,
    reference_label: str = "none",
    progress: Callable[[str], None] | None = None,
) -> SyntheticResult:
    """Insert lesions into every image, run every detector, and record what each found.

    Parameters
    ----------
    images
        Real radiographs (see :func:`load_images`).
    settings
        The pipeline settings; each image uses its Modality's override.
    plan
        Lesion kinds, contrasts, counts, sizes, trials and seed.
    reference_for
        The reference model for the image of a given index, or None to skip the reference detector.
    reference_label
        How the reference was obtained, for the report.
    progress
        Called with a line per image, for a terminal.

    Returns
    -------
    SyntheticResult
    """
    start = time.perf_counter()
    result = SyntheticResult(reference=reference_label)
    for index, item in enumerate(images):
        chosen = settings_for_image(settings, item.image)
        reference = reference_for(index) if reference_for is not None else None
        rng = np.random.default_rng([plan.seed, index])
        placement = _placement(item.image.pixels, chosen)
        spacing = min(item.image.pixel_spacing_mm or (1.0, 1.0))
        result.images.append(
            {
                "name": item.name,
                "shape": list(item.image.pixels.shape),
                "pixel_spacing_mm": spacing,
                "spacing_assumed": item.spacing_assumed,
                "modality": item.image.modality,
                "patch_size_px": chosen.patch_size,
                "placement_fraction": round(float(placement.mean()), 4),
            }
        )
        lesion_free = np.zeros(item.image.pixels.shape, dtype=np.uint16)
        result.runs += _run_detectors(item, item.image, lesion_free, (), chosen, reference, "none", 0.0, 0)
        for kind in plan.kinds:
            for contrast in plan.contrasts:
                for trial in range(plan.trials):
                    pixels, labels, lesions = insert_lesions(
                        item.image.pixels,
                        placement,
                        spacing,
                        kind=kind,
                        contrast=contrast,
                        count=plan.lesions_per_image,
                        diameter_range_mm=plan.diameter_range_mm,
                        rng=rng,
                    )
                    sizes = tuple(lesion.diameter_mm for lesion in lesions)
                    lesioned = replace(item.image, pixels=pixels)
                    result.runs += _run_detectors(item, lesioned, labels, sizes, chosen, reference, kind, contrast, trial)
        result.enhancement.append(_enhancement(item, chosen, plan.seed))
        if progress is not None:
            progress(f"{item.name}: {len(plan.kinds) * len(plan.contrasts) * plan.trials + 1} runs")
    result.seconds = time.perf_counter() - start
    return result


def _placement(pixels: np.ndarray, settings: PipelineSettings) -> np.ndarray:
    """Where lesions go: the analysed area (lungs or field of view) at source resolution."""
    work = to_working(pixels, settings.analysis_max_side)
    mask = analysis_mask(work, lungs=settings.lung_field)
    rows = np.minimum((np.arange(pixels.shape[0]) * work.shape[0]) // pixels.shape[0], work.shape[0] - 1)
    cols = np.minimum((np.arange(pixels.shape[1]) * work.shape[1]) // pixels.shape[1], work.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def _run_detectors(
    item: EvaluationImage,
    image: DecodedImage,
    lesion_labels: np.ndarray,
    sizes: tuple[float, ...],
    settings: PipelineSettings,
    reference: ReferenceModel | None,
    kind: str,
    contrast: float,
    trial: int,
) -> list[RunRecord]:
    enhanced = enhance(image, settings.denoise_method)
    features = patch_features(enhanced, settings)
    records = []
    for detector in DETECTORS:
        scores = _scores(detector, enhanced, features, settings, reference)
        if scores is None:
            continue
        region_map = find_regions(scores, features, image, settings)
        detection = match(region_map.labels, lesion_labels)
        top = _lesions_in_top(scores.scores, features, lesion_labels)
        records.append(
            RunRecord(
                image=item.name,
                detector=detector,
                kind=kind,
                contrast=contrast,
                trial=trial,
                dice=detection.dice,
                iou=detection.iou,
                lesions=detection.lesions,
                hits=detection.hits,
                false_positives=detection.false_positives,
                lesion_hits=tuple(
                    (sizes[label - 1], hit) for label, hit in detection.hit_by_label.items() if label <= len(sizes)
                ),
                lesion_top=top,
            )
        )
    return records


def _lesions_in_top(grid_scores: np.ndarray, features: PatchFeatures, lesion_labels: np.ndarray) -> tuple[bool, ...]:
    """Per lesion: is the best patch covering it within the top TOP_FRACTION of the valid patches?"""
    valid = np.ones(features.grid_shape, dtype=bool) if features.valid is None else features.valid
    if not lesion_labels.any() or not valid.any():
        return ()
    rows = np.minimum((np.arange(features.grid_shape[0]) + 0.5) * features.patch_size_px[0], lesion_labels.shape[0] - 1)
    cols = np.minimum((np.arange(features.grid_shape[1]) + 0.5) * features.patch_size_px[1], lesion_labels.shape[1] - 1)
    centre_labels = lesion_labels[np.ix_(rows.astype(np.intp), cols.astype(np.intp))]
    cutoff = float(np.quantile(grid_scores[valid], 1.0 - TOP_FRACTION))
    result = []
    for label in sorted(set(np.unique(lesion_labels).tolist()) - {0}):
        covering = (centre_labels == label) & valid
        # A lesion smaller than a patch may cover no patch centre: use the patch of its centroid.
        if not covering.any():
            where = np.argwhere(lesion_labels == label).mean(axis=0)
            index = (
                min(int(where[0] // features.patch_size_px[0]), features.grid_shape[0] - 1),
                min(int(where[1] // features.patch_size_px[1]), features.grid_shape[1] - 1),
            )
            covering = np.zeros(features.grid_shape, dtype=bool)
            covering[index] = bool(valid[index])
        best = float(grid_scores[covering].max()) if covering.any() else 0.0
        result.append(best > 0.0 and best >= cutoff)
    return tuple(result)


def _scores(
    detector: str,
    enhanced: EnhancedImage,
    features: PatchFeatures,
    settings: PipelineSettings,
    reference: ReferenceModel | None,
) -> AnomalyScores | None:
    if detector == "per_image":
        return score_patches(features, replace(settings, reference_model=""))
    if detector == "reference":
        return None if reference is None else score_against_reference(features, reference, settings)
    return intensity_zscore(enhanced, features, settings)


def _clean_vectors(image: DecodedImage, settings: PipelineSettings) -> np.ndarray:
    chosen = settings_for_image(settings, image)
    features = patch_features(enhance(image, chosen.denoise_method), chosen)
    valid = np.ones(features.vectors.shape[0], dtype=bool) if features.valid is None else features.valid.ravel()
    return features.vectors[valid & np.isfinite(features.vectors).all(axis=1)]


def _enhancement(item: EvaluationImage, settings: PipelineSettings, seed: int) -> EnhanceRecord:
    """Add Poisson-Gaussian noise to the image and measure how much the enhance stage recovers."""
    gain, sigma = ENHANCE_NOISE
    rng = np.random.default_rng([seed, 7])
    clean = item.image.pixels
    noisy = np.clip(rng.poisson(clean * gain) / gain + rng.normal(0.0, sigma, clean.shape), 0.0, 1.0)
    enhanced = enhance(replace(item.image, pixels=noisy.astype(np.float32)), settings.denoise_method).pixels
    noisy_psnr, noisy_ssim = psnr_ssim(clean, noisy)
    psnr, ssim = psnr_ssim(clean, enhanced)
    return EnhanceRecord(
        image=item.name,
        method=settings.denoise_method,
        noisy_psnr_db=noisy_psnr,
        noisy_ssim=noisy_ssim,
        enhanced_psnr_db=psnr,
        enhanced_ssim=ssim,
    )


def summarise(runs: Sequence[RunRecord]) -> list[dict[str, object]]:
    """Aggregate runs by detector, lesion kind and contrast: mean Dice/IoU, sensitivity, FP/image."""
    groups: dict[tuple[str, str, float], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.detector, run.kind, run.contrast), []).append(run)
    rows = []
    for (detector, kind, contrast), members in groups.items():
        dice = [r.dice for r in members if r.dice is not None and r.lesions > 0]
        iou = [r.iou for r in members if r.iou is not None and r.lesions > 0]
        lesions = sum(r.lesions for r in members)
        by_size = {}
        for low, high in SIZE_BINS:
            last = high == SIZE_BINS[-1][1]
            hits = [hit for r in members for size, hit in r.lesion_hits if low <= size < high or (last and size == high)]
            by_size[f"{low:.0f}-{high:.0f}mm"] = None if not hits else sum(hits) / len(hits)
        rows.append(
            {
                "detector": detector,
                "kind": kind,
                "contrast": contrast,
                "images": len(members),
                "lesions": lesions,
                "dice": float(np.mean(dice)) if dice else None,
                "iou": float(np.mean(iou)) if iou else None,
                "sensitivity": sum(r.hits for r in members) / lesions if lesions else None,
                "fp_per_image": float(np.mean([r.false_positives for r in members])),
                "top5_rate": _rate([top for r in members for top in r.lesion_top]),
                "sensitivity_by_size": by_size,
            }
        )
    order = {name: i for i, name in enumerate(DETECTORS)}
    rows.sort(key=lambda row: (*group_key(row), order.get(str(row["detector"]), 99)))
    return rows


def _rate(flags: list[bool]) -> float | None:
    return None if not flags else sum(flags) / len(flags)


def group_key(row: dict[str, object]) -> tuple[bool, str, float]:
    """Sort key of a summary row's (kind, contrast): films without lesions first."""
    kind, contrast = str(row["kind"]), row["contrast"]
    return kind != "none", kind, float(contrast)  # type: ignore[arg-type]
