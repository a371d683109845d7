"""The heatmap drawn over the image, as 8-bit RGB: for the SC result and ``process``'s overlay.png."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

from miemss_node.pipeline.base import ImageAnalysis

#: Heatmap values below this are not tinted, so normal anatomy stays readable.
TINT_FROM = 0.35
#: Colour of region outlines (yellow).
OUTLINE_RGB = (255, 255, 0)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A blue-to-red colour ramp for values in [0, 1], as float RGB in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    cold = np.array([0.0, 0.2, 1.0])
    warm = np.array([1.0, 0.9, 0.0])
    hot = np.array([1.0, 0.0, 0.0])
    low = cold + (warm - cold) * np.clip(v * 2, 0, 1)
    return np.where(v < 0.5, low, warm + (hot - warm) * np.clip(v * 2 - 1, 0, 1))


def overlay_rgb(analysis: ImageAnalysis, *, opacity: float = 0.45) -> np.ndarray:
    """The display image in grey with the heatmap blended where it is high and regions outlined."""
    grey = np.clip(analysis.decoded.pixels.astype(np.float32), 0.0, 1.0)
    heat = analysis.region_map.heatmap
    alpha = (np.clip((heat - TINT_FROM) / (1.0 - TINT_FROM), 0.0, 1.0) * opacity)[..., None]
    rgb = grey[..., None] * (1.0 - alpha) + heat_colours(heat) * alpha
    image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    labels = analysis.region_map.labels
    if labels.any():
        edges = find_boundaries(labels, mode="outer")
        image[edges] = OUTLINE_RGB
    return image
