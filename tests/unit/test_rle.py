"""RLE Lossless of mask frames: what pydicom's decoders read back is the mask, row ends and long runs included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from rle.utils import encode_frame as pylibjpeg_rle_frame

from miemss_node.encode.rle import compress_mask_frames, rle_frame


def _dataset(frames: np.ndarray) -> Dataset:
    """An uncompressed 8-bit, one-sample, multi-frame data set holding ``frames``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    data = frames.tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    return ds


def _decoded(ds: Dataset, plugin: str) -> np.ndarray:
    return np.asarray(pixel_array(ds, decoding_plugin=plugin)).reshape(-1, int(ds.Rows), int(ds.Columns))


masks = st.integers(1, 3).flatmap(
    lambda n: st.tuples(st.integers(1, 300), st.integers(1, 300)).flatmap(
        lambda shape: arrays(np.uint8, (n, *shape), elements=st.sampled_from([0, 0, 0, 1, 255]))
    )
)


@settings(max_examples=60, deadline=None)
@given(frames=masks)
def test_masks_come_back_from_both_of_pydicoms_rle_decoders(frames: np.ndarray) -> None:
    ds = _dataset(frames)
    compress_mask_frames(ds)
    assert ds.file_meta.TransferSyntaxUID == RLELossless and ds.SOPInstanceUID == "1.2.3.4"
    for plugin in ("pylibjpeg", "pydicom"):
        assert np.array_equal(_decoded(ds, plugin), frames), plugin


@pytest.mark.parametrize("columns", [1, 127, 128, 129, 300, 1841])
def test_runs_longer_than_a_header_says_and_runs_at_row_ends(columns: int) -> None:
    """A row of one value longer than 128 is split; a run never continues into the next row."""
    frame = np.zeros((3, columns), dtype=np.uint8)
    frame[0] = 1
    frame[1, : (columns + 1) // 2] = 1  # ones run on from row 0, zeros on into row 2
    ds = _dataset(frame[np.newaxis])
    compress_mask_frames(ds)
    assert np.array_equal(_decoded(ds, "pydicom")[0], frame)
    ends = np.cumsum(_run_lengths(rle_frame(frame)[64:]))
    assert set(range(columns, frame.size + 1, columns)) <= set(ends.tolist())


def _run_lengths(segment: bytes) -> list[int]:
    """The lengths of the PackBits runs of an RLE segment (PS3.5 G.3.1)."""
    lengths, at = [], 0
    while at < len(segment):
        header = segment[at]
        if header < 128:
            lengths.append(header + 1)
            at += header + 2
        elif header > 128:
            lengths.append(257 - header)
            at += 2
        else:
            at += 1
    return lengths


def test_a_mask_gets_the_same_bytes_as_pylibjpeg_rle_gives_it() -> None:
    rows, columns = np.mgrid[:195, :184]
    disc = (((rows - 60) ** 2 + (columns - 50) ** 2) < 40**2).astype(np.uint8)
    assert rle_frame(disc) == pylibjpeg_rle_frame(disc.tobytes(), 195, 184, 1, 8, "<")


def test_anything_but_one_8_bit_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="8-bit"):
        rle_frame(np.zeros((4, 4), dtype=np.uint16))
    ds = _dataset(np.zeros((1, 4, 4), dtype=np.uint8))
    ds.BitsAllocated = 16
    with pytest.raises(ValueError, match="8-bit"):
        compress_mask_frames(ds)
