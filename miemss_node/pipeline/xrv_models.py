"""Inference with the TorchXRayVision models: pathology probabilities with Grad-CAM, and anatomy masks.

Both take the decoded frame (display-oriented, [0, 1]) as the library's models were trained on
display-processed films, and scale it to the library's [-1024, 1024] range. Each is fed exactly its
native resolution, so the library never resizes (and never prints its resize warning):

* the classifier (DenseNet-121, 224²): the frame's centre square, as the library's
  ``XRayCenterCrop`` cuts it, resized with anti-aliasing. Its output passes through the library's
  operating-point normalisation (``op_norm``): 0.5 is the operating point the library chose per
  pathology. Grad-CAM (Selvaraju et al., 2017) on the last dense block (``features``, 7x7) gives where
  each reported pathology's output comes from.
* the anatomy model (PSPNet, 512²): the whole frame, padded to a square with black, so that apices and
  bases are never cut off; a structure is present where its sigmoid is >= 0.5.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from miemss_node.pipeline.base import ModelRun, PathologyProbability
from miemss_node.pipeline.chest import resize_float
from miemss_node.pipeline.xrv import XrvManifest, load_module

logger = logging.getLogger(__name__)

#: Input side of the DenseNet classifiers and of the PSPNet.
CLASSIFIER_SIDE = 224
SEGMENTER_SIDE = 512
#: Grad-CAM maps are computed for at most this many reported pathologies (the most probable).
MAX_ATTRIBUTIONS = 3
#: PSPNet outputs that make the lungs, and the heart and mediastinum.
LUNG_TARGETS = ("Left Lung", "Right Lung")
MEDIASTINUM_TARGETS = ("Heart", "Mediastinum")


def to_library_range(pixels: np.ndarray) -> np.ndarray:
    """Display values in [0, 1] to TorchXRayVision's [-1024, 1024]."""
    return (np.clip(pixels.astype(np.float32), 0.0, 1.0) * 2.0 - 1.0) * 1024.0


def centre_square(shape: tuple[int, int]) -> tuple[int, int, int]:
    """Top row, left column and side of the centre square (the library's ``XRayCenterCrop``)."""
    side = min(shape)
    return (shape[0] - side) // 2, (shape[1] - side) // 2, side


@dataclass(frozen=True, kw_only=True)
class Classification:
    """What the classifier said about one frame."""

    pathologies: tuple[PathologyProbability, ...]
    #: Grad-CAM per reported pathology (at most :data:`MAX_ATTRIBUTIONS`), float32 in [0, 1] at the
    #: frame's shape, 0 outside the centre square the classifier saw.
    attributions: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ChestClassifier:
    """A TorchXRayVision DenseNet with its thresholds, loaded once per worker process."""

    module: Any
    manifest: XrvManifest
    device: str
    #: Threshold per label; labels not named use ``default_threshold``.
    thresholds: dict[str, float]
    default_threshold: float
    run: ModelRun

    def threshold(self, label: str) -> float:
        """The reporting threshold of one pathology."""
        return self.thresholds.get(label, self.default_threshold)

    def classify(self, pixels: np.ndarray) -> Classification:
        """Probabilities of every pathology the weights predict, and Grad-CAM of the reported ones.

        Parameters
        ----------
        pixels
            The decoded frame, display-oriented, in [0, 1].
        """
        import torch
        import torch.nn.functional as functional

        top, left, side = centre_square(pixels.shape[:2])
        square = to_library_range(pixels[top : top + side, left : left + side])
        x = torch.from_numpy(np.ascontiguousarray(square))[None, None].to(self.device)
        if side != CLASSIFIER_SIDE:
            x = functional.interpolate(x, size=(CLASSIFIER_SIDE, CLASSIFIER_SIDE), mode="bilinear", antialias=True)
        x.requires_grad_(True)
        activations: list[Any] = []
        hook = self.module.features.register_forward_hook(lambda _m, _i, out: activations.append(out))
        try:
            with torch.enable_grad(), _library_output():
                outputs = self.module(x)[0]
                probabilities = outputs.detach().cpu().numpy().astype(np.float64)
                pathologies = tuple(
                    PathologyProbability(label=label, probability=float(p), threshold=self.threshold(label))
                    for label, p in zip(self.manifest.labels, probabilities, strict=True)
                    if label
                )
                reported = sorted((p for p in pathologies if p.reported), key=lambda p: -p.probability)
                attributions = {}
                for pathology in reported[:MAX_ATTRIBUTIONS]:
                    index = self.manifest.labels.index(pathology.label)
                    (gradient,) = torch.autograd.grad(outputs[index], activations[0], retain_graph=True)
                    weights = gradient.mean(dim=(2, 3), keepdim=True)
                    cam = torch.relu((weights * activations[0]).sum(dim=1))[0].detach().cpu().numpy()
                    attributions[pathology.label] = _place(cam, pixels.shape[:2], (top, left, side))
        finally:
            hook.remove()
        return Classification(pathologies=pathologies, attributions=attributions)


def _place(cam: np.ndarray, shape: tuple[int, ...], square: tuple[int, int, int]) -> np.ndarray:
    """A CAM of the centre square, normalised to [0, 1], in a zero map of the frame's ``shape``."""
    top, left, side = square
    peak = float(cam.max())
    full = np.zeros((int(shape[0]), int(shape[1])), dtype=np.float32)
    if peak > 0:
        full[top : top + side, left : left + side] = resize_float(cam / peak, (side, side))
    return full


@dataclass(frozen=True, kw_only=True)
class AnatomyMasks:
    """The anatomy model's structures at a requested shape (boolean masks)."""

    #: The two lungs, in the model's order (its "Left Lung" and "Right Lung", the patient's sides).
    lungs: tuple[np.ndarray, np.ndarray]
    #: Heart and mediastinum together.
    mediastinum: np.ndarray


@dataclass(frozen=True, kw_only=True)
class AnatomySegmenter:
    """The TorchXRayVision PSPNet, loaded once per worker process."""

    module: Any
    manifest: XrvManifest
    device: str
    run: ModelRun

    def segment(self, pixels: np.ndarray, shape: tuple[int, int]) -> AnatomyMasks:
        """Lungs, heart and mediastinum of a frame, resized to ``shape`` (the frame's proportions).

        Parameters
        ----------
        pixels
            The decoded frame, display-oriented, in [0, 1].
        shape
            The shape of the masks returned (e.g. the anatomy's working shape).
        """
        import torch
        import torch.nn.functional as functional

        rows, cols = pixels.shape[:2]
        side = max(rows, cols)
        # Black padding to a square, centred: the padding is cut off again below.
        pad_top, pad_left = (side - rows) // 2, (side - cols) // 2
        square = np.full((side, side), -1024.0, dtype=np.float32)
        square[pad_top : pad_top + rows, pad_left : pad_left + cols] = to_library_range(pixels)
        x = torch.from_numpy(square)[None, None].to(self.device)
        if side != SEGMENTER_SIDE:
            x = functional.interpolate(x, size=(SEGMENTER_SIDE, SEGMENTER_SIDE), mode="bilinear", antialias=True)
        with torch.inference_mode(), _library_output():
            logits = self.module(x)[0]
        scale = SEGMENTER_SIDE / side
        crop = logits[
            :,
            int(round(pad_top * scale)) : int(round((pad_top + rows) * scale)),
            int(round(pad_left * scale)) : int(round((pad_left + cols) * scale)),
        ]
        probabilities = torch.sigmoid(functional.interpolate(crop[None], size=shape, mode="bilinear")[0])
        present = (probabilities >= 0.5).cpu().numpy()
        index = {label: i for i, label in enumerate(self.manifest.labels)}
        lungs = (present[index[LUNG_TARGETS[0]]], present[index[LUNG_TARGETS[1]]])
        mediastinum = np.logical_or.reduce([present[index[label]] for label in MEDIASTINUM_TARGETS])
        return AnatomyMasks(lungs=lungs, mediastinum=mediastinum)


@contextlib.contextmanager
def _library_output() -> Any:
    """Catch what the library prints (its input checks print to stdout) and log it at DEBUG.

    The PSPNet (ptsemseg code inside the library) calls the deprecated ``F.upsample``; that warning is
    the library's, about its own code, and says nothing about our input.
    """
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`nn\.functional\.upsample` is deprecated", category=UserWarning)
        yield
    if captured.getvalue().strip():
        logger.debug("torchxrayvision: %s", captured.getvalue().strip(), extra={"action": "models.library_output"})


def load_chest_classifier(
    folder: Path, *, device: str, default_threshold: float, thresholds: dict[str, float]
) -> ChestClassifier:
    """Load ``[models] chest`` offline (see :func:`~miemss_node.pipeline.xrv.load_module`).

    Raises
    ------
    ModelError
        When the folder does not check out or cannot be loaded.
    """
    module, manifest = load_module("chest", folder, device=device)
    named = ", ".join(f"{label} {value:g}" for label, value in sorted(thresholds.items()))
    run = ModelRun(
        role="chest",
        name=manifest.name,
        revision=manifest.revision,
        parameters=(
            f"{len([label for label in manifest.labels if label])} pathologies, Grad-CAM on the last dense block, "
            f"threshold {default_threshold:g}{f' ({named})' if named else ''}, fp32 on {device}"
        ),
    )
    return ChestClassifier(
        module=module, manifest=manifest, device=device, thresholds=thresholds, default_threshold=default_threshold, run=run
    )


def load_anatomy_segmenter(folder: Path, *, device: str) -> AnatomySegmenter:
    """Load ``[models] anatomy`` offline.

    Raises
    ------
    ModelError
        When the folder does not check out or cannot be loaded.
    """
    module, manifest = load_module("anatomy", folder, device=device)
    run = ModelRun(
        role="anatomy",
        name=manifest.name,
        revision=manifest.revision,
        parameters=f"lungs, heart and mediastinum of {len(manifest.labels)} structures, fp32 on {device}",
    )
    return AnatomySegmenter(module=module, manifest=manifest, device=device, run=run)
