"""A settled study is taken up by a worker process, and its results sent, when they are ready: the
settler rings the workers and a worker rings the senders, so neither waits for its next poll."""

from __future__ import annotations

import threading
from collections.abc import Callable

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from miemss_node.config import Config
from miemss_node.node import Node
from tests.conftest import pacs_destination
from tests.support.peers import PacsScp, store_datasets
from tests.support.studies import copies_as_new_study

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

#: Polls far longer than the test: after the loops' first passes, only a doorbell can make them look.
NEVER = 3600.0


def has_sr_of(study: list[Dataset]) -> Callable[[list[Dataset]], bool]:
    uid = str(study[0].StudyInstanceUID)
    return lambda got: any(
        str(ds.StudyInstanceUID) == uid and str(ds.SOPClassUID).startswith(SR_CLASS_PREFIX) for ds in got
    )


def test_studies_are_processed_and_sent_without_waiting_for_a_poll(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], pacs: PacsScp
) -> None:
    config = config_factory(
        destinations=(pacs_destination(pacs),), worker={"poll_seconds": NEVER}, delivery={"poll_seconds": NEVER}
    )
    node = node_factory(config)  # the worker runs in a process of its own (serve's default)
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    first, second = copies_as_new_study(ct, 1), copies_as_new_study(ct, 1)
    assert store_datasets(first, node.port) == [0]
    # The sender's first pass was at the start: these results reach the PACS only if the worker rings.
    pacs.wait_for(has_sr_of(first), timeout=120)
    # The worker has looked once more after its job and found nothing: this study is taken up, and
    # sent, only if the settler rings the worker and the worker the sender.
    assert store_datasets(second, node.port) == [0]
    pacs.wait_for(has_sr_of(second), timeout=60)


def test_a_loop_waiting_on_a_bell_ends_when_the_node_stops(
    config_factory: Callable[..., Config], pacs: PacsScp
) -> None:
    config = config_factory(
        destinations=(pacs_destination(pacs),), worker={"poll_seconds": NEVER}, delivery={"poll_seconds": NEVER}
    )
    node = Node(config, worker_count=1, worker_processes=False)
    node.start()
    loops = list(node._threads)
    assert {thread.name for thread in loops} >= {"worker-0", "sender-pacs"}
    stopping = threading.Thread(target=node.stop)
    stopping.start()
    stopping.join(30)  # stop() joins every loop: the worker and the sender wait on bells, for an hour
    assert not stopping.is_alive(), "the node did not stop: a loop kept waiting on its bell"
    assert not any(thread.is_alive() for thread in loops)
