"""The whole node over loopback: a modality sends a study, the PACS receives SEG, SR and SC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import SegmentationStorage
from sqlalchemy import select

from miemss_node.config import Config
from miemss_node.node import Node
from miemss_node.queue.models import Delivery, DeliveryState, Job, JobState
from tests.conftest import pacs_destination
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.paths import shared_file, wg04_chest_cr
from tests.support.peers import PacsScp, store_files

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33"}
SC_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"}


def kinds(received: list[Dataset]) -> dict[str, list[Dataset]]:
    found: dict[str, list[Dataset]] = {"SEG": [], "SR": [], "SC": []}
    for ds in received:
        uid = str(ds.SOPClassUID)
        kind = "SEG" if uid == SegmentationStorage else "SR" if uid in SR_CLASSES else "SC" if uid in SC_CLASSES else "?"
        found.setdefault(kind, []).append(ds)
    return found


def sr_text(ds: Dataset) -> str:
    """Every TEXT value anywhere in the SR content tree, joined."""
    texts: list[str] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT":
                texts.append(str(item.TextValue))
            walk(list(item.get("ContentSequence", [])))

    walk(list(ds.ContentSequence))
    return "\n".join(texts)


def round_trip_errors(ds: Dataset, folder: Path) -> list[str]:
    path = folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dciodvfy_errors(path)


def send_and_collect(
    source: Path, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], pacs: PacsScp
) -> tuple[Node, dict[str, list[Dataset]]]:
    node = node_factory(config_factory(destinations=(pacs_destination(pacs),)))
    assert store_files([source], node.port) == [0x0000]
    received = pacs.wait_for(lambda got: any(kinds(got)["SR"]) and any(kinds(got)["SC"]), timeout=120)
    return node, kinds(received)


@pytest.mark.slow
def test_chest_cr_gets_seg_sr_and_sc_back(
    tmp_path: Path, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], pacs: PacsScp
) -> None:
    source_path = wg04_chest_cr()
    source = dcmread(source_path)
    node, found = send_and_collect(source_path, config_factory, node_factory, pacs)
    (sr,) = found["SR"]
    (sc,) = found["SC"]
    for result in (sr, sc, *found["SEG"]):
        assert result.StudyInstanceUID == source.StudyInstanceUID
        assert result.SeriesInstanceUID != source.SeriesInstanceUID
        assert round_trip_errors(result, tmp_path) == []
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    text = sr_text(sr)
    assert sr.VerificationFlag == "UNVERIFIED"
    assert "Abnormality score" in text
    if found["SEG"]:
        (seg,) = found["SEG"]
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert referenced == source.SOPInstanceUID
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
        assert np.asarray(seg.pixel_array).any()
        assert f"{len(seg.SegmentSequence)} region" in text
    else:
        assert "No anomalous region" in text
    with node.sessions() as session:
        job = session.scalars(select(Job)).one()
        delivery = session.scalars(select(Delivery)).one()
    assert (job.state, delivery.state, job.attempts) == (JobState.DELIVERED, DeliveryState.DELIVERED, 1)


def test_three_series_study_gets_one_sr_for_all_images(
    tmp_path: Path, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], pacs: PacsScp
) -> None:
    paths = sorted(shared_file("dicom/xray/study_cr_cspine_16x16").glob("*.dcm"))
    node = node_factory(config_factory(destinations=(pacs_destination(pacs),)))
    assert store_files(paths, node.port) == [0x0000] * 3
    received = pacs.wait_for(lambda got: len(kinds(got)["SC"]) == 3 and any(kinds(got)["SR"]), timeout=120)
    found = kinds(received)
    assert len(found["SR"]) == 1
    sources = {dcmread(p).SOPInstanceUID for p in paths}
    assert {sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in found["SC"]} == sources
    for result in received:
        assert round_trip_errors(result, tmp_path) == []


def test_study_without_images_is_stored_and_nothing_is_sent(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], pacs: PacsScp
) -> None:
    sr_path = shared_file("dicom/nonimage/sr_tid1500_highdicom.dcm")
    node = node_factory(config_factory(destinations=(pacs_destination(pacs),)))
    assert store_files([sr_path], node.port) == [0x0000]
    for _ in range(300):
        with node.sessions() as session:
            job = session.scalars(select(Job)).one_or_none()
            results = [] if job is None else list(job.results)
        if job is not None and job.state is JobState.DELIVERED:
            break
        node.wait(0.1)
    assert job is not None and job.state is JobState.DELIVERED and results == []
    assert pacs.attempts == 0


def test_multiframe_image_is_analysed_up_to_max_frames(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], pacs: PacsScp
) -> None:
    source = shared_file("dicom/xray/xa_multiframe_96f_jpegbaseline.dcm")
    node = node_factory(config_factory(destinations=(pacs_destination(pacs),), worker={"max_frames": 2}))
    assert store_files([source], node.port) == [0x0000]
    received = pacs.wait_for(lambda got: any(kinds(got)["SR"]), timeout=120)
    frames = sorted(int(sc.SourceImageSequence[0].ReferencedFrameNumber) for sc in kinds(received)["SC"])
    assert frames == [1, 2]
