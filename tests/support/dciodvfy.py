"""Run dicom3tools' ``dciodvfy`` on a DICOM file or dataset and return its errors."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from pydicom import Dataset

from tests.support.tools import tool

#: How long one dciodvfy run may take, in seconds.
TIMEOUT_S = 120


def dciodvfy_path() -> str:
    """Return the dciodvfy executable; without it the test skips, or fails in CI (``tools.tool``)."""
    return tool("dciodvfy", "dicom3tools")


def _run(path: Path) -> list[str]:
    completed = subprocess.run(
        [dciodvfy_path(), str(path)],
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    # dciodvfy reports on stderr; values may hold bytes of any character set.
    output = (completed.stdout + completed.stderr).decode("latin-1")
    return [line.rstrip() for line in output.splitlines() if line.startswith("Error")]


def dciodvfy_errors(path_or_dataset: Path | str | Dataset) -> list[str]:
    """Return the lines of dciodvfy's report that start with "Error".

    Parameters
    ----------
    path_or_dataset
        A DICOM file, or a dataset (written to a temporary Part 10 file first).

    Returns
    -------
    list of str
        The error lines, in dciodvfy's order (empty when the object conforms to its IOD).

    A test calling this without dciodvfy installed skips (fails in CI): see :mod:`tests.support.tools`.
    """
    if isinstance(path_or_dataset, Dataset):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "object.dcm"
            path_or_dataset.save_as(path, enforce_file_format=True)
            return _run(path)
    return _run(Path(path_or_dataset))
