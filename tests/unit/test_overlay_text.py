"""The SC's warning text never hides the film's own burned-in text or lead marker."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from miemss_node.encode.overlay import film_annotations, render_overlay

YELLOW = (255, 255, 0)


def _film_with_marker(corner: str) -> np.ndarray:
    """A grey film with a soft body and a full-white "R" marker and text burned in at ``corner``."""
    rows, cols = 600, 800
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = 0.3 + 0.4 * np.exp(-(((yy - 300) / 250) ** 2 + ((xx - 400) / 300) ** 2))
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    x = 20 if corner == "left" else cols - 260
    draw.text((x, 15), "R  PORTABLE", fill=255, font=font)
    return np.asarray(image, dtype=np.float32) / 255.0


def _warning(rgb: np.ndarray) -> np.ndarray:
    return np.all(rgb == np.array(YELLOW, dtype=np.uint8), axis=-1)


def _render(pixels: np.ndarray) -> np.ndarray:
    zeros = np.zeros(pixels.shape, dtype=np.float32)
    return render_overlay(
        pixels,
        zeros,
        zeros.astype(np.int32),
        opacity=0.4,
        outline_rgb=(0, 255, 64),
        text_rgb=YELLOW,
        text=("NOT FOR DIAGNOSIS", "AI-generated"),
    )


def test_the_warning_stays_top_left_on_a_clean_film_and_moves_off_a_burned_in_marker() -> None:
    clean = _film_with_marker("right")
    rgb = _render(clean)
    assert _warning(rgb[:150, :400]).sum() > 100  # top left, where readers expect it
    marked = _film_with_marker("left")
    annotated = film_annotations(marked)
    assert annotated[:80, :300].sum() > 200 and not annotated[200:400, 200:600].any()  # the marker, not the body
    rgb = _render(marked)
    assert not _warning(rgb)[annotated].any()  # every marker pixel still shows the film
    assert _warning(rgb[:150, 400:]).sum() > 100  # the text went to the free top right corner
