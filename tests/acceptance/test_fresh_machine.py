"""`make test` on a fresh clone: the Debian tools are installed when missing, and without them the tests
that need them skip, unless CI is set (issue 13, row 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

SYSTEM_DEPS = REPO_ROOT / ".ci" / "system-deps"

#: Tests that need a Debian tool and nothing else outside the repository (pydicom's files only).
TOOL_TESTS = (
    "tests/integration/test_encode_more_types.py::test_kinds_choose_what_is_returned",  # dciodvfy
    "tests/acceptance/test_cli.py::test_dcmtk_storescu_to_serve_and_storescp_as_pacs",  # dcmtk
)


def system_deps(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["/bin/bash", str(SYSTEM_DEPS), *args],
        env={"SYSTEM_DEPS_PATH": str(folder), "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_system_deps_installs_only_the_packages_whose_tools_are_missing(tmp_path: Path) -> None:
    present = {"storescu": "dcmtk", "Orthanc": "orthanc", "pdftotext": "poppler-utils"}
    for command in present:
        tool = tmp_path / command
        tool.write_text("#!/bin/sh\n", encoding="utf-8")
        tool.chmod(0o755)
    assert system_deps(tmp_path, "--dry-run").strip() == "system-deps: would install: dicom3tools chromium nodejs npm"
    for command in ("dciodvfy", "chromium", "node", "npm"):
        (tmp_path / command).write_text("#!/bin/sh\n", encoding="utf-8")
        (tmp_path / command).chmod(0o755)
    assert "every tool the tests use is installed" in system_deps(tmp_path)


def test_make_test_runs_system_deps_first() -> None:
    done = subprocess.run(["make", "-n", "test"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    deps = next(i for i, line in enumerate(lines) if ".ci/system-deps" in line)
    tests = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert deps < tests


@pytest.mark.slow
@pytest.mark.parametrize(("ci", "outcome"), [("", "2 skipped"), ("true", "2 failed")], ids=["developer", "ci"])
def test_without_the_debian_tools_their_tests_skip_except_in_ci(ci: str, outcome: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PATH"] = str(Path(sys.executable).parent)  # the virtual environment only: no dcmtk, no dicom3tools
    if ci:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TOOL_TESTS],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert outcome in done.stdout, done.stdout[-2000:]
    assert done.returncode == (1 if ci else 0)
    assert "apt-get install dicom3tools" in done.stdout and "apt-get install dcmtk" in done.stdout
