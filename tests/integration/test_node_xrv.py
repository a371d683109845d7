"""The whole node with the TorchXRayVision classifier and anatomy model (random weights), offline.

A modality sends the WG04 chest CR; the PACS must receive an SR that lists every pathology with a
probability (a TID 1501 group each, coded), says which anatomy outlined the lungs and names both
models; a SEG whose segments include the classifier's pathology regions; all valid under dciodvfy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset

from miemss_node.config import Config
from tests.conftest import pacs_destination
from tests.integration.test_node_end_to_end import round_trip_errors, sr_text
from tests.integration.test_node_models import no_network, run_node  # noqa: F401 - the fixture is used by name
from tests.support.paths import wg04_chest_cr
from tests.support.peers import PacsScp
from tests.support.xrv_models import XrvFolders, build_xrv_folders

pytestmark = [
    pytest.mark.models,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name:UserWarning"),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> XrvFolders:
    return build_xrv_folders(tmp_path_factory.mktemp("xrv"))


def _groups(sr: Dataset) -> list[Dataset]:
    """Every measurement group container of the SR's Imaging Measurements."""
    found: list[Dataset] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "125007":
                found.append(item)
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    return found


def _finding_and_probability(group: Dataset) -> tuple[Dataset, float] | None:
    finding = probability = None
    for item in group.ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if item.ValueType == "CODE" and name.CodeValue == "121071":
            finding = item.ConceptCodeSequence[0]
        if item.ValueType == "NUM" and name.CodeValue == "122157":
            probability = float(item.MeasuredValueSequence[0].NumericValue)
    return None if finding is None or probability is None else (finding, probability)


def test_node_with_both_models_reports_every_pathology_and_its_regions(
    tmp_path: Path,
    folders: XrvFolders,
    config_factory: Callable[..., Config],
    pacs: PacsScp,
    no_network: list[str],  # noqa: F811
) -> None:
    models = {"chest": str(folders.chest), "anatomy": str(folders.anatomy), "device": "cpu", "threads": 2}
    config = config_factory(destinations=(pacs_destination(pacs),), models=models)
    found = run_node(config, pacs, wg04_chest_cr())
    assert no_network == []
    (sr,) = found["SR"]
    for result in (sr, *found["SEG"], *found["SC"]):
        assert round_trip_errors(result, tmp_path) == []

    pathologies = {}
    for group in _groups(sr):
        pair = _finding_and_probability(group)
        if pair is not None:
            pathologies[pair[0].CodeMeaning] = (pair[0], pair[1])
    assert len(pathologies) == 18
    assert pathologies["Pleural effusion"][0].CodeValue == "60046008"  # SNOMED CT
    assert pathologies["Hernia"][0].CodingSchemeDesignator == "99TXRV"  # no code: the library's label
    assert all(0.0 <= probability <= 1.0 for _, probability in pathologies.values())

    text = sr_text(sr)
    assert "chest torchxrayvision DenseNet densenet121-res224-all (sha256 " in text
    assert "anatomy torchxrayvision PSPNet chestx_det (sha256 " in text
    assert "Anatomy of image 1 (lungs, heart and mediastinum): " in text
    assert "Chest classifier output for image 1 (model torchxrayvision DenseNet densenet121-res224-all, sha256 " in text
    statements = re.findall(r"AI-flagged region \d+ of image 1: [^\n]*", text)
    assert any("(pathology: " in statement and "chest classifier's attribution peaks" in statement for statement in statements)
    (seg,) = found["SEG"]
    assert len(seg.SegmentSequence) == len(statements)
