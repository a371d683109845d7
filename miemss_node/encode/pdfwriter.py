"""A small PDF 1.4 writer without dependencies: wrapped paragraphs and JPEG pictures on A4 pages.

Enough for a one- or two-page report: the standard Helvetica fonts (never embedded, every reader
has them) in Windows-1252 encoding, text wrapped with the fonts' real widths (Adobe's AFM
metrics), and JPEG images passed through unchanged (``/DCTDecode``). Characters outside
Windows-1252 print as "?". See ISO 32000-1 (PDF 1.7), which PDF 1.4 files satisfy.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

#: A4 in points (1/72 inch).
PAGE_WIDTH = 595.0
PAGE_HEIGHT = 842.0
MARGIN = 56.0

#: Advance widths (1/1000 em) of the printable ASCII characters 32..126, from Adobe's
#: Helvetica.afm and Helvetica-Bold.afm. Other characters use :data:`_DEFAULT_WIDTH`.
# fmt: off
_HELVETICA = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
)
_HELVETICA_BOLD = (
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
)
# fmt: on
#: Width of characters outside ASCII: wide enough (an "m"-like glyph) that lines never overflow.
_DEFAULT_WIDTH = 889


@dataclass(frozen=True, kw_only=True)
class Paragraph:
    """A block of text, wrapped to the page width."""

    text: str
    size: float = 10.0
    bold: bool = False
    #: Space above the paragraph, in points.
    space_before: float = 4.0
    #: RGB colour, each component in [0, 1].
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True, kw_only=True)
class Picture:
    """A JPEG image (baseline, RGB), scaled to fit the page width and ``max_height`` points."""

    jpeg: bytes
    width_px: int
    height_px: int
    max_height: float = 360.0
    space_before: float = 8.0


Block = Paragraph | Picture


def encode_text(text: str) -> bytes:
    """Text as Windows-1252 bytes (others as "?"), control characters dropped."""
    printable = "".join(ch for ch in text if ch >= " " or ch == "\t").replace("\t", " ")
    return printable.encode("cp1252", errors="replace")


def text_width(data: bytes, size: float, *, bold: bool = False) -> float:
    """Width in points of encoded text in Helvetica (or Helvetica-Bold) at ``size`` points."""
    table = _HELVETICA_BOLD if bold else _HELVETICA
    units = sum(table[byte - 32] if 32 <= byte <= 126 else _DEFAULT_WIDTH for byte in data)
    return units * size / 1000.0


def wrap(text: str, width: float, size: float, *, bold: bool = False) -> list[bytes]:
    """Split text into encoded lines no wider than ``width`` points (a long word is cut)."""
    lines: list[bytes] = []
    for raw_line in text.splitlines() or [""]:
        current = b""
        for word in encode_text(raw_line).split(b" "):
            candidate = word if not current else current + b" " + word
            if text_width(candidate, size, bold=bold) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            while text_width(word, size, bold=bold) > width:
                cut = len(word)
                while cut > 1 and text_width(word[:cut], size, bold=bold) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


def _literal(data: bytes) -> bytes:
    """A PDF literal string: backslash, parentheses escaped (ISO 32000-1 7.3.4.2)."""
    return b"(" + data.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


class _Layout:
    """Places blocks top to bottom, starting a new page when one is full."""

    def __init__(self) -> None:
        self.pages: list[list[bytes]] = [[]]
        self.images: list[Picture] = []
        self.y = PAGE_HEIGHT - MARGIN

    def _room(self, height: float) -> None:
        if self.y - height < MARGIN and self.pages[-1]:
            self.pages.append([])
            self.y = PAGE_HEIGHT - MARGIN

    def paragraph(self, block: Paragraph) -> None:
        leading = block.size * 1.3
        font = b"/F2" if block.bold else b"/F1"
        colour = " ".join(f"{c:.3f}" for c in block.colour).encode()
        self.y -= block.space_before
        for line in wrap(block.text, PAGE_WIDTH - 2 * MARGIN, block.size, bold=block.bold):
            self._room(leading)
            self.y -= leading
            self.pages[-1].append(
                b"BT %s %.1f Tf %s rg %.2f %.2f Td %s Tj ET"
                % (font, block.size, colour, MARGIN, self.y + block.size * 0.25, _literal(line))
            )

    def picture(self, block: Picture) -> None:
        self.y -= block.space_before
        # Shrink a picture to the rest of the page rather than part it from its heading, down to
        # half its height; smaller than that, it starts a new page.
        room = self.y - MARGIN
        max_height = min(block.max_height, max(room, block.max_height / 2))
        scale = min((PAGE_WIDTH - 2 * MARGIN) / block.width_px, max_height / block.height_px)
        width, height = block.width_px * scale, block.height_px * scale
        self._room(height)
        self.y -= height
        self.images.append(block)
        name = b"/Im%d" % len(self.images)
        self.pages[-1].append(b"q %.2f 0 0 %.2f %.2f %.2f cm %s Do Q" % (width, height, MARGIN, self.y, name))


def write_pdf(blocks: Sequence[Block], *, title: str, producer: str) -> bytes:
    """Lay out ``blocks`` on A4 pages and return the PDF file.

    Parameters
    ----------
    blocks
        Paragraphs and pictures, top to bottom.
    title, producer
        The document information dictionary's Title and Producer.

    Returns
    -------
    bytes
        A complete PDF 1.4 file (header, objects, cross-reference table, trailer).
    """
    layout = _Layout()
    for block in blocks:
        if isinstance(block, Paragraph):
            layout.paragraph(block)
        else:
            layout.picture(block)
    objects: list[bytes] = []  # object n is objects[n - 1]

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in below, once the page tree's number is known
    info = add(b"<< /Title %s /Producer %s >>" % (_literal(encode_text(title)), _literal(encode_text(producer))))
    regular = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    bold = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>")
    image_refs = []
    for index, picture in enumerate(layout.images, start=1):
        number = add(
            b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
            b"/BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n%s\nendstream"
            % (picture.width_px, picture.height_px, len(picture.jpeg), picture.jpeg)
        )
        image_refs.append(b"/Im%d %d 0 R" % (index, number))
    resources = b"<< /Font << /F1 %d 0 R /F2 %d 0 R >> /XObject << %s >> >>" % (regular, bold, b" ".join(image_refs))
    pages_number = len(objects) + 2 * len(layout.pages) + 1
    kids = []
    for operations in layout.pages:
        content = zlib.compress(b"\n".join(operations))
        stream = add(b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(content), content))
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] /Resources %s /Contents %d 0 R >>"
                % (pages_number, PAGE_WIDTH, PAGE_HEIGHT, resources, stream)
            )
        )
    pages = add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % kid for kid in kids), len(kids)))
    if pages != pages_number:
        raise RuntimeError(f"PDF page tree is object {pages}, the pages name {pages_number}")
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages
    # A binary comment after the header tells transfer tools the file is binary (7.5.2).
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        info,
        xref,
    )
    return bytes(out)
