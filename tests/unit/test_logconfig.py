"""Logs identify work by UIDs and never quote patient data from library messages."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from miemss_node.logconfig import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
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
