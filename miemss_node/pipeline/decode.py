"""Decode stage: DICOM or PNG/JPEG pixels to display-oriented float frames in [0, 1].

The order of operations follows the DICOM grayscale pipeline (PS3.4 Annex N.2.1): stored values,
then the Modality LUT (rescale or Modality LUT Sequence, PS3.3 C.11.1), then the VOI LUT (VOI LUT
Sequence or Window Center/Width, PS3.3 C.11.2), then MONOCHROME1 is inverted so that higher is
always brighter. Colour images (RGB, YBR, palette) become luminance. Every failure to read or decode
is raised as :class:`~miemss_node.errors.DecodeError` naming the reason.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from os import PathLike
from pathlib import Path
from struct import unpack_from
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from miemss_node.errors import DecodeError
from miemss_node.pipeline.base import DecodedImage

logger = logging.getLogger(__name__)


class DecodeReason(str, Enum):
    """Why an input was refused: the ``reason`` of every :class:`DecodeError` raised here."""

    #: Not DICOM at all (empty, or another format such as a PNG named .dcm).
    NOT_DICOM = "not_dicom"
    #: DICOM, but truncated or damaged so that no dataset can be read.
    DAMAGED_FILE = "damaged_file"
    #: A readable DICOM instance that is not an image to analyse (SR, SEG, RT, waveform, ...).
    NOT_AN_IMAGE = "not_an_image"
    #: Image attributes that contradict each other or the pixel data (frames, rows, columns).
    INVALID_HEADER = "invalid_header"
    #: Native (uncompressed) Pixel Data shorter than Rows x Columns x Frames needs.
    PIXEL_DATA_SHORT = "pixel_data_short"
    #: Every installed decoder failed on the compressed pixel data (corrupt or unsupported stream).
    CODEC_FAILED = "codec_failed"
    #: A PNG/JPEG input that cannot be opened as a picture.
    UNREADABLE_PICTURE = "unreadable_picture"


#: Modalities whose instances carry no image to analyse (PS3.3 C.7.3.1.1.1), even with pixel data.
_NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "KO", "PR", "DOC", "REG", "FID",
     "ECG", "HD", "EPS", "AU", "RWV", "PLAN", "LABEL"}
)

#: SOP Class UID roots (PS3.4 B.5) that are not images to analyse: raw data, registrations and
#: segmentations (66.x), waveforms (9.x), presentation states (11.x), structured reports (88.x),
#: encapsulated documents such as PDF (104.x) and RT objects other than RT Image (481.2 and up).
_NON_IMAGE_SOP_ROOTS = (
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.9",
    "1.2.840.10008.5.1.4.1.1.11",
    "1.2.840.10008.5.1.4.1.1.88",
    "1.2.840.10008.5.1.4.1.1.104",
    *(f"1.2.840.10008.5.1.4.1.1.481.{n}" for n in range(2, 20)),
)

#: Percentiles of the robust window used when the header has no VOI LUT or window.
_PERCENTILE_WINDOW = (0.5, 99.5)

#: A header window that saturates more than this fraction of the pixels is ignored (logged).
_MAX_SATURATED_FRACTION = 0.98

#: About this many pixels are sampled to estimate the percentile window (faster, same result).
_WINDOW_SAMPLE_SIZE = 1_000_000

#: ITU-R BT.601 luma weights, to turn RGB into luminance.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_image_dataset(ds: Dataset) -> bool:
    """Say whether a dataset holds an image this pipeline should analyse.

    Parameters
    ----------
    ds
        Any DICOM dataset.

    Returns
    -------
    bool
        True when it has Pixel Data, Rows and Columns and is not a segmentation, report, waveform,
        document or RT object (those may carry pixel data that is not an image of the patient).
    """
    with _pydicom_warnings_logged(None):
        return _is_image(ds)


def _is_image(ds: Dataset) -> bool:
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        return False
    if str(ds.get("Modality", "") or "").strip().upper() in _NON_IMAGE_MODALITIES:
        return False
    sop_class = str(ds.get("SOPClassUID", "") or "")
    return not any(sop_class == root or sop_class.startswith(root + ".") for root in _NON_IMAGE_SOP_ROOTS)


def read_dicom_file(path: str | PathLike[str], *, header_only: bool = False) -> Dataset:
    """Read a DICOM file, including a raw dataset without preamble or File Meta.

    A file without a Transfer Syntax UID gets one from the encoding pydicom detected while
    reading (usually Implicit VR Little Endian), so that its pixel data can be decoded.

    Parameters
    ----------
    path
        The file to read.
    header_only
        Stop before the pixel data (the encoders need only the header).

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset with ``file_meta.TransferSyntaxUID`` set.

    Raises
    ------
    DecodeError
        If the file is not DICOM or cannot be parsed.
    OSError
        If the file cannot be opened.
    """
    path = Path(path)
    try:
        with _pydicom_warnings_logged(None):
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=header_only)
    except OSError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DecodeError(
            f"{path.name} could not be parsed as DICOM: {_one_line(exc)}", reason=DecodeReason.DAMAGED_FILE
        ) from exc
    with _pydicom_warnings_logged(None):
        if not _looks_like_dicom(ds):
            raise _not_dicom_error(path.name, ds)
        if not _transfer_syntax(ds):
            ds.file_meta = _file_meta_with_syntax(ds)
    return ds


def decode_dataset(ds: Dataset, max_frames: int | None = None) -> list[DecodedImage]:
    """Decode every frame of an image dataset to display-oriented float32 in [0, 1].

    Parameters
    ----------
    ds
        A dataset for which :func:`is_image_dataset` is true. It is not modified; a missing
        Transfer Syntax UID is taken from the encoding it was read with.
    max_frames
        Decode at most this many frames (the first ones); None decodes all.

    Returns
    -------
    list of DecodedImage
        One per frame; ``frame_number`` is 1-based for multi-frame data and None otherwise.

    Raises
    ------
    DecodeError
        If the dataset is not an image, or its pixel data cannot be decoded.
    """
    # Element values are converted lazily, so pydicom may warn about a bad value at any access.
    with _pydicom_warnings_logged(None):
        return _decode_all(ds, max_frames)


def _decode_all(ds: Dataset, max_frames: int | None) -> list[DecodedImage]:
    uid = _sop_instance_uid(ds)
    if not is_image_dataset(ds):
        raise DecodeError(
            f"not an image to analyse (Modality {ds.get('Modality', '?')}, "
            f"SOP Class {ds.get('SOPClassUID', '?')})",
            sop_instance_uid=uid,
            reason=DecodeReason.NOT_AN_IMAGE,
        )
    if not _transfer_syntax(ds):
        ds = copy.copy(ds)
        ds.file_meta = _file_meta_with_syntax(ds)
    n_frames = _frame_count(ds, uid)
    modality = str(ds.get("Modality", "") or "OT").strip() or "OT"
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    view_position = str(ds.get("ViewPosition", "") or "").strip().upper()
    orientation = _patient_orientation(ds)
    images = [
        DecodedImage(
            pixels=_decode_frame(ds, index, uid),
            pixel_spacing_mm=pixel_spacing(ds, index),
            sop_instance_uid=uid,
            frame_number=index + 1 if n_frames > 1 else None,
            modality=modality,
            body_part=body_part,
            view_position=view_position,
            patient_orientation=orientation,
        )
        for index in range(n_frames if max_frames is None else min(n_frames, max_frames))
    ]
    logger.debug("decoded %d frame(s)", n_frames, extra={"action": "decode.decoded", "sop_instance_uid": uid})
    return images


def decode_image_file(path: str | PathLike[str]) -> DecodedImage:
    """Decode a PNG or JPEG file (8 or 16 bit, grey or colour) to float32 luminance in [0, 1].

    The stored range of the format (255 or 65535) maps to 1; no window is applied, since a
    picture file is already meant for display.

    Parameters
    ----------
    path
        The image file.

    Returns
    -------
    DecodedImage
        With ``pixel_spacing_mm`` and ``sop_instance_uid`` None.

    Raises
    ------
    DecodeError
        If the file cannot be opened as an image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr, full_scale = _pil_to_array(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DecodeError(
            f"{path.name} could not be read as PNG/JPEG: {_one_line(exc)}", reason=DecodeReason.UNREADABLE_PICTURE
        ) from exc
    if arr.ndim == 3:
        arr = _luminance(arr[..., :3])
    pixels = np.clip(arr.astype(np.float32) / np.float32(full_scale), 0.0, 1.0)
    return DecodedImage(pixels=pixels, pixel_spacing_mm=None)


def _patient_orientation(ds: Dataset) -> tuple[str, ...]:
    """Patient Orientation as upper-case strings; () when absent or not two values."""
    value = ds.get("PatientOrientation")
    if value is None or value == "":
        return ()
    values = [value] if isinstance(value, str) else list(value)
    cleaned = tuple(str(v).strip().upper() for v in values)
    return cleaned if len(cleaned) == 2 and all(cleaned) else ()


def pixel_spacing(ds: Dataset, index: int = 0) -> tuple[float, float] | None:
    """Return the (row, column) pixel spacing of a frame in mm, or None when unknown.

    Pixel Spacing is used first, then Imager Pixel Spacing, then the Pixel Measures functional
    group (per-frame, then shared). Zero, negative or unparsable values are skipped; the WG04
    CRs, for instance, store a Pixel Spacing of 0.
    """
    with _pydicom_warnings_logged(None):
        candidates = (
            ds.get("PixelSpacing"),
            ds.get("ImagerPixelSpacing"),
            _functional_group_value(ds, index, "PixelMeasuresSequence", "PixelSpacing"),
        )
    for value in candidates:
        spacing = _positive_pair(value)
        if spacing is not None:
            return spacing
    return None


# --- frames -------------------------------------------------------------------------------------


def _display_frame(ds: Dataset, index: int, uid: str | None) -> np.ndarray:
    """Decode frame ``index`` and map it to display-oriented float32 in [0, 1]."""
    with _pydicom_warnings_logged(uid):
        raw = pixel_array(ds, index=index)
    expected = (int(ds.Rows), int(ds.Columns))
    if raw.shape[:2] != expected:
        raise DecodeError(
            f"frame {index + 1} has shape {raw.shape}, expected {expected}",
            sop_instance_uid=uid,
            reason=DecodeReason.INVALID_HEADER,
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        return _unit(_luminance(rgb), float(np.iinfo(rgb.dtype).max))
    if raw.ndim == 3:
        # pydicom returns RGB for YBR_FULL(_422) and the JPEG 2000 YBR_ICT/RCT decoders do too.
        return _unit(_luminance(raw), float(2 ** int(ds.get("BitsStored", 8)) - 1))
    return _grayscale(raw, ds, index, invert=photometric == "MONOCHROME1", uid=uid)


def _grayscale(raw: np.ndarray, ds: Dataset, index: int, *, invert: bool, uid: str | None) -> np.ndarray:
    """Modality LUT, VOI (LUT, window or percentile window), inversion; padding becomes 0."""
    padding = _padding_mask(raw, ds)
    values = _modality_values(raw, ds, index)
    out = _voi(values, ds, index, padding, uid)
    if invert:
        out = 1.0 - out
    if padding is not None:
        out[padding] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _modality_values(raw: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Apply the Modality LUT Sequence or the rescale (PS3.3 C.11.1) and return float values."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(raw, ds).astype(np.float32)
    slope = _as_float(_functional_group_value(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _as_float(
        _functional_group_value(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    )
    values = raw.astype(np.float32)
    if slope is not None and slope != 1.0:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    return values


def _voi(values: np.ndarray, ds: Dataset, index: int, padding: np.ndarray | None, uid: str | None) -> np.ndarray:
    """Apply the VOI LUT Sequence or the first window, else a robust percentile window."""
    out: np.ndarray | None = None
    if ds.get("VOILUTSequence"):
        out = _apply_voi_lut_sequence(values, ds)
    else:
        window = _window_of(ds, index)
        if window is not None:
            out = _apply_window(values, *window)
    if out is not None and _saturated_fraction(out, padding) <= _MAX_SATURATED_FRACTION:
        return out
    if out is not None:
        logger.info(
            "header VOI saturates the image; using a percentile window instead",
            extra={"action": "decode.window_ignored", "sop_instance_uid": uid},
        )
    return _percentile_window(values, padding)


def _window_of(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    """Return (center, width, function) of the first window, or None if absent or invalid."""
    group = "FrameVOILUTSequence"
    center = _as_float(_functional_group_value(ds, index, group, "WindowCenter"))
    width = _as_float(_functional_group_value(ds, index, group, "WindowWidth"))
    function = str(_functional_group_value(ds, index, group, "VOILUTFunction") or "LINEAR").strip().upper()
    if center is None or width is None or width <= 0:
        return None
    return center, width, function


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window to [0, 1] with the LINEAR, LINEAR_EXACT or SIGMOID function (PS3.3 C.11.2.1.2)."""
    if function == "SIGMOID":
        # 1 / (1 + exp(-4 (x - c) / w)), written with tanh so that it cannot overflow.
        return (0.5 + 0.5 * np.tanh(2.0 * (values - center) / width)).astype(np.float32)
    if function == "LINEAR_EXACT":
        scaled = (values - np.float32(center)) / np.float32(width) + np.float32(0.5)
    else:
        scaled = (values - np.float32(center - 0.5)) / np.float32(max(width - 1.0, 1e-6)) + np.float32(0.5)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32, copy=False)


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Map through the first VOI LUT, scaled so the LUT's output range becomes [0, 1].

    The LUT's own data range is used rather than the nominal bit depth of its descriptor, since
    real LUTs often declare 16 bits and hold 8-bit values.
    """
    item = ds.VOILUTSequence[0]
    n_entries, first_mapped, _bits = (int(v) for v in item.LUTDescriptor)
    table = _lut_data(item, ds, n_entries or 65536)
    indices = np.clip(np.rint(values) - first_mapped, 0, table.size - 1).astype(np.intp)
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((table[indices] - low) / (high - low)).astype(np.float32)


def _lut_data(item: Dataset, ds: Dataset, n_entries: int) -> np.ndarray:
    """Return the LUT Data of a LUT item as float32 (US values, or OW bytes in the file's order)."""
    element = item["LUTData"]
    if element.VR == "OW" and isinstance(element.value, bytes):
        little = _transfer_syntax(ds) != ExplicitVRBigEndian
        count = min(n_entries, len(element.value) // 2)
        return np.asarray(unpack_from(f"{'<' if little else '>'}{count}H", element.value), dtype=np.float32)
    return np.asarray(element.value, dtype=np.float32).ravel()


def _percentile_window(values: np.ndarray, padding: np.ndarray | None) -> np.ndarray:
    """Window between the 0.5th and 99.5th percentiles of the non-padding pixels."""
    sample = values if padding is None else values[~padding]
    sample = sample.ravel()
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    step = max(1, sample.size // _WINDOW_SAMPLE_SIZE)
    low, high = (float(v) for v in np.percentile(sample[::step], _PERCENTILE_WINDOW))
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - np.float32(low)) / np.float32(high - low), 0.0, 1.0).astype(np.float32)


def _saturated_fraction(out: np.ndarray, padding: np.ndarray | None) -> float:
    """Fraction of the non-padding pixels at 0 or 1."""
    sample = out if padding is None else out[~padding]
    if sample.size == 0:
        return 0.0
    return float(np.count_nonzero((sample <= 0.0) | (sample >= 1.0))) / sample.size


def _padding_mask(raw: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Pixels equal to Pixel Padding Value, or inside its range limit (PS3.3 C.7.5.1.1.2)."""
    value = _as_float(ds.get("PixelPaddingValue"))
    if value is None:
        return None
    limit = _as_float(ds.get("PixelPaddingRangeLimit"))
    if limit is None:
        mask = raw == value
    else:
        mask = (raw >= min(value, limit)) & (raw <= max(value, limit))
    return mask if mask.any() else None


# --- attributes ---------------------------------------------------------------------------------


def _functional_group_value(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """Return ``keyword`` from the top level, else the per-frame, else the shared functional group."""
    if keyword in ds:
        return ds[keyword].value
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    groups = [per_frame[index] if per_frame and index < len(per_frame) else None, shared[0] if shared else None]
    for group in groups:
        if group is not None and group.get(sequence):
            item = group[sequence][0]
            if keyword in item:
                return item[keyword].value
    return None


def _positive_pair(value: Any) -> tuple[float, float] | None:
    """Parse a two-valued DS as a pair of positive floats, or None."""
    if value is None or isinstance(value, (str, bytes)):  # absent, or an invalid string kept as is
        return None
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(np.isfinite(pair)) or min(pair) <= 0:
        return None
    return pair[0], pair[1]


def _as_float(value: Any) -> float | None:
    """First value of a numeric attribute as a finite float, or None when absent or unparsable."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _frame_count(ds: Dataset, uid: str | None) -> int:
    """Number of Frames, 1 when absent; an invalid value is a DecodeError."""
    value = ds.get("NumberOfFrames", 1)
    try:
        count = int(value or 1)
    except (TypeError, ValueError) as exc:
        raise DecodeError(
            f"invalid Number of Frames {value!r}", sop_instance_uid=uid, reason=DecodeReason.INVALID_HEADER
        ) from exc
    if count < 1:
        raise DecodeError(
            f"invalid Number of Frames {count}", sop_instance_uid=uid, reason=DecodeReason.INVALID_HEADER
        )
    return count


def _transfer_syntax(ds: Dataset) -> str | None:
    file_meta = getattr(ds, "file_meta", None)
    return None if file_meta is None else file_meta.get("TransferSyntaxUID")


def _file_meta_with_syntax(ds: Dataset) -> FileMetaDataset:
    """A copy of the File Meta with the transfer syntax pydicom detected while reading."""
    meta = copy.deepcopy(getattr(ds, "file_meta", None) or FileMetaDataset())
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is False:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    else:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return meta


def _looks_like_dicom(ds: Dataset) -> bool:
    return any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "PixelData", "Modality"))


def _not_dicom_error(name: str, ds: Dataset) -> DecodeError:
    if _transfer_syntax(ds) or getattr(ds, "preamble", None):
        return DecodeError(
            f"{name} has a DICOM header but no readable dataset (truncated or damaged file)",
            reason=DecodeReason.DAMAGED_FILE,
        )
    return DecodeError(
        f"{name} is not a DICOM file (no SOP Class, SOP Instance or Pixel Data)", reason=DecodeReason.NOT_DICOM
    )


def _sop_instance_uid(ds: Dataset) -> str | None:
    value = ds.get("SOPInstanceUID")
    return str(value) if value else None


# --- helpers ------------------------------------------------------------------------------------


def _decode_frame(ds: Dataset, index: int, uid: str | None) -> np.ndarray:
    """Run :func:`_display_frame`, turning any library error into a DecodeError with the reason."""
    try:
        return _display_frame(ds, index, uid)
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError, ...
        syntax = _transfer_syntax(ds)
        compressed = syntax is not None and UID(str(syntax)).is_compressed
        reason = DecodeReason.CODEC_FAILED if compressed else DecodeReason.PIXEL_DATA_SHORT
        if not compressed and "less than expected" not in str(exc):
            reason = DecodeReason.INVALID_HEADER
        raise DecodeError(
            f"pixel data of frame {index + 1} could not be decoded: {_one_line(exc)}",
            sop_instance_uid=uid,
            reason=reason,
        ) from exc


@contextmanager
def _pydicom_warnings_logged(uid: str | None) -> Iterator[None]:
    """Log the DICOM libraries' warnings about a malformed input instead of raising them.

    Received files are untrusted and often slightly wrong (odd lengths, missing delimiters, invalid
    values); pydicom and the codecs report that as UserWarning, which is worth a log line with the
    UID, not a failure. The text may quote attribute values (a patient's name), so it is logged at
    DEBUG only, as ``logconfig`` does for other library warnings. Other warnings (numpy's
    RuntimeWarning, deprecations) are re-issued.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        if issubclass(item.category, UserWarning):
            extra = {"action": "decode.warning", "sop_instance_uid": uid}
            origin = "/".join(Path(item.filename).parts[-2:])
            logger.warning(
                "input warning %s from %s (text withheld: it may quote patient data; run with -v to see it)",
                item.category.__name__,
                origin,
                extra=extra,
            )
            logger.debug("input warning text: %s", item.message, extra=extra)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _unit(values: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(values / np.float32(max(full_scale, 1.0)), 0.0, 1.0).astype(np.float32, copy=False)


def _pil_to_array(img: Any) -> tuple[np.ndarray, float]:
    """Return a PIL image as an array and the value that means full brightness."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        return arr, 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
    if img.mode not in ("L", "RGB", "RGBA", "LA"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if img.mode == "LA":
        arr = arr[..., 0]
    return arr, 255.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)
