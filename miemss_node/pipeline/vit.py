"""ViT stage: patch embeddings and attention rollout of a frame, from one batched forward pass.

The enhanced frame is resized to the model's input (e.g. 224x224) by its own image processor, so
every ViT token sees the whole image in context; all patches of a frame (and several frames, when
given together) go through the model as one batch, in ``torch.inference_mode``.

* **Embeddings.** The last layer's token of each patch. They join the HOG features as two columns
  (:data:`FEATURE_NAMES`), each relative to context as the HOG columns are: the cosine distance of a
  token from the median token of its 3x3 neighbourhood, and from the image's mean token. 768 raw
  dimensions would drown the five HOG columns in the Isolation Forest's random feature choice.
* **Attention rollout** (Abnar and Zuidema, 2020, "Quantifying Attention Flow in Transformers"):
  per layer the heads' mean attention plus the identity (the residual path), rows renormalised,
  multiplied through the layers; the class token's row over the patches is where the model looked.
  It is an output of its own (explainability), not a feature.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from skimage.transform import resize

from miemss_node.pipeline.base import AttentionMap, ModelRun, PatchFeatures
from miemss_node.pipeline.regions import location_words

logger = logging.getLogger(__name__)

#: Columns that :func:`join_vit_features` appends to the feature vectors, in order.
FEATURE_NAMES = ("vit_novelty", "vit_rarity")

#: Side, in tokens, of the neighbourhood a token is compared with.
NEIGHBOURHOOD = 3

#: A rollout whose values span less than this is uniform: no patch stands out.
SPREAD_EPSILON = 1e-7


@dataclass(frozen=True, kw_only=True)
class VitPatches:
    """What the ViT saw in one frame, on its token grid."""

    #: float32, (rows, cols, hidden size): the last layer's token of each patch.
    embeddings: np.ndarray
    #: float32 in [0, 1], (rows, cols): attention rollout from the class token, min-max scaled.
    rollout: np.ndarray


class VitAttention:
    """A loaded ViT with its image processor (see :func:`~miemss_node.pipeline.models.load_vit`)."""

    def __init__(self, *, model: Any, processor: Any, device: str, run: ModelRun, batch_frames: bool = True) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.run = run
        #: Frames go through the model together. False for dynamic int8, whose activation scale is
        #: taken over the whole batch: a frame's result would depend on the frames beside it.
        self.batch_frames = batch_frames

    def patches(self, frames: Sequence[np.ndarray]) -> list[VitPatches]:
        """Embed and roll out the attention of frames: as one batch, or one by one (``batch_frames``).

        Parameters
        ----------
        frames
            Display images, float in [0, 1] (the enhanced frames), any size.

        Returns
        -------
        list of VitPatches
            One per frame, on the model's token grid.
        """
        if not self.batch_frames and len(frames) > 1:
            return [patches for frame in frames for patches in self._batch([frame])]
        return self._batch(frames)

    def _batch(self, frames: Sequence[np.ndarray]) -> list[VitPatches]:
        import torch

        if not frames:
            return []
        images = [_to_rgb8(frame) for frame in frames]
        with torch.inference_mode():
            inputs = self.processor(images=images, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device)
            output = self.model(pixel_values=pixel_values, output_attentions=True)
            patch = int(self.model.config.patch_size)
            grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
            rollout = attention_rollout(output.attentions).reshape(len(frames), *grid)
            tokens = output.last_hidden_state[:, 1:, :].reshape(len(frames), grid[0], grid[1], -1)
            return [
                VitPatches(
                    embeddings=tokens[i].float().cpu().numpy(),
                    rollout=rollout[i].float().cpu().numpy(),
                )
                for i in range(len(frames))
            ]


def attention_rollout(attentions: Sequence[Any]) -> Any:
    """Roll attention out through the layers; return the class token's attention to each patch.

    Parameters
    ----------
    attentions
        Per layer, a tensor (batch, heads, tokens, tokens) of attention probabilities; token 0 is
        the class token.

    Returns
    -------
    torch.Tensor
        (batch, tokens - 1), each row min-max scaled to [0, 1] (the identity terms keep rollout
        values close together, so only their order and relative spread mean something); a row
        without spread (uniform attention) is all 1.
    """
    import torch

    first = attentions[0]
    identity = torch.eye(first.shape[-1], dtype=torch.float32, device=first.device)
    rollout = identity.expand(first.shape[0], -1, -1)
    for layer in attentions:
        mixed = 0.5 * layer.float().mean(dim=1) + 0.5 * identity
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    cls_row = rollout[:, 0, 1:]
    low = cls_row.amin(dim=-1, keepdim=True)
    spread = cls_row.amax(dim=-1, keepdim=True) - low
    flat = spread <= SPREAD_EPSILON
    return torch.where(flat, torch.ones_like(cls_row), (cls_row - low) / torch.where(flat, 1.0, spread))


def join_vit_features(features: PatchFeatures, patches: VitPatches) -> PatchFeatures:
    """Append the ViT columns (:data:`FEATURE_NAMES`) to the HOG features of the same frame.

    Each feature patch takes the values of the ViT token over its centre (both grids span the
    whole image).

    Parameters
    ----------
    features
        The HOG features of the frame.
    patches
        The ViT output for the same frame.

    Returns
    -------
    PatchFeatures
        The same grid, with two more columns and "vit" among the extractors.
    """
    columns = _token_features(patches.embeddings)
    rows = _nearest(features.grid_shape[0], columns.shape[0])
    cols = _nearest(features.grid_shape[1], columns.shape[1])
    extra = columns[rows][:, cols].reshape(-1, len(FEATURE_NAMES))
    return replace(
        features,
        vectors=np.concatenate([features.vectors, extra.astype(np.float32)], axis=1),
        extractors=(*features.extractors, "vit"),
    )


def attention_map(patches: VitPatches, shape: tuple[int, int]) -> AttentionMap:
    """The rollout upsampled (bilinear) to the source image's shape, with where it peaks."""
    heatmap = resize(patches.rollout, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    heatmap = np.clip(heatmap, 0.0, 1.0).astype(np.float32)
    peak = np.unravel_index(int(np.argmax(patches.rollout)), patches.rollout.shape)
    grid = patches.rollout.shape
    centre = ((peak[0] + 0.5) * shape[0] / grid[0], (peak[1] + 0.5) * shape[1] / grid[1])
    return AttentionMap(heatmap=heatmap, grid_shape=(grid[0], grid[1]), peak_location=location_words(centre, shape))


def _token_features(embeddings: np.ndarray) -> np.ndarray:
    """(rows, cols, 2): cosine distance from the neighbourhood's median token and from the mean token."""
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    unit = embeddings / np.maximum(norms, np.finfo(np.float32).tiny)
    half = NEIGHBOURHOOD // 2
    padded = np.pad(unit, ((half, half), (half, half), (0, 0)), mode="edge")
    windows = sliding_window_view(padded, (NEIGHBOURHOOD, NEIGHBOURHOOD), axis=(0, 1))
    local = np.median(windows.reshape(*unit.shape, -1), axis=-1)
    mean = unit.reshape(-1, unit.shape[-1]).mean(axis=0)
    return np.stack([_cosine_distance(unit, local), _cosine_distance(unit, mean)], axis=-1)


def _cosine_distance(unit: np.ndarray, other: np.ndarray) -> np.ndarray:
    other_norm = np.linalg.norm(other, axis=-1)
    similarity = (unit * other).sum(axis=-1) / np.maximum(other_norm, np.finfo(np.float32).tiny)
    return (1.0 - similarity).astype(np.float32)


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    """Index of the input cell under the centre of each of ``n_out`` cells spanning the same length."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)


def _to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """A display image in [0, 1] as uint8 RGB (H, W, 3), the input image processors expect."""
    grey = np.clip(np.rint(np.nan_to_num(pixels.astype(np.float32)) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)
