"""The whole node with tiny ViT/BLIP models, offline, and without models.

A modality sends the WG04 chest CR; the PACS must receive an SR whose text holds the BLIP caption
and names the models, and an SC with the attention outline. While the node runs with models, any
connection to a non-loopback address fails the test: the worker runs in this process
(``worker_processes=False``) so that the guard sees its sockets.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from miemss_node.config import Config, ModelSettings
from miemss_node.node import Node
from miemss_node.pipeline.decode import decode_dataset
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.models import load_models
from tests.conftest import pacs_destination
from tests.integration.test_node_end_to_end import kinds, round_trip_errors, sr_text
from tests.support.paths import wg04_chest_cr
from tests.support.peers import PacsScp, store_files
from tests.support.tiny_models import TinyModels, build_tiny_models

pytestmark = [
    pytest.mark.models,
    # The worker runs in this process, under pytest's warnings-as-errors: highdicom warns that the
    # WG04 source's Referring Physician Name ("ward") has one component, and the SC copies it.
    pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name:UserWarning"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def _is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse, and record, every connection or name lookup that would leave this machine."""
    attempts: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if not _is_loopback(address):
            attempts.append(f"connect {address!r}")
            raise OSError(f"test forbids network access: connect to {address!r}")
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if not _is_loopback(address):
            attempts.append(f"connect_ex {address!r}")
            raise OSError(f"test forbids network access: connect to {address!r}")
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_loopback((host if isinstance(host, str) else str(host), 0)):
            attempts.append(f"getaddrinfo {host!r}")
            raise OSError(f"test forbids network access: name lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts


def test_the_guard_refuses_and_records_a_connection_out(no_network: list[str]) -> None:
    with socket.socket() as sock:
        with pytest.raises(OSError, match="test forbids network access"):
            sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed
    with pytest.raises(OSError, match="test forbids network access"):
        socket.create_connection(("huggingface.co", 443), timeout=0.1)
    assert no_network == ["connect ('192.0.2.1', 443)", "getaddrinfo 'huggingface.co'"]


def run_node(config: Config, pacs: PacsScp, source: Path) -> dict[str, list[Dataset]]:
    """Start a node with its worker in this process, send ``source``, return what the PACS got."""
    node = Node(config, worker_processes=False)
    node.start()
    try:
        assert store_files([source], node.port) == [0x0000]
        received = pacs.wait_for(lambda got: any(kinds(got)["SR"]) and any(kinds(got)["SC"]), timeout=120)
    finally:
        node.stop()
    return kinds(received)


def caption_item(sr: Dataset) -> list[str]:
    """The TEXT values under the "Comment" concept that follow the Narrative Summary."""
    texts: list[str] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106":
                texts.append(str(item.TextValue))
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    return texts


def test_node_with_tiny_models_reports_the_caption_and_names_the_models_offline(
    tmp_path: Path,
    tiny: TinyModels,
    config_factory: Callable[..., Config],
    pacs: PacsScp,
    no_network: list[str],
) -> None:
    models = {"vit": str(tiny.vit), "blip": str(tiny.blip), "device": "cpu"}
    config = config_factory(destinations=(pacs_destination(pacs),), models=models)
    source_path = wg04_chest_cr()
    found = run_node(config, pacs, source_path)
    assert no_network == []

    (sr,) = found["SR"]
    (sc,) = found["SC"]
    for result in (sr, sc):
        assert round_trip_errors(result, tmp_path) == []
    # The caption the same models give for the same enhanced image, computed here.
    loaded = load_models(ModelSettings(**models))
    assert loaded.blip is not None
    frame = decode_dataset(dcmread(source_path))[0]
    expected = loaded.blip.caption(enhance(frame, config.pipeline.denoise_method).pixels)
    assert expected
    text = sr_text(sr)
    assert f"Automatic caption: {expected[:1].upper()}{expected[1:]}" in text
    assert expected in caption_item(sr)
    statement = next(t for t in caption_item(sr) if t.startswith("The caption is machine-generated by blip"))
    assert loaded.blip.run.revision in statement and "greedy, max 30 new tokens" in statement
    assert loaded.vit is not None and f"vit tiny-vit ({loaded.vit.run.revision}; " in text
    assert "Models that ran: vit tiny-vit" in text and "blip tiny-blip" in text
    assert "No learned model (ViT, BLIP) ran" not in text
    assert "ViT attention rollout of image" in text
    assert "ViT attention" in sc.DerivationDescription
    pixels = np.asarray(sc.pixel_array)
    assert (pixels == np.array([255, 0, 255], dtype=pixels.dtype)).all(axis=-1).any()


def test_node_without_models_says_none_ran(
    tmp_path: Path, config_factory: Callable[..., Config], pacs: PacsScp
) -> None:
    config = config_factory(destinations=(pacs_destination(pacs),))
    found = run_node(config, pacs, wg04_chest_cr())
    (sr,) = found["SR"]
    text = sr_text(sr)
    assert "No learned model (ViT, BLIP) ran" in text
    # The chest analysis judged the frontal chest film against the shipped normal reference.
    assert "Normal reference judged against: reference public normals" in text
    assert "caption" not in text.lower() and "ViT attention" not in text
    assert "ViT attention" not in found["SC"][0].DerivationDescription
