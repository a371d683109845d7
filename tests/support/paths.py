"""Where the test inputs are."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The shared corpus of real public test images (``../shared/data``); CI always has it.
SHARED_DATA = Path(os.environ.get("MIEMSS_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """Return a file of the shared corpus, skipping the test when the corpus is absent."""
    import pytest

    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not available: {path}")
    return path


def wg04_chest_cr() -> Path:
    """The WG04 RG1 chest CR (JPEG 2000) shipped by the ``pydicom-data`` package."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file("RG1_J2KI.dcm")
    if found is None:
        raise FileNotFoundError("pydicom-data is not installed: pip install pydicom-data")
    return Path(str(found))
