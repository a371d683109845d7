"""Loading and validating config.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from miemss_node.cli import main
from miemss_node.config import load_config
from miemss_node.errors import ConfigError
from tests.support.paths import REPO_ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_config_is_valid_and_resolves_paths_against_its_folder() -> None:
    config = load_config(REPO_ROOT / "config.toml", environ={})
    assert config.node.storage_dir == (REPO_ROOT / "var" / "storage").resolve()
    assert config.database_url == f"sqlite:///{REPO_ROOT / 'var' / 'storage' / 'miemss.db'}"
    assert [d.ae_title for d in config.destinations] == ["PACS"]


def test_minimal_file_runs_on_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[node]\nae_title='NODE'\nport=12000\nstorage_dir='s'\n[study]\nsettle_seconds=3\n"
        "[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\nport=12001\n",
    )
    config = load_config(path, environ={})
    assert config.node.storage_dir == tmp_path / "s"
    assert config.study.settle_seconds == 3.0
    assert config.destinations[0].name == "PACS"
    assert config.pipeline.denoise_method == "vst_wavelet"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[node]\nae_title='THIS AE TITLE IS FAR TOO LONG'\nport=70000\nbogus=1\n"
        "[study]\nsettle_seconds='soon'\n[pipeline]\ndenoise_method='magic'\n"
        "[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\n[extra]\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    problems = "\n".join(caught.value.problems)
    for expected in ("ae_title", "70000", "unknown key 'bogus'", "settle_seconds", "magic", "missing 'port'", "[extra]"):
        assert expected in problems
    assert len(caught.value.problems) == 7


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nport=12000\n")
    assert load_config(path, environ={"MIEMSS_PORT": "12005"}).node.port == 12005
    config = load_config(path, environ={"MIEMSS_PORT": "12005"}, overrides={("node", "port"): 12009})
    assert config.node.port == 12009


def test_bad_environment_value_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nport=12000\n")
    with pytest.raises(ConfigError, match="MIEMSS_PORT='x'"):
        load_config(path, environ={"MIEMSS_PORT": "x"})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})


def test_check_config_command_prints_problems_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[node]\nport=-1\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "[node] port -1 is not a TCP port" in capsys.readouterr().err


def test_check_config_command_accepts_the_default_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO_ROOT / "config.toml")]) == 0
    assert "destination pacs: PACS@127.0.0.1:11113" in capsys.readouterr().out


def test_denoise_methods_are_the_enhance_stages_own(tmp_path: Path) -> None:
    """One list: config accepts exactly the methods ``pipeline.enhance.METHODS`` has."""
    from miemss_node.pipeline.enhance import METHODS

    for method in METHODS:
        config = load_config(write(tmp_path, f"[pipeline.modality.DX]\ndenoise_method = '{method}'\n"), environ={})
        assert dict(config.pipeline.modality_overrides)["DX"].denoise_method == method
    with pytest.raises(ConfigError, match=r"denoise_method 'median' is not one of \("):
        load_config(write(tmp_path, "[pipeline]\ndenoise_method = 'median'\n"), environ={})
