"""A real PACS end to end: Orthanc sends studies to the node and receives the results back.

Orthanc (Debian ``orthanc``) runs with its own JSON config, storage folder and loopback ports, with
the node declared in ``DicomModalities``; the node's ``[[destinations]]`` points at Orthanc's DICOM
port. Studies from ``../shared/data`` are uploaded through the REST API and pushed to the node with
``POST /modalities/{id}/store`` (a C-STORE from the PACS). The results are downloaded from Orthanc
and checked: same study, references to the right instances, ``dciodvfy`` without errors.
The second test plays a modality with dcmtk ``storescu`` proposing compressed transfer syntaxes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit
from sqlalchemy import select

from miemss_node.config import RESULT_TYPES, Config, Destination
from miemss_node.node import Node
from miemss_node.queue.models import Delivery, DeliveryState, Instance, Job, JobState, Study
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.net import free_port
from tests.support.orthanc import Modality, Orthanc, orthanc_binary
from tests.support.paths import shared_file
from tests.support.tools import require_tool, tool

NODE_AET = "MIEMSS"
ORTHANC_AET = "ORTHANC"
MODALITY_AET = "STORESCU"

#: Result kinds by SOP Class UID (PS3.4 B.5); other classes are checked generically.
KINDS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
    "1.2.840.10008.5.1.4.1.1.7.4": "SC",
    "1.2.840.10008.5.1.4.1.1.30": "PM",
    "1.2.840.10008.5.1.4.1.1.104.1": "PDF",
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",
    "1.2.840.10008.5.1.4.1.1.11.1": "GSPS",
}

#: Longest wait for a node to process and deliver, in seconds (normally a few).
RESULT_TIMEOUT_S = 120.0


@dataclass
class Deployment:
    """Orthanc and a node wired to each other."""

    orthanc: Orthanc
    node: Node
    folder: Path


@pytest.fixture
def deployment(tmp_path: Path, config_factory: Callable[..., Config]) -> Iterator[Deployment]:
    """Orthanc (the node declared as modality ``miemss``) and a node sending every result type to it."""
    binary = require_tool("Orthanc", orthanc_binary(), "orthanc")
    node_port = free_port()
    folder = tmp_path / "orthanc"
    folder.mkdir()
    orthanc = Orthanc(binary, folder, (Modality(name="miemss", ae_title=NODE_AET, port=node_port),), ORTHANC_AET)
    orthanc.start()
    node: Node | None = None
    try:
        destination = Destination(
            name="orthanc",
            ae_title=ORTHANC_AET,
            host="127.0.0.1",
            port=orthanc.dicom_port,
            result_types=RESULT_TYPES,
        )
        config = config_factory(
            destinations=(destination,),
            node={"ae_title": NODE_AET, "port": node_port, "allowed_calling_aets": (ORTHANC_AET, MODALITY_AET)},
        )
        node = Node(config)
        node.start()
        yield Deployment(orthanc=orthanc, node=node, folder=tmp_path)
    finally:
        # Orthanc takes seconds to close its servers: let it do so while the node stops.
        orthanc.request_stop()
        if node is not None:
            node.stop()
        orthanc.stop()


def wait_until_delivered(node: Node, study_uids: set[str], timeout: float = RESULT_TIMEOUT_S) -> None:
    """Poll the node's database until every study has a job whose every delivery is delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.sessions() as session:
            rows = session.execute(select(Study.study_instance_uid, Job).join(Job, Job.study_id == Study.id)).all()
            done = {
                uid
                for uid, job in rows
                if job.state is JobState.DELIVERED
                and job.deliveries
                and all(d.state is DeliveryState.DELIVERED for d in job.deliveries)
            }
            failed = [(uid, job.last_error) for uid, job in rows if job.state is JobState.FAILED]
            bad = [d.last_error for d in session.scalars(select(Delivery)) if d.state is DeliveryState.FAILED]
        assert not failed and not bad, f"job or delivery failed: {failed} {bad}"
        if study_uids <= done:
            return
        time.sleep(0.2)
    raise AssertionError(f"studies not processed and delivered within {timeout} s: {study_uids - done}")


def job_results(node: Node, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> kind of the results of the study's latest job."""
    with node.sessions() as session:
        job = session.scalars(
            select(Job).join(Study).where(Study.study_instance_uid == study_uid).order_by(Job.id.desc())
        ).first()
        assert job is not None
        return {result.sop_instance_uid: result.kind for result in job.results}


def wait_for_results_in_orthanc(orthanc: Orthanc, study_uid: str, expected: set[str]) -> str:
    """Poll Orthanc until the study holds every expected SOP instance; return the study's Orthanc ID."""
    deadline = time.monotonic() + 30.0
    have: set[str] = set()
    while time.monotonic() < deadline:
        study_id = orthanc.study_id(study_uid)
        if study_id is not None:
            have = set(orthanc.study_instances(study_id))
            if expected <= have:
                return study_id
        time.sleep(0.2)
    raise AssertionError(f"Orthanc lacks results of {study_uid}: {sorted(expected - have)}")


def download_results(orthanc: Orthanc, study_id: str, source_uids: set[str], folder: Path) -> list[tuple[Path, Dataset]]:
    """Download every instance of the study that is not a source: our results, as Orthanc stored them."""
    folder.mkdir(parents=True, exist_ok=True)
    downloaded = []
    for sop_uid, instance_id in orthanc.study_instances(study_id).items():
        if sop_uid in source_uids:
            continue
        data = orthanc.download(instance_id)
        path = folder / f"{sop_uid}.dcm"
        path.write_bytes(data)
        downloaded.append((path, dcmread(BytesIO(data))))
    return downloaded


def referenced_uids(item: Dataset) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in a dataset (all sequences, all depths)."""
    found: set[str] = set()
    for element in item:
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
        elif element.VR == "SQ":
            for child in element.value:
                found |= referenced_uids(child)
    return found


def check_results(results: list[tuple[Path, Dataset]], sources: list[Dataset]) -> dict[str, int]:
    """Check each result's study, references and dciodvfy; returns how many of each kind."""
    study_uid = str(sources[0].StudyInstanceUID)
    source_uids = {str(ds.SOPInstanceUID) for ds in sources}
    series_of = {str(ds.SOPInstanceUID): str(ds.SeriesInstanceUID) for ds in sources}
    result_uids = {str(ds.SOPInstanceUID) for _, ds in results}
    counts: dict[str, int] = {}
    sc_sources: list[str] = []
    for path, ds in results:
        kind = KINDS.get(str(ds.SOPClassUID), str(ds.SOPClassUID))
        counts[kind] = counts.get(kind, 0) + 1
        assert str(ds.StudyInstanceUID) == study_uid, f"{kind} is not in the source study"
        assert str(ds.SeriesInstanceUID) not in series_of.values(), f"{kind} is in a source series"
        assert str(ds.PatientID) == str(sources[0].PatientID)
        # Results reference sources of this study, or each other (the SR cites the SEG).
        references = referenced_uids(ds)
        assert references <= source_uids | result_uids, f"{kind} references unknown instances"
        if kind == "SEG":
            (series,) = ds.ReferencedSeriesSequence
            segmented = {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence}
            assert segmented and segmented <= source_uids
            assert {series_of[uid] for uid in segmented} == {str(series.SeriesInstanceUID)}
        elif kind == "SR":
            evidence = {
                str(sop.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence
            }
            assert source_uids <= evidence, "the SR does not cite every source image as evidence"
        elif kind == "SC":
            (source,) = ds.SourceImageSequence
            sc_sources.append(str(source.ReferencedSOPInstanceUID))
        elif kind == "PM":
            (source,) = ds.SourceImageSequence
            assert str(source.ReferencedSOPInstanceUID) in source_uids
            assert ds.BitsAllocated == 32, "the Parametric Map holds the float heatmap"
        elif kind == "KO":
            (image,) = [item for item in ds.ContentSequence if item.ValueType == "IMAGE"]
            assert str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) in source_uids
        elif kind == "GSPS":
            presented = {
                str(image.ReferencedSOPInstanceUID)
                for series in ds.ReferencedSeriesSequence
                for image in series.ReferencedImageSequence
            }
            assert presented == source_uids, "the GSPS presents every source image"
            layers = {str(layer.GraphicLayer) for layer in ds.GraphicLayerSequence}
            drawn = {str(annotation.GraphicLayer) for annotation in ds.GraphicAnnotationSequence}
            assert layers == {"AI_REGIONS", "AI_WARNING"}
            assert "AI_WARNING" in drawn and drawn <= layers, "the warning on every image, outlines in their layer"
        else:
            assert references & source_uids, f"{kind} references no source instance"
        assert dciodvfy_errors(path) == [], f"dciodvfy errors in {kind} {path.name}"
    assert sorted(sc_sources) == sorted(source_uids), "one SC per source image"
    return counts


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install orthanc.*CI must run every test"):
        require_tool("Orthanc", None, "orthanc")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"Orthanc not found"):
        require_tool("Orthanc", None, "orthanc")
    assert require_tool("Orthanc", "/usr/sbin/Orthanc", "orthanc") == "/usr/sbin/Orthanc"


@pytest.mark.orthanc
@pytest.mark.slow
def test_orthanc_sends_studies_and_receives_valid_results(deployment: Deployment) -> None:
    orthanc, node = deployment.orthanc, deployment.node
    studies = {
        "cspine": sorted(shared_file("dicom/xray/study_cr_cspine_16x16").glob("*.dcm")),
        "chest": [shared_file("dicom/xray/cr_chest_pa_philips_mono1_15bit_j2ki.dcm")],
    }
    sources = {name: [dcmread(path) for path in paths] for name, paths in studies.items()}
    study_uids = {name: str(datasets[0].StudyInstanceUID) for name, datasets in sources.items()}
    orthanc_ids = {}
    for name, paths in studies.items():
        answers = {orthanc.upload(path)["ParentStudy"] for path in paths}
        (orthanc_ids[name],) = answers
    assert len(orthanc.get(f"/studies/{orthanc_ids['cspine']}/series")) == 3

    # The PACS pushes both studies to the node: a C-STORE SCU association from Orthanc.
    job = orthanc.post("/modalities/miemss/store", {"Resources": list(orthanc_ids.values()), "Synchronous": True})
    assert job.get("FailedInstancesCount", 0) == 0, job

    wait_until_delivered(node, set(study_uids.values()))
    for name, datasets in sources.items():
        expected = job_results(node, study_uids[name])
        assert {"SR", "SC"} <= set(expected.values())
        study_id = wait_for_results_in_orthanc(orthanc, study_uids[name], set(expected))
        assert study_id == orthanc_ids[name], "results must land in the original study"
        source_uids = {str(ds.SOPInstanceUID) for ds in datasets}
        results = download_results(orthanc, study_id, source_uids, deployment.folder / name)
        assert {str(ds.SOPInstanceUID) for _, ds in results} == set(expected)
        counts = check_results(results, datasets)
        # Every result type: SEG per image with a region, one SR, SC and PM per image, one PDF, KO
        # and GSPS.
        images, segs = len(datasets), list(expected.values()).count("SEG")
        every = {"SR": 1, "SC": images, "PM": images, "PDF": 1, "KO": 1, "GSPS": 1}
        assert counts == every | ({"SEG": segs} if segs else {})
    # Every result series is new in the original study: 3 sources + SR, SC and perhaps SEG series.
    assert len(orthanc.get(f"/studies/{orthanc_ids['cspine']}/series")) >= 5


def storescu(port: int, path: Path, proposal: str) -> None:
    """Send one file with dcmtk's storescu, proposing only ``proposal`` plus uncompressed syntaxes."""
    binary = tool("storescu", "dcmtk")
    done = subprocess.run(
        [binary, "-R", proposal, "-aet", MODALITY_AET, "-aec", NODE_AET, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.orthanc
@pytest.mark.slow
def test_storescu_compressed_syntaxes_are_stored_as_received_and_processed(deployment: Deployment) -> None:
    orthanc, node = deployment.orthanc, deployment.node
    sent = {
        # (file, storescu proposal, the transfer syntax it must arrive and stay in)
        "jpeg": (shared_file("dicom/xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm"), "-xy", JPEGBaseline8Bit),
        "j2k": (shared_file("dicom/xray/dx_mono2_16bit_j2kr_1416x1420.dcm"), "-xv", JPEG2000Lossless),
    }
    for path, proposal, _ in sent.values():
        storescu(node.port, path, proposal)
    sources = {name: dcmread(path) for name, (path, _, _) in sent.items()}
    wait_until_delivered(node, {str(ds.StudyInstanceUID) for ds in sources.values()})

    storage = node.config.node.storage_dir
    for name, (_path, _, syntax) in sent.items():
        source = sources[name]
        assert source.file_meta.TransferSyntaxUID == syntax
        with node.sessions() as session:
            instance = session.scalars(
                select(Instance).where(Instance.sop_instance_uid == str(source.SOPInstanceUID))
            ).one()
        assert (instance.transfer_syntax_uid, instance.calling_ae_title) == (syntax, MODALITY_AET)
        stored = dcmread(storage / instance.path)
        assert stored.file_meta.TransferSyntaxUID == syntax, "the node must keep the received transfer syntax"
        assert stored.PixelData == source.PixelData, "compressed pixel data must be stored byte for byte"

        # Processed: the results are in Orthanc, in the source's study, and reference the source.
        study_uid = str(source.StudyInstanceUID)
        expected = job_results(node, study_uid)
        study_id = wait_for_results_in_orthanc(orthanc, study_uid, set(expected))
        results = download_results(orthanc, study_id, {str(source.SOPInstanceUID)}, deployment.folder / name)
        counts = check_results(results, [source])
        assert counts["SR"] == 1 and counts["SC"] == 1
