"""Generated PDUs and association sequences against a running receiver: it always ends the
connection (never hangs), never logs an error of its own, and keeps answering C-ECHO.

``benchmarks/fuzz_receiver.py --kind pdus`` runs the same strategies for minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from miemss_node.node import Node
from tests.support.fuzzing import node_is_serving
from tests.support.pdus import association_sequences, play

#: The receiver's network timeout in this test; a connection must end well within the hang limit.
NETWORK_TIMEOUT = 1.0
HANG_SECONDS = 10.0


class ErrorRecords(logging.Handler):
    """Collects ERROR records of the node's own loggers (a handler's bug, a failed write)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    from miemss_node.config import load_config

    folder = tmp_path_factory.mktemp("pdufuzz")
    (folder / "config.toml").write_text(
        "[node]\nport = 0\nstorage_dir = 'storage'\nmax_pdu = 16384\n"
        f"network_timeout_seconds = {NETWORK_TIMEOUT}\nacse_timeout_seconds = {NETWORK_TIMEOUT}\n"
        "[worker]\ncount = 0\n"
    )
    node = Node(load_config(folder / "config.toml", environ={}))
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def node_errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logging.getLogger("miemss_node").addHandler(handler)
    yield handler
    logging.getLogger("miemss_node").removeHandler(handler)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(sequence=association_sequences())
def test_generated_association_sequences_end_cleanly(
    fuzz_node: Node, node_errors: ErrorRecords, sequence: tuple[list[bytes], bool]
) -> None:
    steps, half_close = sequence
    played = play(fuzz_node.port, steps, half_close, hang_seconds=HANG_SECONDS)
    assert played.closed_after is not None, "the receiver kept the connection open"
    assert [r.getMessage() for r in node_errors.records] == []
    assert node_is_serving(fuzz_node.port)
