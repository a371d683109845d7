"""TorchXRayVision models ([models] chest/anatomy): folders, checks at start, inference, regions, anatomy.

The real architectures with random weights (``tests/support/xrv_models.py``), loaded through the
node's own code, offline.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from miemss_node.cli import EXIT_OK, EXIT_USAGE, main
from miemss_node.config import ModelSettings, load_config
from miemss_node.errors import ConfigError
from miemss_node.evaluate.pathology import pathology_aucs, pathology_labels
from miemss_node.evaluate.real import FilmResult
from miemss_node.pipeline.base import Anatomy, ModelRun, PathologyProbability, PipelineSettings
from miemss_node.pipeline.chest import measure_chest, resize_labels
from miemss_node.pipeline.chest_reference import fit_chest_reference, load_chest_reference, save_chest_reference
from miemss_node.pipeline.decode import decode_dataset
from miemss_node.pipeline.enhance import enhance
from miemss_node.pipeline.model_anatomy import anatomy_from_model
from miemss_node.pipeline.models import load_models
from miemss_node.pipeline.pathology import pathology_score
from miemss_node.pipeline.runner import analyse_dataset, analyse_image
from miemss_node.pipeline.score import combined_abnormality
from miemss_node.pipeline.xrv import MANIFEST_FILE, folder_problems, import_xrv, model_method
from miemss_node.pipeline.xrv_models import AnatomyMasks
from miemss_node.preflight import preflight_problems
from tests.support.paths import wg04_chest_cr
from tests.support.xrv_models import XrvFolders, build_chest_folder, build_xrv_folders

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> XrvFolders:
    return build_xrv_folders(tmp_path_factory.mktemp("xrv"))


@pytest.fixture(scope="module")
def chest_models(folders: XrvFolders) -> object:
    return load_models(ModelSettings(chest=str(folders.chest), device="cpu"))


def write_config(folder: Path, models: str) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"[node]\nstorage_dir = 'storage'\n[[destinations]]\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = 11113\n"
        f"[models]\ndevice = 'cpu'\n{models}\n",
        encoding="utf-8",
    )
    return path


def test_saved_folders_check_out_and_load_without_a_download(folders: XrvFolders, monkeypatch: pytest.MonkeyPatch) -> None:
    assert folder_problems("chest", folders.chest) == []
    assert folder_problems("anatomy", folders.anatomy) == []
    xrv = import_xrv()

    def refuse(url: str, filename: str) -> None:
        raise AssertionError(f"the library tried to download {url}")

    monkeypatch.setattr(xrv.utils, "download", refuse)
    models = load_models(ModelSettings(chest=str(folders.chest), anatomy=str(folders.anatomy), device="cpu"))
    assert models.chest is not None and models.anatomy is not None
    assert [run.role for run in models.runs] == ["chest", "anatomy"]
    assert models.chest.run.name == "torchxrayvision DenseNet densenet121-res224-all"
    assert models.anatomy.run.revision.startswith("sha256 ")


def test_a_missing_or_corrupt_weights_file_stops_check_config(
    folders: XrvFolders, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(folders.chest, corrupt)
    weights = next(p for p in corrupt.iterdir() if p.name != MANIFEST_FILE)
    weights.write_bytes(weights.read_bytes()[:1000])
    missing = tmp_path / "missing"
    shutil.copytree(folders.anatomy, missing)
    next(p for p in missing.iterdir() if p.name != MANIFEST_FILE).unlink()
    config = write_config(tmp_path, f"chest = '{corrupt}'\nanatomy = '{missing}'")
    assert main(["check-config", "--config", str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"weights file {weights} is corrupt or replaced" in err
    assert "[models] anatomy: weights file" in err and "is missing" in err
    assert "models fetch" in err


def test_a_folder_without_manifest_or_of_the_wrong_class_is_named(folders: XrvFolders, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    assert "has no miemss_model.json" in folder_problems("chest", bare)[0]
    assert "takes torchxrayvision DenseNet" in folder_problems("chest", folders.anatomy)[0]


def test_thresholds_are_configured_per_pathology_and_checked_against_the_model(folders: XrvFolders, tmp_path: Path) -> None:
    text = f"chest = '{folders.chest}'\nchest_threshold = 0.6\n[models.chest_thresholds]\nEffusion = 0.7\nPneumothorax = 0.3"
    config = load_config(write_config(tmp_path, text), environ={})
    assert config.models.chest_threshold == 0.6
    assert dict(config.models.chest_thresholds) == {"Effusion": 0.7, "Pneumothorax": 0.3}
    assert preflight_problems(config) == []
    unknown = replace(config, models=replace(config.models, chest_thresholds=(("Covid", 0.5),)))
    assert any("names Covid, which the chest model does not output" in p for p in preflight_problems(unknown))
    with pytest.raises(ConfigError, match=r"chest_thresholds.Effusion = 1.5: a threshold lies strictly between 0 and 1"):
        load_config(write_config(tmp_path, "[models.chest_thresholds]\nEffusion = 1.5"), environ={})


def test_classifier_gives_every_pathology_and_attributions_in_the_centre_square(chest_models: object) -> None:
    classifier = chest_models.chest  # type: ignore[attr-defined]
    frame = decode_dataset(dcmread(wg04_chest_cr()))[0]
    wide = np.pad(frame.pixels, ((0, 0), (200, 200)))  # wider than tall: the library's centre crop cuts the sides
    result = classifier.classify(wide)
    labels = [p.label for p in result.pathologies]
    assert len(labels) == 18 and "Effusion" in labels and "Enlarged Cardiomediastinum" in labels
    assert all(0.0 <= p.probability <= 1.0 and p.threshold == 0.5 for p in result.pathologies)
    reported = sorted((p for p in result.pathologies if p.reported), key=lambda p: -p.probability)
    assert reported, "the random classifier reports something on this film"
    assert list(result.attributions) == [p.label for p in reported[:3]]
    left = (wide.shape[1] - wide.shape[0]) // 2
    for cam in result.attributions.values():
        assert cam.shape == wide.shape and 0.0 <= float(cam.min()) and float(cam.max()) <= 1.0
        assert not cam[:, : left - 1].any() and not cam[:, left + wide.shape[0] + 1 :].any()
        assert float(cam.max()) > 0.5


def test_pathology_regions_come_from_the_attribution_and_lie_inside_the_lungs(chest_models: object) -> None:
    analysis = analyse_dataset(dcmread(wg04_chest_cr()), PipelineSettings(), chest_models)[0]  # type: ignore[arg-type]
    assert analysis.method == "chest" and analysis.anatomy is not None
    pathology_regions = [r for r in analysis.region_map.regions if r.kind == "pathology"]
    assert pathology_regions and all(r.pathology for r in pathology_regions)
    reported = {p.label for p in analysis.pathologies if p.reported}
    assert {r.pathology for r in pathology_regions} <= reported
    anatomy = analysis.anatomy
    lungs = resize_labels(((anatomy.hemithoraces > 0) & ~anatomy.not_anatomy).astype(np.uint8), anatomy.source_shape)
    for region in pathology_regions:
        pixels = analysis.region_map.labels == region.label
        assert pixels.sum() == region.area_px > 0
        assert lungs[pixels].all(), f"region {region.label} leaves the lungs"
    without = analyse_dataset(dcmread(wg04_chest_cr()), PipelineSettings())[0]
    assert analysis.abnormality_score == pytest.approx(
        max(without.abnormality_score, *(pathology_score(p) for p in analysis.pathologies))
    )
    text = " ".join(analysis.findings)
    assert "Chest classifier output (model torchxrayvision DenseNet densenet121-res224-all, sha256 " in text
    assert "not a diagnosis" in text


def test_pathology_score_puts_each_threshold_at_one_half() -> None:
    at = PathologyProbability(label="Effusion", probability=0.7, threshold=0.7)
    assert pathology_score(at) == pytest.approx(0.5)
    assert pathology_score(replace(at, probability=0.35)) == pytest.approx(0.25)
    assert pathology_score(replace(at, probability=0.85)) == pytest.approx(0.75)
    assert combined_abnormality(0.3, [replace(at, probability=0.85)]) == pytest.approx(0.75)
    assert combined_abnormality(0.9, [replace(at, probability=0.85)]) == pytest.approx(0.9)


def _classical_anatomy() -> tuple[Anatomy, np.ndarray, object]:
    frame = decode_dataset(dcmread(wg04_chest_cr()))[0]
    measured = measure_chest(frame, enhance(frame, "vst_wavelet").pixels)
    assert measured is not None
    return measured.anatomy, frame.pixels, frame


def test_model_lungs_replace_the_hemithoraces_whatever_the_model_calls_them() -> None:
    classical, _, frame = _classical_anatomy()
    work = np.zeros(classical.shape, dtype=np.float32)
    left, right = classical.hemithoraces == 1, classical.hemithoraces == 2
    heart = classical.mediastinum
    # The model's first lung is its "Left Lung", the patient's left: on the image's right on a PA display.
    masks = AnatomyMasks(lungs=(right, left), mediastinum=heart | left)
    anatomy = anatomy_from_model(masks, method="model X", classical=classical, work=work, objects=None, image=frame)  # type: ignore[arg-type]
    assert anatomy is not None and anatomy.method == "model X"
    assert np.array_equal(anatomy.hemithoraces == 1, left) and np.array_equal(anatomy.hemithoraces == 2, right)
    assert not (anatomy.mediastinum & (anatomy.hemithoraces > 0)).any()
    assert anatomy.body is classical.body and anatomy.not_anatomy is classical.not_anatomy
    empty = np.zeros(classical.shape, dtype=bool)
    for implausible in ((left, empty), (left | right | heart, right), (left, left)):
        fallback = AnatomyMasks(lungs=implausible, mediastinum=heart)
        assert anatomy_from_model(fallback, method="m", classical=classical, work=work, objects=None, image=frame) is classical  # type: ignore[arg-type]


@dataclass(frozen=True)
class _LungsOfClassicalEstimate:
    """A segmenter double: the classical hemithoraces, mirrored (checks the hook, not a model)."""

    run: ModelRun

    def segment(self, pixels: np.ndarray, shape: tuple[int, int]) -> AnatomyMasks:
        classical, _, frame = _classical_anatomy()
        assert classical.shape == shape
        return AnatomyMasks(
            lungs=(classical.hemithoraces == 2, classical.hemithoraces == 1), mediastinum=classical.mediastinum
        )


def test_the_anatomy_model_outlines_the_lungs_and_a_classical_reference_is_flagged() -> None:
    run = ModelRun(role="anatomy", name="torchxrayvision PSPNet chestx_det", revision="sha256 0123456789ab")
    segmenter = _LungsOfClassicalEstimate(run)
    frame = decode_dataset(dcmread(wg04_chest_cr()))[0]
    models = replace(load_models(ModelSettings()), anatomy=segmenter)  # type: ignore[arg-type]
    analysis = analyse_image(frame, PipelineSettings(), models)
    assert analysis.anatomy is not None
    assert analysis.anatomy.method == model_method(run.name, run.revision)
    assert any(
        "the lungs were outlined by torchxrayvision PSPNet chestx_det (sha256 0123456789ab), but the normal reference "
        "was measured with anatomy classical" in sentence
        for sentence in analysis.findings
    )


def test_a_chest_reference_records_its_anatomy(tmp_path: Path) -> None:
    reference = fit_chest_reference([{"upper.p50.asym": 0.0}], [[]], name="mine", anatomy="model Y (sha256 1)")
    path = tmp_path / "reference.json"
    save_chest_reference(reference, path)
    assert load_chest_reference(path).anatomy == "model Y (sha256 1)"
    assert "anatomy model Y (sha256 1)" in load_chest_reference(path).model_run.parameters
    assert load_chest_reference().anatomy == "classical"  # the shipped file predates the key


def test_models_check_and_fetch_name_the_torchxrayvision_models(
    folders: XrvFolders, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f"chest = '{folders.chest}'\nanatomy = '{folders.anatomy}'\nthreads = 2")
    assert main(["models", "check", "--config", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "chest: torchxrayvision DenseNet densenet121-res224-all (sha256 " in out
    assert "anatomy: torchxrayvision PSPNet chestx_det (sha256 " in out
    assert "18 pathology probabilities, highest " in out and "lungs cover " in out
    # Without a network the fetch says what to do instead (the library's download is refused here).
    assert main(["models", "fetch", "chest", str(tmp_path / "nowhere"), "--weights", "densenet121-res224-xyz"]) != EXIT_OK
    assert "unknown weights 'densenet121-res224-xyz'" in capsys.readouterr().err


def test_per_pathology_auc_from_a_labels_csv(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("file,finding,Effusion,Pneumothorax\na.png,Effusion,1,0\nb.png,No finding,0,\nc.png,x,1,1\n", encoding="utf-8")
    labels = pathology_labels(csv)
    assert labels["b.png"] == {"Effusion": False}

    def film(name: str, effusion: float, pneumothorax: float) -> FilmResult:
        return FilmResult(
            file=name, status="", split="", view="", method="chest", abnormality_score=0.0, regions=(),
            pathologies={"Effusion": effusion, "Pneumothorax": pneumothorax},
        )  # fmt: skip

    aucs = pathology_aucs([film("a.png", 0.9, 0.2), film("b.png", 0.1, 0.3), film("c.png", 0.8, 0.9)], labels)
    assert aucs["Effusion"]["auc"] == 1.0 and (aucs["Effusion"]["positives"], aucs["Effusion"]["negatives"]) == (2, 1)
    assert aucs["Pneumothorax"]["auc"] == 1.0


def test_another_weights_name_is_built_and_described(tmp_path: Path) -> None:
    folder = build_chest_folder(tmp_path / "nih", weights="densenet121-res224-nih")
    assert folder_problems("chest", folder) == []
    models = load_models(ModelSettings(chest=str(folder), device="cpu"))
    assert models.chest is not None
    # The NIH weights predict 14 of the 18 outputs; the empty ones are not reported.
    assert len(models.chest.classify(np.random.default_rng(0).random((64, 64))).pathologies) == 14
