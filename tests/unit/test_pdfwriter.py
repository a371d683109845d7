"""The dependency-free PDF writer: wrapping, escaping and a cross-reference table that points right."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from miemss_node.encode.pdfwriter import MARGIN, PAGE_WIDTH, Paragraph, Picture, text_width, wrap, write_pdf


def test_wrapped_lines_fit_and_keep_every_word() -> None:
    text = "Anomalous region 12 in the upper left (2319 mm²) " * 20 + "x" * 300
    width = PAGE_WIDTH - 2 * MARGIN
    lines = wrap(text, width, 10.0)
    assert all(text_width(line, 10.0) <= width for line in lines)
    assert b"".join(lines).replace(b" ", b"") == text.replace(" ", "").encode("cp1252")


def test_helvetica_widths_are_adobes() -> None:
    assert text_width(b"MIEMSS", 10.0) == (833 + 278 + 667 + 833 + 667 + 667) / 100
    assert text_width(b"i", 1000.0, bold=True) == 278


def test_cross_reference_offsets_point_at_their_objects() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    blocks = [Paragraph(text="(a) \\ b ≤ ²", bold=True), Picture(jpeg=buffer.getvalue(), width_px=30, height_px=20)]
    blocks += [Paragraph(text=f"line {n}") for n in range(120)]  # more than one page
    pdf = write_pdf(blocks, title="T (1)", producer="P")
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n")
    start = int(re.search(rb"startxref\n(\d+)\n", pdf).group(1))  # type: ignore[union-attr]
    entries = re.findall(rb"(\d{10}) 00000 n ", pdf[start:])
    for number, offset in enumerate(entries, start=1):
        assert pdf[int(offset) :].startswith(b"%d 0 obj\n" % number)
    pages = len(re.findall(rb"/Type /Page ", pdf))
    assert pages >= 2 and b"/Count %d" % pages in pdf
    assert b"/Title (T \\(1\\))" in pdf
