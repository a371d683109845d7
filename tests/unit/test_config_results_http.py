"""Config of what each destination gets (``result_types``) and of the HTTP server (``[http]``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from miemss_node.config import DEFAULT_RESULT_TYPES, RESULT_TYPES, load_config
from miemss_node.errors import ConfigError
from miemss_node.result_kinds import DEFAULT_SERIES_NUMBERS, RESULT_KINDS
from tests.support.paths import REPO_ROOT

DESTINATION = "[[destinations]]\nae_title = '{aet}'\nhost = '127.0.0.1'\nport = 11113\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_destinations_name_their_result_types_and_default_to_seg_sr_sc(tmp_path: Path) -> None:
    text = DESTINATION.format(aet="MODERN") + "result_types = ['SEG', 'SR', 'PM']\n" + DESTINATION.format(aet="OLD")
    config = load_config(write(tmp_path, text), environ={})
    assert [d.result_types for d in config.destinations] == [("SEG", "SR", "PM"), DEFAULT_RESULT_TYPES]


def test_unknown_result_types_are_listed_in_the_one_error(tmp_path: Path) -> None:
    text = (
        DESTINATION.format(aet="A")
        + "result_types = ['SEG', 'GIF', 'DOCX']\n"
        + DESTINATION.format(aet="B")
        + "result_types = []\n[results]\npm_series_number = 9001\n"
    )
    with pytest.raises(
        ConfigError, match=r"(?s)series numbers must differ.*unknown 'GIF', 'DOCX'.*#2 result_types must name"
    ):
        load_config(write(tmp_path, text), environ={})


def test_http_defaults_to_off_on_loopback_and_reads_the_token_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[http]\nport = 8042\n"), environ={"MIEMSS_HTTP_TOKEN": "t" * 20})
    assert (config.http.host, config.http.port, config.http.token) == ("127.0.0.1", 8042, "t" * 20)
    assert load_config(None, environ={}).http.port == 0
    assert not config.http.show_patient_data


def test_a_short_token_and_a_bad_port_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"(?s)\[http\] port 70000 is not a TCP port.*token must be at least 16"):
        load_config(write(tmp_path, "[http]\nport = 70000\ntoken = 'short'\n"), environ={})


def test_repository_config_documents_every_result_type() -> None:
    text = (REPO_ROOT / "config.toml").read_text(encoding="utf-8")
    assert all(kind in text for kind in RESULT_TYPES)
    config = load_config(REPO_ROOT / "config.toml", environ={})
    assert config.http.port == 0 and config.results.series_number_map()["PM"] == 9004
    assert all(f"{kind.series_number_key} = {kind.series_number}" in text for kind in RESULT_KINDS)


def test_series_numbers_come_from_the_one_list_of_result_kinds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[results]\nsr_series_number = 9050\n"), environ={})
    assert config.results.series_number_map() == {**DEFAULT_SERIES_NUMBERS, "SR": 9050}
    assert config.results.series_number_map().keys() == set(RESULT_TYPES) == {kind.name for kind in RESULT_KINDS}
    with pytest.raises(ConfigError, match=r"(?s)unknown key 'xray_series_number'.*within 99 of each other"):
        load_config(write(tmp_path, "[results]\nsr_series_number = 9500\nxray_series_number = 1\n"), environ={})
