"""``[models]`` in config.toml, and the ``models`` and ``process --config`` commands."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from miemss_node.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from miemss_node.config import load_config
from miemss_node.errors import ConfigError
from tests.support.tiny_models import TinyModels, build_tiny_models

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def write_config(folder: Path, models: str) -> Path:
    path = folder / "config.toml"
    path.write_text(f"[node]\nstorage_dir = 'storage'\n[models]\n{models}\n", encoding="utf-8")
    return path


def test_model_folders_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "weights" / "vit").mkdir(parents=True)
    (tmp_path / "weights" / "vit" / "config.json").write_text("{}", encoding="utf-8")
    config = load_config(write_config(tmp_path, "vit = 'weights/vit'\nthreads = 2\nint8 = []"), environ={})
    assert config.models.vit == str(tmp_path / "weights" / "vit")
    assert (config.models.blip, config.models.device, config.models.threads, config.models.int8) == ("", "auto", 2, ())


def test_every_models_problem_is_listed_with_its_fix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    text = "vit = 'nowhere'\nblip = 'empty'\ndevice = 'tpu'\nthreads = -1\nint8 = ['gpt']\ncaption_beams = 0"
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text), environ={})
    problems = caught.value.problems
    assert len(problems) == 6
    missing = next(p for p in problems if "nowhere" in p)
    assert "does not exist" in missing and "models fetch vit DIR" in missing and 'vit = ""' in missing
    assert any("empty has no config.json" in p for p in problems)
    assert any("device 'tpu'" in p for p in problems)
    assert any("threads must be >= 0" in p for p in problems)
    assert any("int8 names 'gpt'" in p for p in problems)
    assert any("caption_beams must be > 0" in p for p in problems)


def test_check_config_names_a_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(write_config(tmp_path, "blip = 'gone'"))]) == EXIT_USAGE
    assert "[models] blip folder" in capsys.readouterr().err


def test_models_check_loads_each_model_and_times_a_pass(
    tmp_path: Path, tiny: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f"vit = '{tiny.vit}'\nblip = '{tiny.blip}'\ndevice = 'cpu'")
    assert main(["models", "check", "--config", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "vit: tiny-vit (sha256 " in out and "blip: tiny-blip (sha256 " in out
    assert "4x4 patch tokens with attention rollout" in out
    assert "forward pass" in out and "caption '" in out and " parameters\n" in out


def test_models_check_without_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "check", "--config", str(write_config(tmp_path, ""))]) == EXIT_OK
    assert "no model configured" in capsys.readouterr().out


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_models_fetch_without_a_network_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert main(["models", "fetch", "vit", str(tmp_path / "vit")]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"could not download google/vit-base-patch16-224-in21k from {endpoint}" in err
    assert "copy the folder over" in err
    assert not (tmp_path / "vit" / "miemss_model.json").exists()


def test_process_with_config_applies_the_models(
    tmp_path: Path, tiny: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, cols = np.mgrid[:160, :128]
    picture = (40 + rows * 0.8 + 60 * (((rows - 60) ** 2 + (cols - 80) ** 2) < 150)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "chest.png")
    config = write_config(tmp_path, f"vit = '{tiny.vit}'\nblip = '{tiny.blip}'\ndevice = 'cpu'")
    out = tmp_path / "out"
    assert main(["process", "--config", str(config), "--input", str(tmp_path / "chest.png"), "--output", str(out)]) == 0
    attention = np.asarray(Image.open(out / "attention.png"))
    assert attention.shape == picture.shape and attention.max() == 255
    report = (out / "report.txt").read_text(encoding="utf-8")
    assert report.startswith("Automatic caption: ")
    assert "Models used: vit tiny-vit (sha256 " in report and ", blip tiny-blip (sha256 " in report
    assert "chest.png: " in capsys.readouterr().out
