"""Many senders at once, and many worker processes on PostgreSQL: each study processed and delivered once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from pydicom import Dataset
from sqlalchemy import select

from miemss_node.config import Config
from miemss_node.node import Node
from miemss_node.queue.models import Job, JobEvent, JobState
from tests.conftest import pacs_destination
from tests.support.databases import database_url
from tests.support.paths import shared_file
from tests.support.peers import PacsScp, store_datasets
from tests.support.studies import copies_as_new_study

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def small_studies(count: int, images: int) -> list[list[Dataset]]:
    source = shared_file("dicom/xray/study_cr_cspine_16x16/CR1_6154.dcm")
    return [copies_as_new_study(source, images) for _ in range(count)]


def wait_until_all_delivered(node: Node, studies: int, pacs: PacsScp, timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.sessions() as session:
            jobs = list(session.scalars(select(Job)))
        if len(jobs) >= studies and all(job.state in (JobState.DELIVERED, JobState.FAILED) for job in jobs):
            return jobs
        time.sleep(0.25)
    raise AssertionError(f"not all {studies} studies delivered in {timeout} s: {Counter(j.state for j in jobs)}")


def check_each_study_once(jobs: list[Job], studies: list[list[Dataset]], pacs: PacsScp) -> None:
    assert all(job.state is JobState.DELIVERED and job.version == 1 for job in jobs)
    assert len(jobs) == len(studies)
    srs = Counter(str(ds.StudyInstanceUID) for ds in pacs.received if str(ds.SOPClassUID).startswith(SR_PREFIX))
    assert srs == Counter({str(study[0].StudyInstanceUID): 1 for study in studies})
    uids = Counter(str(ds.SOPInstanceUID) for ds in pacs.received)
    assert max(uids.values()) == 1  # no result sent twice


@pytest.mark.slow
def test_eight_senders_with_two_studies_each(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], pacs: PacsScp
) -> None:
    studies = small_studies(16, images=2)
    config = config_factory(destinations=(pacs_destination(pacs),), settle_seconds=1.0)
    node = node_factory(replace(config, worker=replace(config.worker, count=2)))

    def sender(index: int) -> list[int]:
        mine = studies[2 * index] + studies[2 * index + 1]
        return store_datasets(mine, node.port, calling_aet=f"MODALITY{index}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [status for result in pool.map(sender, range(8)) for status in result]
    assert statuses == [0] * 32
    jobs = wait_until_all_delivered(node, len(studies), pacs, timeout=240)
    check_each_study_once(jobs, studies, pacs)


@pytest.mark.slow
@pytest.mark.postgres
def test_one_receiver_and_three_worker_processes_on_postgresql(
    tmp_path: pytest.TempPathFactory, config_factory: Callable[..., Config], pacs: PacsScp
) -> None:
    studies = small_studies(20, images=1)
    with database_url("postgres", tmp_path) as url:  # type: ignore[arg-type]
        base = config_factory(destinations=(pacs_destination(pacs),), settle_seconds=0.5)
        config = replace(base, node=replace(base.node, database_url=url))
        receiver = Node(config, worker_count=0)
        workers = Node(config, with_receiver=False, worker_count=3, worker_processes=True)
        receiver.start()
        workers.start()
        try:
            for study in studies:
                assert store_datasets(study, receiver.port) == [0]
            jobs = wait_until_all_delivered(receiver, len(studies), pacs, timeout=300)
            with receiver.sessions() as session:
                claims = [e.detail or "" for e in session.scalars(select(JobEvent)) if (e.detail or "").startswith("claimed")]
        finally:
            workers.stop()
            receiver.stop()
        check_each_study_once(jobs, studies, pacs)
        owners = {detail.split(" ")[2] for detail in claims}
        assert len(owners) >= 2  # the work was shared between worker processes


def test_a_worker_process_that_dies_is_replaced(
    monkeypatch: pytest.MonkeyPatch, config_factory: Callable[..., Config], pacs: PacsScp
) -> None:
    import os
    import signal

    from miemss_node import node as node_module

    monkeypatch.setattr(node_module, "WORKER_RESTART_SECONDS", 0.2)
    node = Node(config_factory(destinations=(pacs_destination(pacs),)), worker_processes=True)
    node.start()
    try:
        first = node._children[0]
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and node._children[0] is first:
            time.sleep(0.1)
        assert node._children[0] is not first and node._children[0].is_alive()
        study = small_studies(1, images=1)[0]
        assert store_datasets(study, node.port) == [0]
        check_each_study_once(wait_until_all_delivered(node, 1, pacs, timeout=120), [study], pacs)
    finally:
        node.stop()
