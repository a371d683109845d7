"""A wheel built from the repository works when installed, not only the editable checkout (issue 13, row 9).

The wheel is installed without its dependencies into a fresh virtual environment that borrows them
from the test environment (a ``.pth`` line), so nothing is downloaded; the package, its DICOM
templates and its migrations must all come from the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.support.paths import REPO_ROOT

#: What the build needs from the repository (the rest, e.g. .venv and var/, stays out of the copy).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "miemss_node", "dicom_templates")


def build_wheel(folder: Path) -> Path:
    """Build the wheel from a copy of the repository, so the build leaves nothing in the checkout."""
    source = folder / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(folder), "."], source)
    (wheel,) = folder.glob("miemss_node-*.whl")
    return wheel


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done


@pytest.mark.slow
def test_the_installed_wheel_ships_its_templates_and_processes_a_file_from_another_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "miemss_node/dicom_templates/sr/measurement_report.json" in names
    assert "miemss_node/dicom_templates/schemas/common.schema.json" in names
    assert any(name.startswith("miemss_node/queue/migrations/versions/0001") for name in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    # The dependencies, borrowed from this environment; its editable miemss_node is not on that path.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import miemss_node; print(miemss_node.__file__)"], elsewhere).stdout
    assert where.startswith(str(site)), where
    done = run(
        [str(venv / "bin" / "miemss-node"), "process", "--input", str(get_testdata_file("CT_small.dcm")), "--output", "out"],
        elsewhere,
    )
    assert "region(s)" in done.stdout
    written = {path.name.split("_")[0] for path in (elsewhere / "out").glob("*.dcm")}
    assert {"SR", "SC"} <= written

    config = elsewhere / "config.toml"
    config.write_text(
        "[node]\nstorage_dir = 'storage'\n[[destinations]]\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = 11113\n",
        encoding="utf-8",
    )
    assert run([str(venv / "bin" / "miemss-node"), "check-config", "--config", str(config)], elsewhere).stdout.startswith(
        f"{config}: ok"
    )
    # `retry` opens the database: the schema is created by the migrations inside the wheel.
    retry = subprocess.run(
        [str(venv / "bin" / "miemss-node"), "retry", "1", "--config", str(config)], cwd=elsewhere, capture_output=True, text=True
    )
    assert retry.returncode == 1 and "job 1 does not exist" in retry.stderr, retry.stderr
