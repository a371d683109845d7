"""Logs identify work by UIDs and never quote patient data from library messages."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from miemss_node.config import LOG_FORMATS, load_config
from miemss_node.errors import ConfigError
from miemss_node.logconfig import FORMATTERS, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # An earlier test may have run cli.main() in-process, leaving warnings captured with pytest's
    # previous showwarning saved; start from a clean state so that configure_logging captures them.
    logging.captureWarnings(False)
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_library_messages_are_withheld(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^Jane'")
    logging.getLogger("highdicom.seg").warning("name 'Doe^Jane' has one component")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("PatientBirthDate '19700101' is odd", UserWarning, stacklevel=1)
    logging.getLogger("miemss_node.worker").info("job 1 done", extra={"action": "job.encoded"})
    err = capsys.readouterr().err
    assert "Doe^Jane" not in err and "19700101" not in err
    assert err.count("text withheld") == 3
    assert "INFO job.encoded job 1 done" in err


def json_lines(err: str) -> list[dict[str, object]]:
    """Every line of ``err`` as a JSON object (fails on a line that is not one)."""
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_carry_time_level_action_message_and_extras(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", log_format="json")
    worker = logging.getLogger("miemss_node.worker")
    worker.info(
        "job %d encoded", 7, extra={"action": "job.encoded", "job_id": 7, "study_uid": "1.2.3", "seconds": 1.5}
    )
    logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^Jane'")
    logging.getLogger("pynetdicom.assoc").warning("association aborted")
    try:
        raise RuntimeError("disk gone")
    except RuntimeError:
        worker.exception("job 7 failed", extra={"action": "job.failed", "job_id": 7, "path": Path("/x")})
    logging.getLogger("miemss_node.receive").debug("not shown at INFO", extra={"action": "receive.debug"})
    err = capsys.readouterr().err
    encoded, library, pynetdicom, failed = json_lines(err)
    assert datetime.fromisoformat(str(encoded["time"])).tzinfo is not None
    assert {key: encoded[key] for key in ("level", "action", "logger", "message")} == {
        "level": "INFO",
        "action": "job.encoded",
        "logger": "miemss_node.worker",
        "message": "job 7 encoded",
    }
    assert (encoded["job_id"], encoded["study_uid"], encoded["seconds"]) == (7, "1.2.3", 1.5)
    assert library["action"] == "library.warning" and "text withheld" in str(library["message"])
    assert "Doe^Jane" not in err
    assert pynetdicom["action"] == "pynetdicom.assoc"
    assert failed["level"] == "ERROR" and failed["path"] == "/x"
    assert "RuntimeError: disk gone" in str(failed["exception"])


def test_an_extra_never_replaces_a_fixed_key(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", log_format="json")
    logging.getLogger("miemss_node.send").info("sent", extra={"action": "send.delivered", "level": "spoofed"})
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["level"] == "INFO" and entry["action"] == "send.delivered"


def test_text_format_is_one_line_per_record(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", log_format="text")
    logging.getLogger("miemss_node.worker").info("job 1 done", extra={"action": "job.encoded", "job_id": 1})
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO job.encoded job 1 done")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match=r"log format 'xml' is not one of text, json"):
        configure_logging("INFO", log_format="xml")


def test_config_validates_the_format(tmp_path: Path) -> None:
    assert set(LOG_FORMATS) == set(FORMATTERS)
    path = tmp_path / "config.toml"
    path.write_text("[logging]\nformat = 'json'\n", encoding="utf-8")
    assert load_config(path, environ={}).logging.format == "json"
    assert load_config(path, environ={"MIEMSS_LOG_FORMAT": "text"}).logging.format == "text"
    path.write_text("[logging]\nformat = 'xml'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[logging\] format 'xml' is not one of text, json"):
        load_config(path, environ={})


def test_a_decoder_fallback_is_logged_at_debug_under_verbose_only(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydicom logs each failing decoding plugin with a traceback at ERROR, although the next works."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from miemss_node.pipeline.decode import decode_dataset

    extended = get_testdata_file("JPGExtended.dcm")  # 12-bit JPEG Extended: GDCM refuses, pylibjpeg decodes
    configure_logging("INFO")
    assert decode_dataset(dcmread(extended))
    assert capsys.readouterr().err == ""
    configure_logging("INFO", verbose=True)
    assert decode_dataset(dcmread(extended))
    lines = [line for line in capsys.readouterr().err.splitlines() if "plugin_fallback" in line]
    configure_logging("INFO")
    assert lines and all(" DEBUG decode.plugin_fallback a pixel decoder failed" in line for line in lines)
