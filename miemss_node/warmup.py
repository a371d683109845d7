"""Encode a small synthetic film once while a worker waits for its first job.

The first encode of a process pays for what later ones find ready: highdicom loads its tables of the
standard (0.4 s of JSON), Pillow its font, pydicom its dictionaries. A job should not wait for them,
so :func:`warm_up_encoders` encodes a made-up 64 x 64 CR with one region into every result kind the
worker writes, and throws the result away. Nothing is written or sent; no patient data is involved.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian

from miemss_node.errors import MiemssError
from miemss_node.pipeline.base import DecodedImage, EnhancedImage, ImageAnalysis, Report

logger = logging.getLogger(__name__)

#: Side, in pixels, of the made-up film.
SIDE = 64
#: UIDs of the made-up film, under the UUID-derived root (PS3.5 B.2): they name nothing real.
_STUDY_UID = UID("2.25.1")
_SERIES_UID = UID("2.25.2")
_INSTANCE_UID = UID("2.25.3")


def warm_up_encoders(kinds: frozenset[str]) -> frozenset[str]:
    """Encode the made-up film into ``kinds`` and discard it; returns the kinds it encoded.

    A failure is logged and ignored: the first job then simply pays the first-use costs itself.
    """
    from miemss_node.encode.study import EncodeContext, encode_study

    started = time.perf_counter()
    logger.info(
        "warming up the encoders on a made-up %dx%d film (SOP Instance UID %s; nothing is kept or sent)",
        SIDE,
        SIDE,
        _INSTANCE_UID,
        extra={"action": "worker.warm_up"},
    )
    source = _made_up_source()
    analysis = _made_up_analysis(source)
    report = Report(text="warm-up", caption=None, findings=analysis.findings)
    try:
        items = encode_study([source], [analysis], report, EncodeContext(job_key="warm-up", kinds=kinds))
        encoded = frozenset(item.kind for item in items)
    except (MiemssError, ValueError, TypeError) as exc:
        logger.warning("encoder warm-up failed: %s", exc, extra={"action": "worker.warm_up_failed"})
        return frozenset()
    seconds = time.perf_counter() - started
    logger.info("encoders warmed up in %.2f s", seconds, extra={"action": "worker.warmed_up"})
    return encoded


def _made_up_source() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = _INSTANCE_UID
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = _INSTANCE_UID
    ds.StudyInstanceUID = _STUDY_UID
    ds.SeriesInstanceUID = _SERIES_UID
    ds.PatientName = "WARMUP^SYNTHETIC"
    ds.PatientID = "WARMUP"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.StudyID = ""
    ds.ReferringPhysicianName = "WARMUP^SYNTHETIC"
    ds.Modality = "CR"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.Rows = ds.Columns = SIDE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((SIDE, SIDE), dtype=np.uint8).tobytes()
    return ds


def _made_up_analysis(source: Dataset) -> ImageAnalysis:
    from miemss_node.pipeline.regions import draft_region, measure_drafts

    pixels = np.linspace(0.0, 1.0, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)
    labels = np.zeros((SIDE, SIDE), dtype=np.int32)
    labels[20:40, 24:44] = 1
    draft = draft_region(1, "image centre")
    decoded = DecodedImage(
        pixels=pixels, pixel_spacing_mm=None, sop_instance_uid=str(source.SOPInstanceUID), modality="CR"
    )
    return ImageAnalysis(
        decoded=decoded,
        enhanced=EnhancedImage(pixels=pixels, method="none"),
        features=None,
        scores=None,
        region_map=measure_drafts(labels, (labels * 0.8).astype(np.float32), [draft], None),
        findings=("A made-up region.",),
        abnormality_score=0.8,
    )
