"""A study's images analysed side by side in a pool of processes give exactly the results of the same
study analysed one image after the other: the same objects, the same UIDs, the same content."""

from __future__ import annotations

import copy
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from miemss_node.config import Config, Destination
from miemss_node.encode.overlay import remember_overlay, render_analysis_overlay
from miemss_node.encode.templates import load_templates
from miemss_node.images import ImagePool, ImagePoolBroken, ordered_runs
from miemss_node.node import Node
from miemss_node.pipeline.base import ModelRun
from miemss_node.queue.models import JobState
from miemss_node.worker import Worker
from tests.support.jobs import job_of, wait_for_job
from tests.support.net import free_port
from tests.support.paths import shared_file
from tests.support.peers import store_datasets

#: The result types whose content does not embed the time it was made (the PDF and the GSPS, with its
#: Presentation Creation Date and Time, do).
KINDS = ("SEG", "SR", "SC", "PM", "KO")


def one_study() -> list[Dataset]:
    """Four different images of one patient in one study (a chest film, a CT, an MR and one that no
    decoder reads), so the order of the images and a skipped image both show in the results."""
    files = [
        shared_file("dicom/transfer_syntaxes/cr_chest_barre_derived/explicit_le.dcm"),
        Path(str(get_testdata_file("CT_small.dcm"))),
        Path(str(get_testdata_file("MR_small.dcm"))),
        Path(str(get_testdata_file("JPEG-lossy.dcm"))),
    ]
    study_uid = generate_uid()
    study = []
    for number, path in enumerate(files, start=1):
        ds = copy.deepcopy(dcmread(path))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.InstanceNumber = "POOL-TEST", "Pool^Test", number
        study.append(ds)
    return study


#: Made afresh by highdicom each time a SEG is built (a retry too): not one of the UIDs we derive.
RANDOM_UIDS = ("DimensionOrganizationUID",)


def without_times(ds: Dataset) -> Dataset:
    """A copy without the date and time elements (when the object was made) and highdicom's random
    UIDs, at every level."""
    copied = copy.deepcopy(ds)

    def strip(dataset: Dataset) -> None:
        for element in list(dataset):
            if element.VR in ("DA", "TM", "DT") or element.keyword in RANDOM_UIDS:
                del dataset[element.tag]
            elif element.VR == "SQ":
                for item in element.value:
                    strip(item)

    strip(copied)
    return copied


def results_of(
    config: Config, node_factory: Callable[[Config], Node], study: list[Dataset], processes: int
) -> dict[str, Dataset]:
    """Receive the study, run its job with ``processes`` image processes; its results by file name."""
    node = node_factory(config)
    assert store_datasets(study, node.port) == [0x0000] * len(study)
    job_id = wait_for_job(node)
    worker = Worker(node.sessions, config, image_processes=processes)
    try:
        assert worker.run_once() == 1
        if processes > 1:  # the images were analysed by the pool's processes, children of this one
            assert worker.pool is not None and len(multiprocessing.active_children()) == processes
    finally:
        worker.close()
    job = job_of(node, job_id)
    assert job.state is JobState.ENCODED, job.last_error
    return {Path(r.path).name: dcmread(config.node.storage_dir / r.path) for r in job.results}


def test_pool_and_serial_give_the_same_objects_uids_and_content(
    tmp_path: Path, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    study = one_study()
    destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port(), result_types=KINDS)
    outputs = {}
    for processes in (1, 2):
        # A low threshold, so that regions (and so SEGs) are found.
        config = config_factory(destinations=(destination,), pipeline={"threshold": 0.1})
        config = replace(
            config,
            node=replace(config.node, storage_dir=tmp_path / f"processes-{processes}"),
            worker=replace(config.worker, count=0),
        )
        outputs[processes] = results_of(config, node_factory, study, processes)
    serial, pooled = outputs[1], outputs[2]
    assert sorted(pooled) == sorted(serial)  # the file names hold kind and SOP Instance UID
    assert {name.split("_")[0] for name in serial} == set(KINDS)
    for name, ds in serial.items():
        mine, theirs = without_times(pooled[name]), without_times(ds)
        differing = [e.keyword or str(e.tag) for e in theirs if e.tag not in mine or mine[e.tag] != e]
        assert mine == theirs, f"{name}: {differing}"
    sr = next(ds for name, ds in serial.items() if name.startswith("SR_"))
    undecodable = f"Instance {study[3].SOPInstanceUID} was not analysed"
    assert any(undecodable in text for text in texts_of(sr)), "the report names the image no decoder read"


def texts_of(dataset: Dataset) -> list[str]:
    """Every Text Value of an SR's content tree."""
    found = [str(dataset.TextValue)] if "TextValue" in dataset else []
    for item in dataset.get("ContentSequence", []):
        found += texts_of(item)
    return found


def test_runs_of_models_in_two_processes_keep_the_order_of_one() -> None:
    vit, blip, chest = (ModelRun(role=role, name=role, revision="r") for role in ("vit", "blip", "chest"))
    assert ordered_runs((blip, chest, vit)) == (vit, blip, chest)


def test_a_pool_needs_two_processes(config_factory: Callable[..., Config]) -> None:
    with pytest.raises(ValueError, match="at least 2 processes"):
        ImagePool(config_factory(), 1)


def test_a_pool_process_that_dies_fails_the_attempt_and_the_next_call_gets_a_new_pool(
    tmp_path: Path, config_factory: Callable[..., Config]
) -> None:
    ct = Path(str(get_testdata_file("CT_small.dcm")))
    files = [(str(dcmread(ct).SOPInstanceUID), ct)]
    pool = ImagePool(config_factory(), 2)
    try:
        pool.warm()
        first = multiprocessing.active_children()
        assert len(first) == 2
        os.kill(first[0].pid, signal.SIGKILL)
        first[0].join(10)
        with pytest.raises(ImagePoolBroken, match="image pool"):
            pool.analyse(files, None)
        outcome = pool.analyse(files, None)[0]
        assert outcome.skipped is None and len(outcome.analyses) == 1
        assert {p.pid for p in multiprocessing.active_children()}.isdisjoint({p.pid for p in first})
    finally:
        pool.close()
    assert multiprocessing.active_children() == []


def test_the_pools_processes_draw_each_images_overlay_and_the_job_keeps_it(
    config_factory: Callable[..., Config],
) -> None:
    """The overlay a pool process draws is the one the job's process would draw, and once kept the SC,
    the PDF and the thumbnails take it instead of drawing it again."""
    film = Path(str(get_testdata_file("CT_small.dcm")))
    capture = load_templates().capture
    pool = ImagePool(config_factory(), 2)
    try:
        plain = pool.analyse([(str(dcmread(film).SOPInstanceUID), film)], None)[0]
        drawn = pool.analyse([(str(dcmread(film).SOPInstanceUID), film)], None, capture)[0]
        folder = pool._handover
        assert folder is not None and folder.is_dir()
        assert list(folder.iterdir()) == [], "every outcome's arrays were read back and their file removed"
    finally:
        pool.close()
    assert not folder.exists(), "the pool removes its handover folder when it closes"
    assert plain.overlays == ()
    assert len(drawn.analyses) == len(drawn.overlays) == 1
    analysis, overlay = drawn.analyses[0], drawn.overlays[0]
    assert np.array_equal(overlay, render_analysis_overlay(analysis, capture))
    kept = remember_overlay(analysis, capture, overlay)
    assert render_analysis_overlay(analysis, capture) is kept
