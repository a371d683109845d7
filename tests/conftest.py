"""Fixtures shared by every suite: a PACS peer, node configs and a running node."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from miemss_node.config import Config, Destination, load_config
from tests.support.peers import PacsScp

if TYPE_CHECKING:
    from miemss_node.node import Node


@pytest.fixture
def pacs() -> Iterator[PacsScp]:
    """A Storage SCP that plays the PACS on an ephemeral loopback port."""
    scp = PacsScp()
    yield scp
    scp.stop()


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    """Build a node config in ``tmp_path``: port 0, short settle time, given destinations."""

    def make(*, destinations: tuple[Destination, ...] = (), settle_seconds: float = 0.5, **sections: dict) -> Config:
        text = (
            "[node]\nport = 0\nstorage_dir = 'storage'\n"
            f"[study]\nsettle_seconds = {settle_seconds}\n"
            "[worker]\npoll_seconds = 0.2\nretry_backoff_seconds = 0.5\n"
            "[delivery]\npoll_seconds = 0.2\nbackoff_seconds = 0.5\ntimeout_seconds = 10.0\n"
        )
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        config = load_config(path, environ={})
        updates = {name: replace(getattr(config, name), **values) for name, values in sections.items()}
        return replace(config, destinations=destinations, **updates)

    return make


@pytest.fixture
def node_factory() -> Iterator[Callable[[Config], Node]]:
    """Start nodes and stop them all at teardown."""
    from miemss_node.node import Node

    started: list[Node] = []

    def start(config: Config) -> Node:
        node = Node(config)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def pacs_destination(pacs: PacsScp) -> Destination:
    """The config entry pointing at a test PACS."""
    return Destination(name="pacs", ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.port)
