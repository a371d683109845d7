"""Decode stage: every transfer syntax, LUTs and windows, MONOCHROME1, frames, spacing, bad input."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from miemss_node.errors import DecodeError
from miemss_node.pipeline.base import DecodedImage
from miemss_node.pipeline.decode import (
    decode_dataset,
    decode_image_file,
    is_image_dataset,
    pixel_spacing,
    read_dicom_file,
)
from tests.support.paths import shared_file, wg04_chest_cr

RG3 = "dicom/transfer_syntaxes/cr_extremity_rg3"
BARRE = "dicom/transfer_syntaxes/cr_chest_barre_derived"
PIXEL_SPACING = 0x00280030


def _testdata(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def _decode_one(path: Path) -> DecodedImage:
    (image,) = decode_dataset(read_dicom_file(path))
    return image


def _assert_display_image(image: DecodedImage, shape: tuple[int, int]) -> None:
    assert image.pixels.shape == shape
    assert image.pixels.dtype == np.float32
    assert 0.0 <= float(image.pixels.min()) and float(image.pixels.max()) <= 1.0


# --- what is an image -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "US1_J2KR.dcm"])
def test_images_are_images(name: str) -> None:
    assert is_image_dataset(read_dicom_file(_testdata(name)))


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtstruct.dcm", "rtdose.dcm", "waveform_ecg.dcm", "rtplan.dcm"])
def test_reports_rt_objects_and_waveforms_are_not_images(name: str) -> None:
    assert not is_image_dataset(read_dicom_file(_testdata(name)))


@pytest.mark.parametrize(
    "relative",
    ["dicom/nonimage/seg_on_cr1_6154_highdicom_binary.dcm", "dicom/nonimage/seg_liver_on_ct_series_3slices_dcmqi.dcm"],
)
def test_real_segmentations_are_not_images_despite_pixel_data(relative: str) -> None:
    ds = read_dicom_file(shared_file(relative))
    assert "PixelData" in ds
    assert not is_image_dataset(ds)


def test_segmentation_sop_class_alone_is_not_an_image() -> None:
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    del ds.Modality
    assert not is_image_dataset(ds)


def test_decoding_a_report_names_the_reason() -> None:
    ds = read_dicom_file(_testdata("test-SR.dcm"))
    with pytest.raises(DecodeError, match="not an image to analyse"):
        decode_dataset(ds)


# --- transfer syntaxes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rg3_j2kr.dcm", "rg3_jlsl.dcm", "rg3_jpll.dcm", "rg3_rle.dcm"])
def test_lossless_syntaxes_of_rg3_decode_identically(name: str) -> None:
    reference = _decode_one(shared_file(f"{RG3}/rg3_unc.dcm"))
    decoded = _decode_one(shared_file(f"{RG3}/{name}"))
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)


@pytest.mark.parametrize("name", ["rg3_j2ki.dcm", "rg3_jlsn.dcm"])
def test_lossy_syntaxes_of_rg3_decode_close_to_the_reference(name: str) -> None:
    reference = _decode_one(shared_file(f"{RG3}/rg3_unc.dcm"))
    decoded = _decode_one(shared_file(f"{RG3}/{name}"))
    assert float(np.abs(decoded.pixels - reference.pixels).max()) < 0.02


@pytest.mark.parametrize(
    "relative",
    [
        f"{BARRE}/explicit_be.dcm",
        f"{BARRE}/deflated.dcm",
        f"{BARRE}/jpeg_lossless_p14.dcm",
        f"{BARRE}/jpeg2000_lossless_gdcm.dcm",
        "dicom/xray/cr_chest_fuji_mono1_10bit_nometa_implicit.dcm",
    ],
)
def test_big_endian_deflated_and_no_meta_files_decode_like_explicit_le(relative: str) -> None:
    reference = _decode_one(shared_file(f"{BARRE}/explicit_le.dcm"))
    np.testing.assert_array_equal(_decode_one(shared_file(relative)).pixels, reference.pixels)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ],
)
def test_bundled_lossless_variants_decode_identically(name: str, reference: str) -> None:
    np.testing.assert_array_equal(_decode_one(_testdata(name)).pixels, _decode_one(_testdata(reference)).pixels)


@pytest.mark.parametrize(
    "name", ["JPEG2000.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm", "CT_small.dcm"]
)
def test_bundled_compressed_and_deflated_files_decode(name: str) -> None:
    ds = read_dicom_file(_testdata(name))
    _assert_display_image(_decode_one(_testdata(name)), (int(ds.Rows), int(ds.Columns)))


def test_a_raw_dataset_without_preamble_or_file_meta_decodes(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testdata("MR_small.dcm"))
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    path = tmp_path / "raw.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)

    read = read_dicom_file(path)

    assert read.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    np.testing.assert_array_equal(_decode_one(path).pixels, _decode_one(_testdata("MR_small.dcm")).pixels)


def test_a_dataset_without_transfer_syntax_is_decoded_without_being_modified() -> None:
    ds = pydicom.dcmread(_testdata("MR_small.dcm"))
    del ds.file_meta.TransferSyntaxUID

    (image,) = decode_dataset(ds)

    assert "TransferSyntaxUID" not in ds.file_meta
    assert image.pixels.shape == (64, 64)


def test_undecodable_jpeg_extended_raises_decode_error_with_the_reason() -> None:
    ds = read_dicom_file(shared_file(f"{RG3}/rg3_jply.dcm"))
    with pytest.raises(DecodeError, match="could not be decoded: .*JPEG") as raised:
        decode_dataset(ds)
    assert raised.value.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_corrupt_pixel_data_raises_decode_error(name: str) -> None:
    ds = read_dicom_file(_testdata(name))
    with pytest.raises(DecodeError, match="pixel data of frame 1 could not be decoded"):
        decode_dataset(ds)


# --- grey levels --------------------------------------------------------------------------------


def test_monochrome1_is_inverted_after_rescale_and_window() -> None:
    """CR1_6154: MONOCHROME1, rescale 0.684/200, window 1600/2800 (PS3.3 C.11.2.1.2.1)."""
    path = shared_file("dicom/xray/study_cr_cspine_16x16/CR1_6154.dcm")
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    values = stored * 0.684 + 200
    expected = 1.0 - np.clip((values - (1600 - 0.5)) / (2800 - 1) + 0.5, 0.0, 1.0)

    image = _decode_one(path)

    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)


def test_monochrome1_chest_is_brightest_where_stored_values_are_lowest() -> None:
    ds = read_dicom_file(wg04_chest_cr())
    stored = ds.pixel_array.astype(np.float64)
    image = _decode_one(wg04_chest_cr())
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    order = np.argsort(stored, axis=None, kind="stable")[::4096]
    assert np.all(np.diff(image.pixels.ravel()[order]) <= 1e-6)
    assert np.corrcoef(stored.ravel()[::97], image.pixels.ravel()[::97])[0, 1] < -0.99


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("LINEAR_EXACT", lambda x, c, w: np.clip((x - c) / w + 0.5, 0.0, 1.0)),
        ("SIGMOID", lambda x, c, w: 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))),
    ],
)
def test_voi_lut_functions(function: str, expected: Callable[[np.ndarray, float, float], np.ndarray]) -> None:
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = round(float(np.median(values))), round(float(np.ptp(values)) / 2)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function

    (image,) = decode_dataset(ds)

    np.testing.assert_allclose(image.pixels, expected(values, center, width), atol=1e-5)


def test_voi_lut_sequence_is_applied() -> None:
    ds = pydicom.dcmread(_testdata("vlut_04.dcm"))
    item = ds.VOILUTSequence[0]
    table = np.asarray(item.LUTData, dtype=np.float64)
    first = int(item.LUTDescriptor[1])
    stored = ds.pixel_array.astype(np.intp)
    expected = (table[np.clip(stored - first, 0, table.size - 1)] - table.min()) / (table.max() - table.min())

    np.testing.assert_allclose(_decode_one(_testdata("vlut_04.dcm")).pixels, expected, atol=1e-6)


@pytest.mark.parametrize("source", ["pydicom:mlut_18.dcm", "shared:dicom/xray/cr_dental_mono1_modalitylutseq_jpll.dcm"])
def test_modality_lut_sequence_orders_grey_levels(source: str) -> None:
    where, name = source.split(":")
    path = _testdata(name) if where == "pydicom" else shared_file(name)
    ds = pydicom.dcmread(path)
    modality = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    sign = -1.0 if ds.PhotometricInterpretation == "MONOCHROME1" else 1.0
    decoded = _decode_one(path).pixels.ravel()
    order = np.argsort(modality, axis=None, kind="stable")
    assert np.all(sign * np.diff(decoded[order]) >= -1e-6)


def test_percentile_window_excludes_padding_and_paints_it_black() -> None:
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    stored = ds.pixel_array
    ds.PixelPaddingValue = int(stored.min())
    padding = stored == stored.min()

    (image,) = decode_dataset(ds)

    assert np.all(image.pixels[padding] == 0.0)
    inside = image.pixels[~padding]
    assert float(inside.max()) == 1.0
    assert 0.001 <= float(np.mean(inside == 0.0)) <= 0.01  # the 0.5th percentile, not the padding


def test_a_header_window_that_saturates_the_image_is_replaced() -> None:
    """dx_mono2_16bit_j2kr: stored 32744..65535 under a window of 2725/5310."""
    image = _decode_one(shared_file("dicom/xray/dx_mono2_16bit_j2kr_1416x1420.dcm"))
    assert float(np.mean((image.pixels == 0.0) | (image.pixels == 1.0))) < 0.05


@pytest.mark.parametrize(
    "name", ["US1_J2KR.dcm", "SC_rgb_jpeg_dcmtk.dcm", "OT-PAL-8-face.dcm", "SC_ybr_full_uncompressed.dcm"]
)
def test_colour_images_become_luminance(name: str) -> None:
    ds = read_dicom_file(_testdata(name))
    image = _decode_one(_testdata(name))
    _assert_display_image(image, (int(ds.Rows), int(ds.Columns)))
    assert float(image.pixels.std()) > 0.05


def test_rgb_luminance_uses_bt601_weights() -> None:
    ds = pydicom.dcmread(_testdata("SC_rgb.dcm"))
    rgb = ds.pixel_array.astype(np.float64)
    expected = (rgb @ [0.299, 0.587, 0.114]) / 255.0
    np.testing.assert_allclose(_decode_one(_testdata("SC_rgb.dcm")).pixels, expected, atol=1e-5)


# --- frames and spacing -------------------------------------------------------------------------


def test_multiframe_gives_one_image_per_frame_numbered_from_one() -> None:
    images = decode_dataset(read_dicom_file(_testdata("emri_small.dcm")))
    assert [image.frame_number for image in images] == list(range(1, 11))
    assert all(image.pixels.shape == (64, 64) for image in images)
    assert not np.array_equal(images[0].pixels, images[5].pixels)


def test_multiframe_jpeg_xa_gives_96_frames() -> None:
    images = decode_dataset(read_dicom_file(shared_file("dicom/xray/xa_multiframe_96f_jpegbaseline.dcm")))
    assert len(images) == 96
    assert images[-1].frame_number == 96
    assert images[0].modality == "XA"


def test_single_frame_has_no_frame_number_and_carries_its_uid() -> None:
    ds = read_dicom_file(_testdata("CT_small.dcm"))
    image = _decode_one(_testdata("CT_small.dcm"))
    assert image.frame_number is None
    assert image.sop_instance_uid == ds.SOPInstanceUID
    assert image.modality == "CT"


def test_pixel_spacing_zero_is_unknown() -> None:
    """The WG04 CRs store a Pixel Spacing of 0."""
    assert _decode_one(wg04_chest_cr()).pixel_spacing_mm is None


def test_pixel_spacing_comes_from_pixel_spacing_then_imager_pixel_spacing() -> None:
    assert _decode_one(_testdata("CT_small.dcm")).pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    ds = Dataset()
    ds.ImagerPixelSpacing = [0.1, 0.2]
    assert pixel_spacing(ds) == pytest.approx((0.1, 0.2))
    ds.PixelSpacing = [0.3, 0.4]
    assert pixel_spacing(ds) == pytest.approx((0.3, 0.4))


def test_pixel_spacing_from_functional_groups_per_frame_first() -> None:
    def measures(spacing: list[float]) -> Dataset:
        item = Dataset()
        item.PixelSpacing = spacing
        group = Dataset()
        group.PixelMeasuresSequence = Sequence([item])
        return group

    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = Sequence([measures([0.5, 0.5])])
    assert pixel_spacing(ds, 0) == pytest.approx((0.5, 0.5))
    ds.PerFrameFunctionalGroupsSequence = Sequence([measures([0.7, 0.8]), Dataset()])
    assert pixel_spacing(ds, 0) == pytest.approx((0.7, 0.8))
    assert pixel_spacing(ds, 1) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("value", [b"0\\0", b"-1.0\\0.5", b"0.5 ", b"abc\\0.5 ", b"nan\\1.0"])
def test_invalid_pixel_spacing_is_unknown(value: bytes) -> None:
    """As read from a file: the raw value is only parsed (and warned about) when accessed."""
    ds = Dataset()
    ds[PIXEL_SPACING] = RawDataElement(Tag(PIXEL_SPACING), "DS", len(value), value, 0, False, True)
    assert pixel_spacing(ds) is None


# --- files that are not DICOM -------------------------------------------------------------------


def test_a_png_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "picture.dcm"
    Image.new("L", (8, 8)).save(path, format="PNG")
    with pytest.raises(DecodeError, match="is not a DICOM file"):
        read_dicom_file(path)


def test_an_empty_file_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    with pytest.raises(DecodeError, match="is not a DICOM file"):
        read_dicom_file(path)


def test_a_truncated_file_is_reported_and_its_warning_logged(caplog: pytest.LogCaptureFixture) -> None:
    path = shared_file("dicom/malformed/derived_rg3_j2ki_truncated_60pct.dcm")
    with caplog.at_level(logging.DEBUG, logger="miemss_node.pipeline.decode"):
        with pytest.raises(DecodeError, match="truncated or damaged"):
            read_dicom_file(path)
    ours = [record for record in caplog.records if record.name == "miemss_node.pipeline.decode"]
    warning = next(record for record in ours if record.levelno == logging.WARNING)
    assert "UserWarning from pydicom/" in warning.getMessage()
    assert "End of file" not in warning.getMessage()  # the text may quote patient data
    assert any("End of file reached before delimiter" in record.getMessage() for record in ours)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_dicom_file(tmp_path / "missing.dcm")


# --- PNG and JPEG -------------------------------------------------------------------------------


def test_png_8_and_16_bit_grey_scale_to_their_full_range(tmp_path: Path) -> None:
    grey8 = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    grey16 = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    Image.fromarray(grey16).save(tmp_path / "g16.png")

    np.testing.assert_allclose(decode_image_file(tmp_path / "g8.png").pixels, grey8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(decode_image_file(tmp_path / "g16.png").pixels, grey16 / 65535.0, atol=1e-6)


def test_rgb_jpeg_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "green.jpg", quality=100)

    image = decode_image_file(tmp_path / "green.jpg")

    assert image.pixels.shape == (16, 16)
    assert image.pixel_spacing_mm is None
    assert image.sop_instance_uid is None
    assert float(image.pixels.mean()) == pytest.approx(0.587 * 200 / 255, abs=0.02)


@pytest.mark.parametrize(
    "relative",
    [
        "images/nih_00000001_000_cardiomegaly_1024.png",
        "images/derived_cr_chest_rg1_windowed_8bit.jpg",
        "images/derived_cr_chest_rg1_16bit.png",
    ],
)
def test_real_png_and_jpeg_radiographs_decode(relative: str) -> None:
    path = shared_file(relative)
    with Image.open(path) as img:
        shape = (img.height, img.width)
    _assert_display_image(decode_image_file(path), shape)


def test_a_file_that_is_no_picture_raises_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image", encoding="utf-8")
    with pytest.raises(DecodeError, match="could not be read as PNG/JPEG"):
        decode_image_file(path)


def test_explicit_le_is_the_default_transfer_syntax_for_explicit_files_without_meta(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testdata("MR_small.dcm"))
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    path = tmp_path / "explicit.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)

    assert read_dicom_file(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
