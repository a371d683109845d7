"""RLE Lossless (PS3.5 Annex G) of 8-bit mask frames, written as runs with numpy.

A SEG's FRACTIONAL frames are masks: rows of long runs of one byte value. pylibjpeg-rle's encoder,
which ``Dataset.compress`` would use, spends 48 ms on one 1955 x 1841 frame looking for literal
stretches that a mask does not have; writing every run as a replicate run (a run of one as a
one-byte literal) takes 2.5 ms and gives the same bytes for such a frame. On other data it is still
valid RLE, only larger than it need be, so it is used for masks only.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless
from pydicom.valuerep import VR

#: The longest run one PackBits header can say (PS3.5 G.3.1).
MAX_RUN = 128
#: The RLE header: the number of segments and 15 segment offsets, 32-bit little endian (PS3.5 G.5).
HEADER_WORDS = 16


def rle_frame(frame: np.ndarray) -> bytes:
    """One 8-bit, one-sample frame as an RLE Lossless frame: a header and one segment.

    Each row is encoded on its own (PS3.5 G.3.1: no run crosses a row's end); each run of ``n``
    equal bytes is one or more replicate runs (header ``257 - n``), a run of one a literal (header 0).
    """
    if frame.ndim != 2 or frame.dtype != np.uint8:
        raise ValueError(f"an 8-bit frame of rows x columns is needed, not {frame.dtype} {frame.shape}")
    columns = frame.shape[1]
    flat = np.ascontiguousarray(frame).reshape(-1)
    starts = np.ones(flat.size, dtype=bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::columns] = True
    first = np.flatnonzero(starts)
    lengths = np.diff(np.append(first, flat.size))
    # A run longer than MAX_RUN is split into pieces of MAX_RUN and what is left.
    pieces = -(-lengths // MAX_RUN)
    piece = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_start = np.repeat(first, pieces) + piece * MAX_RUN
    piece_length = np.minimum(np.repeat(lengths, pieces) - piece * MAX_RUN, MAX_RUN)
    segment = np.empty(2 * piece_start.size, dtype=np.uint8)
    segment[0::2] = np.where(piece_length == 1, 0, 257 - piece_length).astype(np.uint8)
    segment[1::2] = flat[piece_start]
    header = np.zeros(HEADER_WORDS, dtype="<u4")
    header[0], header[1] = 1, HEADER_WORDS * 4
    # Two bytes a piece: the segment's length is even, as PS3.5 G.5 requires.
    return header.tobytes() + segment.tobytes()


def compress_mask_frames(ds: Dataset) -> None:
    """Re-encode the uncompressed 8-bit, one-sample Pixel Data of ``ds`` as RLE Lossless, in place.

    What ``Dataset.compress`` does after encoding: the frames encapsulated (basic offset table,
    undefined length, OB) and the Transfer Syntax UID set; the SOP Instance UID stays.
    """
    if int(ds.BitsAllocated) != 8 or int(ds.SamplesPerPixel) != 1:
        raise ValueError("only 8-bit frames of one sample are written as mask runs")
    frames = np.frombuffer(ds.PixelData, dtype=np.uint8)
    frames = frames[: int(ds.get("NumberOfFrames", 1) or 1) * int(ds.Rows) * int(ds.Columns)]
    frames = frames.reshape(-1, int(ds.Rows), int(ds.Columns))
    ds.PixelData = encapsulate([rle_frame(frame) for frame in frames])
    element = ds["PixelData"]
    element.is_undefined_length = True
    element.VR = VR.OB
    ds.file_meta.TransferSyntaxUID = RLELossless
