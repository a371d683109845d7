"""Every result exactly once, each destination on its own, and later versions superseding earlier
ones: real ``serve`` processes against real PACS peers (issue 13, rows 1 to 3)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom import Dataset
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from miemss_node.queue.models import Delivery, DeliveryState, Job, JobState
from miemss_node.result_kinds import RESULT_KINDS, SERIES_NUMBER_VERSION_STEP
from tests.support.databases import postgres_schema_url, postgres_unavailable_reason
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.net import free_port
from tests.support.paths import shared_file
from tests.support.peers import PacsScp, store_datasets
from tests.support.served import ServedNode
from tests.support.studies import copies_as_new_study

SOURCE = "dicom/xray/study_cr_cspine_16x16/CR1_6154.dcm"
SR_CLASS = next(kind.sop_class_uid for kind in RESULT_KINDS if kind.name == "SR")
ALL_TYPES = "[" + ", ".join(f"'{kind.name}'" for kind in RESULT_KINDS) + "]"


def write_config(folder: Path, name: str, port: int, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f"[node]\nport = {port}\nstorage_dir = 'storage'\n{body}", encoding="utf-8")
    return path


def destination(name: str, pacs: PacsScp, result_types: str = "['SEG', 'SR', 'SC']") -> str:
    return (
        f"[[destinations]]\nname = '{name}'\nae_title = '{pacs.ae_title}'\nhost = '127.0.0.1'\nport = {pacs.port}\n"
        f"result_types = {result_types}\n"
    )


def wait_for_jobs(url: str, predicate: str, count: int, timeout: float) -> list[Job]:
    """Poll the database until ``count`` jobs are DELIVERED (``predicate`` names what is awaited)."""
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with Session(engine) as session:
                jobs = list(session.scalars(select(Job).order_by(Job.version)))
                if len(jobs) >= count and all(job.state is JobState.DELIVERED for job in jobs):
                    return jobs
            time.sleep(0.25)
    finally:
        engine.dispose()
    raise AssertionError(f"{predicate}: not delivered in {timeout} s: {[(j.version, j.state) for j in jobs]}")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_nodes_on_postgresql_deliver_each_object_once_to_a_slow_pacs(tmp_path: Path) -> None:
    """Row 1: the PACS answers each object after 1.5 s; 11 objects take longer than one delivery lease
    (4 x 3 s): the lease is renewed while sending, so the second node never sends them again."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    study = copies_as_new_study(shared_file(SOURCE), 4)

    def slow(_ds: Dataset) -> int:
        time.sleep(1.5)
        return 0x0000

    pacs = PacsScp(ae_title="SLOWPACS", status_for=slow)
    with postgres_schema_url() as url:
        common = (
            f"database_url = '{url}'\n[study]\nsettle_seconds = 0.5\n"
            "[delivery]\npoll_seconds = 0.2\ntimeout_seconds = 3.0\nbackoff_seconds = 0.5\n"
            + destination("pacs", pacs, ALL_TYPES)
        )
        port_a, port_b = free_port(), free_port()
        config_a = write_config(tmp_path, "a", port_a, common.replace("[study]", "[worker]\npoll_seconds = 0.2\n[study]"))
        config_b = write_config(tmp_path, "b", port_b, common.replace("[study]", "[worker]\ncount = 0\n[study]"))
        try:
            with ServedNode(config_a, port_a, name="a") as node_a, ServedNode(config_b, port_b, name="b") as node_b:
                assert store_datasets(study, port_a) == [0x0000] * 4
                (job,) = wait_for_jobs(url, "the study", 1, timeout=180)
                pacs.wait_until_idle(timeout=60)
            assert node_a.returncode == 0 and node_b.returncode == 0
            engine = create_engine(url)
            with Session(engine) as session:
                (delivery,) = session.scalars(select(Delivery))
                assert (delivery.state, delivery.attempts) == (DeliveryState.DELIVERED, 1)
                results = len(session.get_one(Job, job.id).results)
            engine.dispose()
        finally:
            pacs.stop()
    counts = Counter(str(ds.SOPInstanceUID) for ds in pacs.received)
    assert results >= 11 and len(counts) == results  # 4 x (SC, PM) + SR, PDF, KO, and a SEG per region
    assert set(counts.values()) == {1}, f"objects received more than once: {counts.most_common(3)}"
    assert pacs.attempts == results


@pytest.mark.slow
def test_a_hanging_destination_does_not_delay_a_healthy_one(tmp_path: Path) -> None:
    """Row 2: one PACS accepts the association and never answers; the other still gets its results."""
    released = threading.Event()
    hanging_now = threading.Event()

    def hang(_ds: Dataset) -> int:
        hanging_now.set()
        released.wait(timeout=300)
        return 0x0000

    hung, healthy = PacsScp(ae_title="HUNG", status_for=hang), PacsScp(ae_title="HEALTHY")
    port = free_port()
    config = write_config(
        tmp_path,
        "node",
        port,
        "[study]\nsettle_seconds = 0.5\n[worker]\npoll_seconds = 0.2\n"
        "[delivery]\npoll_seconds = 0.2\ntimeout_seconds = 300\n"
        + destination("hung", hung)  # first: the one a single sender would wait for
        + destination("healthy", healthy),
    )
    try:
        with ServedNode(config, port) as node:
            try:
                assert store_datasets(copies_as_new_study(shared_file(SOURCE), 1), port) == [0x0000]
                received = healthy.wait_for(lambda got: len(got) >= 2, timeout=90)
                assert hanging_now.is_set() and not hung.received  # the hung PACS still holds its first object
            finally:
                released.set()  # before SIGTERM: the node's sender to it is still waiting for an answer
        assert node.returncode == 0
    finally:
        hung.stop()
        healthy.stop()
    assert {str(ds.SOPClassUID) for ds in received} >= {SR_CLASS}


@pytest.mark.slow
def test_a_late_instance_makes_version_2_which_supersedes_version_1(tmp_path: Path) -> None:
    """Row 3: v2's SR names v1's in its Predecessor Documents Sequence; each version's series say so."""
    pacs = PacsScp(ae_title="PACS")
    port = free_port()
    config = write_config(
        tmp_path,
        "node",
        port,
        "[study]\nsettle_seconds = 0.5\n[worker]\npoll_seconds = 0.2\n[delivery]\npoll_seconds = 0.2\n"
        + destination("pacs", pacs),
    )
    first, late = copies_as_new_study(shared_file(SOURCE), 2)
    url = f"sqlite:///{tmp_path / 'storage' / 'miemss.db'}"
    try:
        with ServedNode(config, port) as node:
            assert store_datasets([first], port) == [0x0000]
            wait_for_jobs(url, "version 1", 1, timeout=120)
            assert store_datasets([late], port) == [0x0000]
            wait_for_jobs(url, "version 2", 2, timeout=120)
        assert node.returncode == 0
    finally:
        pacs.stop()
    reports = sorted((ds for ds in pacs.received if ds.SOPClassUID == SR_CLASS), key=lambda ds: int(ds.SeriesNumber))
    assert len(reports) == 2
    v1, v2 = reports
    (reference,) = v2.PredecessorDocumentsSequence
    assert reference.StudyInstanceUID == v1.StudyInstanceUID
    (series,) = reference.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == v1.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (v1.SOPClassUID, v1.SOPInstanceUID)
    assert "PredecessorDocumentsSequence" not in v1
    by_version: dict[str, dict[str, int]] = {"v1": {}, "v2": {}}
    for ds in pacs.received:
        version = str(ds.SeriesDescription).rsplit(" ", 1)[-1]
        by_version[version][str(ds.SOPClassUID)] = int(ds.SeriesNumber)
    assert by_version["v1"].keys() == by_version["v2"].keys() and by_version["v1"]
    for sop_class, number in by_version["v1"].items():
        assert by_version["v2"][sop_class] == number + SERIES_NUMBER_VERSION_STEP
    assert dciodvfy_errors(v2) == []
