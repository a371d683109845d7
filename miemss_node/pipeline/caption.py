"""Caption stage: a BLIP caption of the enhanced frame (``BlipForConditionalGeneration``).

The caption is machine-generated text from a general-purpose image captioner, not a finding: the
report labels it so and names the model, its revision and the decoding parameters
(:attr:`BlipCaptioner.run`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from miemss_node.errors import StageError
from miemss_node.pipeline.base import ImageAnalysis, ModelRun

logger = logging.getLogger(__name__)


class BlipCaptioner:
    """A loaded BLIP with its processor (see :func:`~miemss_node.pipeline.models.load_blip`)."""

    def __init__(
        self, *, model: Any, processor: Any, device: str, run: ModelRun, max_new_tokens: int, num_beams: int
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.run = run
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams

    def caption(self, pixels: np.ndarray, *, min_new_tokens: int = 0) -> str:
        """Caption one display image.

        Parameters
        ----------
        pixels
            Float in [0, 1] (the enhanced frame), any size; the processor resizes it.
        min_new_tokens
            Tokens generated before the end token is allowed; benchmarks force a length with it.

        Returns
        -------
        str
            The decoded caption without special tokens, whitespace-normalised (may be empty).
        """
        import torch

        grey = np.clip(np.rint(np.nan_to_num(pixels.astype(np.float32)) * 255.0), 0, 255).astype(np.uint8)
        image = np.repeat(grey[..., np.newaxis], 3, axis=-1)
        with torch.inference_mode():
            inputs = self.processor(images=image, return_tensors="pt")
            forced = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
            ids = self.model.generate(
                pixel_values=inputs["pixel_values"].to(self.device),
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
                **forced,
            )
        text = self.processor.decode(ids[0], skip_special_tokens=True)
        return " ".join(str(text).split())


def caption_key_image(
    analyses: Sequence[ImageAnalysis], key: int, captioner: BlipCaptioner | None
) -> list[ImageAnalysis]:
    """The analyses with the key image's caption: a study is captioned once, not once per image.

    Each caption costs seconds on a CPU, and the images of one study show the same patient; the key
    image (the one a reader looks at first) is the one described.

    Parameters
    ----------
    analyses
        The study's analyses, in report order.
    key
        Index of the key image among them (:func:`~miemss_node.encode.ko.key_image_index`).
    captioner
        The worker's BLIP; None leaves the analyses as they are.

    Raises
    ------
    StageError
        When the caption fails (``stage`` is "caption").
    """
    if captioner is None or not analyses:
        return list(analyses)
    chosen = analyses[key]
    started = time.perf_counter()
    try:
        text = captioner.caption(chosen.enhanced.pixels)
    except Exception as exc:
        raise StageError("caption", f"{type(exc).__name__}: {exc}") from exc
    seconds = {**chosen.stage_seconds, "caption": time.perf_counter() - started}
    return [replace(a, caption=text, stage_seconds=seconds) if index == key else a for index, a in enumerate(analyses)]


def study_caption(analyses: Sequence[ImageAnalysis]) -> str | None:
    """The caption of a study: the one caption, or each image's prefixed "Image k:"; None if none.

    Parameters
    ----------
    analyses
        In the order the report numbers the images.
    """
    captions = [(number, a.caption) for number, a in enumerate(analyses, start=1) if a.caption]
    if not captions:
        return None
    if len(captions) == 1 and len(analyses) == 1:
        return captions[0][1]
    return " ".join(f"Image {number}: {_sentence(text)}" for number, text in captions)


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."
