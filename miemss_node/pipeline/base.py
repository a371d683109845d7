"""Typed inputs and outputs of the pipeline stages.

Every stage is a plain function (or a small class) taking and returning these value objects, so each
can be tested and benchmarked alone. The worker and the encoders rely on these names: change them
together with ``encode/`` and ``worker.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the config (and so ``--help``) loads without numpy
    import numpy as np


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """Tunable parameters of the classical pipeline (``[pipeline]`` in config.toml)."""

    #: Longest side, in pixels, of the working image used for features and scores.
    analysis_max_side: int = 512
    #: Patch size, in pixels of the working image, for HOG features and anomaly scores.
    patch_size: int = 16
    #: Patch size in mm; when > 0 and the pixel spacing is known it replaces ``patch_size``.
    patch_size_mm: float = 0.0
    #: Denoising method of the enhance stage (a name of ``enhance.METHODS``).
    denoise_method: str = "vst_wavelet"
    #: Isolation Forest trees.
    n_estimators: int = 100
    #: Heatmap value (0..1) above which a pixel belongs to the mask.
    threshold: float = 0.5
    #: Regions smaller than this many mm² (or pixels, when the spacing is unknown) are dropped.
    min_region_area_mm2: float = 25.0
    #: Seed for the Isolation Forest, so a retry gives the same result.
    random_seed: int = 0
    #: How raw anomaly scores become heatmap values: "robust" (deviations from the typical patch, in
    #: robust standard deviations; a normal film scores low) or "minmax" (the top patch scores 1).
    score_scale: str = "robust"
    #: On chest films, score only the estimated lung fields (when they are found).
    lung_field: bool = True
    #: A reference model (``miemss-node reference fit``) to score against; "" fits on each image.
    reference_model: str = ""
    #: Frontal (PA/AP) chest films get the anatomy-aware analysis (lung zones against normal films,
    #: round densities); other films, and all films when False, the generic patch analysis.
    chest_analysis: bool = True
    #: At most this many round densities become regions on a chest film (the strongest).
    max_focal_regions: int = 2
    #: Abnormality score from which a round density becomes a region; 0 means ``threshold``.
    focal_threshold: float = 0.0
    #: The normal reference of the chest analysis (``miemss-node reference chest``); "" = the one
    #: shipped with the package.
    chest_reference: str = ""
    #: Overrides per Modality (``[pipeline.modality.CR]`` ...); see :meth:`for_modality`.
    modality_overrides: tuple[tuple[str, PipelineSettings], ...] = ()

    def replaced(self, **changes: object) -> PipelineSettings:
        """These settings with ``changes`` applied to the base and to every per-Modality override."""
        overrides = tuple((name, replace(settings, **changes)) for name, settings in self.modality_overrides)  # type: ignore[arg-type]
        return replace(self, **changes, modality_overrides=overrides)  # type: ignore[arg-type]

    def for_modality(self, modality: str) -> PipelineSettings:
        """The settings for images of ``modality``: its override when configured, else these."""
        wanted = modality.strip().upper()
        for name, settings in self.modality_overrides:
            if name == wanted:
                return settings
        return self


@dataclass(frozen=True, kw_only=True)
class DecodedImage:
    """One 2-D frame ready for analysis.

    ``pixels`` is float32 in [0, 1], display-oriented (higher is brighter: Modality LUT, VOI LUT or
    window applied, MONOCHROME1 inverted), with the source's rows and columns.
    """

    pixels: np.ndarray
    #: (row spacing, column spacing) in mm, from Pixel Spacing or Imager Pixel Spacing; None if unknown.
    pixel_spacing_mm: tuple[float, float] | None
    #: SOP Instance UID of the source, or None for a PNG/JPEG input.
    sop_instance_uid: str | None = None
    #: 1-based frame number for multi-frame sources, None for single-frame.
    frame_number: int | None = None
    modality: str = "OT"
    #: Body Part Examined (0018,0015), upper case; "" when unknown (a PNG/JPEG input).
    body_part: str = ""
    #: View Position (0018,5101), upper case ("PA", "AP", "LL", ...); "" when unknown.
    view_position: str = ""
    #: Patient Orientation (0020,0020), e.g. ("L", "F"); () when absent.
    patient_orientation: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class EnhancedImage:
    """The denoised image, full resolution, float32 in [0, 1]."""

    pixels: np.ndarray
    method: str


@dataclass(frozen=True, kw_only=True)
class PatchFeatures:
    """Feature vectors of a regular grid of patches over the working image."""

    #: (grid_rows * grid_cols, n_features), row-major over the grid.
    vectors: np.ndarray
    grid_shape: tuple[int, int]
    #: Patch size in pixels of the *source* image (rows, cols), to map the grid back.
    patch_size_px: tuple[float, float]
    #: Which extractors produced the columns, e.g. ("hog",) or ("hog", "vit").
    extractors: tuple[str, ...]
    #: Boolean, shape ``grid_shape``: True where the patch lies in the field of view (the patient,
    #: not padding, shutters or background). None means every patch is valid.
    valid: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class AnomalyScores:
    """Anomaly score per patch, in [0, 1], higher is more anomalous; shape ``grid_shape``."""

    scores: np.ndarray
    method: str
    #: The reference model scored against, named in the report and the SR; None when fitted per image.
    model: ModelRun | None = None


@dataclass(frozen=True, kw_only=True)
class Region:
    """One connected anomalous region of the mask."""

    #: 1-based label, also the SEG segment number and the SR measurement group order.
    label: int
    area_px: int
    #: Area in mm², None when the pixel spacing is unknown.
    area_mm2: float | None
    #: Centroid (row, col) in source pixels.
    centroid: tuple[float, float]
    #: Bounding box (min_row, min_col, max_row, max_col), max exclusive, in source pixels.
    bbox: tuple[int, int, int, int]
    mean_score: float
    max_score: float
    #: Where it is, in words: in the patient's terms when the orientation is known (e.g. "right
    #: lower zone"), else in the image's, saying so (e.g. "image left, lower zone").
    location: str
    #: The patient's side, "right" or "left"; None when unknown or not on one side.
    side: str | None = None
    #: Lung zone on a frontal chest film: "upper", "middle" or "lower"; None elsewhere.
    zone: str | None = None
    #: "zone" (an abnormal lung zone, e.g. an opacity or an opaque hemithorax) or "focal" (a
    #: nodule- or mass-like blob); "patch" for the generic, non-chest analysis; "pathology" where a
    #: chest classifier's attribution for a reported pathology peaks inside the lungs.
    kind: str = "patch"
    #: The chest classifier's label of a "pathology" region (e.g. "Effusion"); None for the others.
    pathology: str | None = None


@dataclass(frozen=True, kw_only=True)
class Anatomy:
    """What one frame shows: the patient's anatomy, and what is not anatomy.

    Masks are boolean at the *working* resolution (``shape``); :meth:`to_source` scales a point.
    """

    #: Working-image shape the masks have.
    shape: tuple[int, int]
    #: Source-image shape the masks map to.
    source_shape: tuple[int, int]
    #: "PA", "AP", "LATERAL" or "" when unknown (from View Position, else the image).
    view: str
    #: True when the frame was analysed as a frontal (PA/AP) chest film.
    chest_frontal: bool
    #: The patient's body (inside the skin line, inside the collimation).
    body: np.ndarray
    #: The two hemithoraces, including lung that is opaque: 1 = the one on the image's left,
    #: 2 = the one on the image's right, 0 elsewhere (uint8). All 0 for a non-chest frame.
    hemithoraces: np.ndarray
    #: Heart and mediastinum.
    mediastinum: np.ndarray
    #: Column of the midline (working pixels); None when not found.
    midline_col: float | None
    #: What is not anatomy and is never outlined: markers and text, lines and wires, metal,
    #: collimation and everything outside the body.
    not_anatomy: np.ndarray
    #: Devices and objects seen, in words, e.g. ("external lead or line", "burned-in text or marker").
    devices: tuple[str, ...] = ()
    #: True when the patient's right is displayed on the image's left (PA/AP standard display);
    #: None when Patient Orientation does not say.
    patient_right_on_image_left: bool | None = None
    #: "classical" or the name of the anatomy model that made the masks.
    method: str = "classical"
    #: Per side ("image-left", "image-right"), the row its zones' thirds are measured to (below it, a basal
    #: opacity followed down by the anatomy joins the lower zone); a side not named is cut into thirds of
    #: its own height.
    zone_bottoms: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RegionMap:
    """Heatmap, mask and regions at the source image's size."""

    #: float32 in [0, 1], shape of the source image.
    heatmap: np.ndarray
    #: uint16 label image (0 = background, k = region k), shape of the source image.
    labels: np.ndarray
    regions: tuple[Region, ...]


@dataclass(frozen=True, kw_only=True)
class ModelRun:
    """A model that contributed to a result (name as configured, and its revision or hash)."""

    role: str  # "vit", "blip", "chest", "anatomy" or "reference"
    name: str
    revision: str
    #: How it ran, e.g. "BlipForConditionalGeneration, greedy, max 30 tokens, fp32 on cpu".
    parameters: str = ""

    def describe(self) -> str:
        """Role, name, revision and parameters in words, as the report and the SR state them."""
        details = f"{self.revision}; {self.parameters}" if self.parameters else self.revision
        return f"{self.role} {self.name} ({details})"


@dataclass(frozen=True, kw_only=True)
class AttentionMap:
    """Where a ViT looked in one frame: attention rollout (Abnar and Zuidema, 2020)."""

    #: float32 in [0, 1], shape of the source image; 1 is the most attended patch.
    heatmap: np.ndarray
    #: The ViT's token grid (rows, cols) the heatmap was upsampled from.
    grid_shape: tuple[int, int]
    #: Where the attention peaks, in words (e.g. "upper left").
    peak_location: str


@dataclass(frozen=True, kw_only=True)
class PathologyProbability:
    """One output of a chest classifier on one frame (model output, not a diagnosis)."""

    #: The library's label, e.g. "Effusion".
    label: str
    #: The model's output in [0, 1]; TorchXRayVision rescales it so that its operating point is 0.5.
    probability: float
    #: From this probability the pathology is reported as a finding (``[models] chest_threshold``).
    threshold: float

    @property
    def reported(self) -> bool:
        """Whether it reaches its threshold."""
        return self.probability >= self.threshold


@dataclass(frozen=True, kw_only=True)
class ImageAnalysis:
    """Everything the pipeline found in one frame; the input of the encoders."""

    decoded: DecodedImage
    enhanced: EnhancedImage
    #: Patch features and scores of the generic analysis; None when the chest analysis ran.
    features: PatchFeatures | None
    scores: AnomalyScores | None
    region_map: RegionMap
    #: Sentences made from the measured findings of this frame.
    findings: tuple[str, ...]
    #: Seconds per stage name.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: ViT attention rollout, when a ViT model ran.
    attention: AttentionMap | None = None
    #: BLIP caption of the enhanced frame, when a BLIP model captioned it.
    caption: str | None = None
    #: How abnormal the frame looks, 0 (like a normal film) to 1; see ``pipeline/score.py``.
    abnormality_score: float = 0.0
    #: The anatomy found in the frame; None when the pipeline did not estimate it.
    anatomy: Anatomy | None = None
    #: Which analysis ran: "chest" (anatomy-aware, frontal chest film) or "generic" (patches).
    method: str = "generic"
    #: The normal reference the frame was judged against (chest reference, or the generic
    #: analysis's reference model); None when the generic analysis fitted on the image itself.
    reference: ModelRun | None = None
    #: Every output of the chest classifier, in the model's order; () when none ran on the frame.
    pathologies: tuple[PathologyProbability, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Report:
    """The report text of a study or image."""

    text: str
    #: BLIP caption when a BLIP model ran, else None.
    caption: str | None
    findings: tuple[str, ...]
    models: tuple[ModelRun, ...] = ()
