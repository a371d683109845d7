"""Every file of the shared DICOM corpus is either processed or refused with a named reason.

The expectations are listed by file name below. A file of the corpus that is not listed (the holdout
corpus has others) must still end one of the three ways: analysed, recognised as a non-image, or
refused with a :class:`~miemss_node.errors.DecodeError` whose ``reason`` is a
:class:`~miemss_node.pipeline.decode.DecodeReason`. Multi-frame images are analysed on their first
:data:`MAX_FRAMES` frames, so the whole walk stays well under a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from miemss_node.errors import DecodeError
from miemss_node.pipeline.base import PipelineSettings
from miemss_node.pipeline.decode import DecodeReason, is_image_dataset, read_dicom_file
from miemss_node.pipeline.runner import analyse_dataset
from tests.support.paths import SHARED_DATA

CORPUS = SHARED_DATA / "dicom"

#: Frames analysed per multi-frame image.
MAX_FRAMES = 2

PROCESSED = "processed"
NON_IMAGE = "non-image"

#: Expected outcome per file (relative to ``dicom/``): "processed", "non-image", or a DecodeReason.
EXPECTED: dict[str, str] = {
    "xray/cr_chest_pa_philips_mono1_15bit_j2ki.dcm": PROCESSED,
    "xray/cr_chest_pa_philips_mono1_15bit_uncompressed.dcm": PROCESSED,
    "xray/cr_chest_fuji_mono1_10bit_nometa_implicit.dcm": PROCESSED,
    "xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm": PROCESSED,
    "xray/dx_thorax_canine_fuji_mono1_8bit.dcm": PROCESSED,
    "xray/dx_mono2_16bit_j2kr_1416x1420.dcm": PROCESSED,
    "xray/cr_dental_mono1_modalitylutseq_jpll.dcm": PROCESSED,
    "xray/xa_multiframe_96f_jpegbaseline.dcm": PROCESSED,
    "xray/study_cr_cspine_16x16/CR1_6154.dcm": PROCESSED,
    "xray/study_cr_cspine_16x16/CR2_6247.dcm": PROCESSED,
    "xray/study_cr_cspine_16x16/CR3_6278.dcm": PROCESSED,
    "nonimage/seg_on_cr1_6154_highdicom_binary.dcm": NON_IMAGE,
    "nonimage/sr_tid1500_highdicom.dcm": NON_IMAGE,
    "nonimage/sr_dcmtk_test.dcm": NON_IMAGE,
    "nonimage/seg_liver_on_ct_series_3slices_dcmqi.dcm": NON_IMAGE,
    "transfer_syntaxes/cr_extremity_rg3/rg3_unc.dcm": PROCESSED,
    "transfer_syntaxes/cr_extremity_rg3/rg3_j2kr.dcm": PROCESSED,
    "transfer_syntaxes/cr_extremity_rg3/rg3_j2ki.dcm": PROCESSED,
    "transfer_syntaxes/cr_extremity_rg3/rg3_jlsl.dcm": PROCESSED,
    "transfer_syntaxes/cr_extremity_rg3/rg3_jlsn.dcm": PROCESSED,
    "transfer_syntaxes/cr_extremity_rg3/rg3_jpll.dcm": PROCESSED,
    "transfer_syntaxes/cr_extremity_rg3/rg3_rle.dcm": PROCESSED,
    # WG04's own encoder bug (SOS Se=0 in a sequential JPEG): pylibjpeg and GDCM both refuse it.
    "transfer_syntaxes/cr_extremity_rg3/rg3_jply.dcm": DecodeReason.CODEC_FAILED,
    "transfer_syntaxes/cr_chest_barre_derived/explicit_le.dcm": PROCESSED,
    "transfer_syntaxes/cr_chest_barre_derived/explicit_be.dcm": PROCESSED,
    "transfer_syntaxes/cr_chest_barre_derived/deflated.dcm": PROCESSED,
    "transfer_syntaxes/cr_chest_barre_derived/jpeg_lossless_p14.dcm": PROCESSED,
    "transfer_syntaxes/cr_chest_barre_derived/jpeg_extended_12bit.dcm": PROCESSED,
    "transfer_syntaxes/cr_chest_barre_derived/jpeg2000_lossless_gdcm.dcm": PROCESSED,
    "other/ct_series_3slices/ct_01.dcm": PROCESSED,
    "other/ct_series_3slices/ct_02.dcm": PROCESSED,
    "other/ct_series_3slices/ct_03.dcm": PROCESSED,
    "other/mr_small_64x64.dcm": PROCESSED,
    "other/mr_enhanced_multiframe_10f.dcm": PROCESSED,
    "other/us_rgb_ge_rle.dcm": PROCESSED,
    "other/us_palette_2frame_rle.dcm": PROCESSED,
    "malformed/real_mr_truncated_pixeldata.dcm": DecodeReason.PIXEL_DATA_SHORT,
    "malformed/real_emri_j2k_too_short.dcm": DecodeReason.DAMAGED_FILE,
    "malformed/real_j2k_embedded_seq_delimiter.dcm": DecodeReason.CODEC_FAILED,
    "malformed/derived_rg3_j2ki_truncated_60pct.dcm": DecodeReason.DAMAGED_FILE,
    "malformed/derived_siim_truncated_header_300b.dcm": DecodeReason.DAMAGED_FILE,
    "malformed/derived_empty_0bytes.dcm": DecodeReason.NOT_DICOM,
    "malformed/derived_png_named_dcm.dcm": DecodeReason.NOT_DICOM,
}


def _corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file())


FILES = _corpus_files()


def _outcome(path: Path) -> tuple[str, int]:
    """Process one file as the worker does: (outcome, frames analysed)."""
    try:
        ds = read_dicom_file(path)
        if not is_image_dataset(ds):
            return NON_IMAGE, 0
        analyses = analyse_dataset(ds, PipelineSettings(), max_frames=MAX_FRAMES)
    except DecodeError as exc:
        assert str(exc), "a refusal must say why"
        return DecodeReason(exc.reason).value, 0
    for analysis in analyses:
        assert analysis.region_map.labels.shape == analysis.decoded.pixels.shape
    return PROCESSED, len(analyses)


@pytest.mark.skipif(not FILES, reason=f"shared corpus not available: {CORPUS}")
@pytest.mark.parametrize("relative", FILES or ["-"])
def test_every_corpus_file_is_processed_or_refused_with_a_reason(relative: str) -> None:
    outcome, frames = _outcome(CORPUS / relative)
    expected = EXPECTED.get(relative)
    if expected is None:
        # Not listed (another corpus): any of the three clean outcomes will do.
        assert outcome in {PROCESSED, NON_IMAGE, *(reason.value for reason in DecodeReason)}
    else:
        assert outcome == str(getattr(expected, "value", expected))
    if outcome == PROCESSED:
        assert frames >= 1


@pytest.mark.skipif(not FILES, reason=f"shared corpus not available: {CORPUS}")
def test_every_listed_file_is_in_the_corpus() -> None:
    missing = sorted(set(EXPECTED) - set(FILES))
    assert not missing, f"listed but not in {CORPUS}: {missing}"


@pytest.mark.skipif(not FILES, reason=f"shared corpus not available: {CORPUS}")
def test_multi_frame_images_are_analysed_frame_by_frame() -> None:
    outcome, frames = _outcome(CORPUS / "xray/xa_multiframe_96f_jpegbaseline.dcm")
    assert (outcome, frames) == (PROCESSED, MAX_FRAMES)
