"""System tools the tests use (Debian's dcmtk, dicom3tools, orthanc, chromium, poppler-utils).

A test that needs a missing tool skips, saying what to install, so that a clone and `make test` pass
on a machine without them; in CI (``CI=true``) it fails instead, because CI must run every check.
"""

from __future__ import annotations

import os
import shutil

import pytest

#: Folders searched besides PATH: Debian installs some servers (Orthanc) in sbin.
EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin")


def find_tool(*names: str) -> str | None:
    """The first of ``names`` found on PATH (or in :data:`EXTRA_BIN_DIRS`), else None."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_BIN_DIRS])
    return next((found for name in names if (found := shutil.which(name, path=search))), None)


def require_tool(name: str, binary: str | None, package: str) -> str:
    """Return ``binary``; when missing, fail in CI (CI=true) and skip elsewhere, saying what to install."""
    if binary is not None:
        return binary
    message = f"{name} not found: install Debian's {package} (apt-get install {package}; `make system-deps`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run every test")
    pytest.skip(message)


def tool(name: str, package: str, *aliases: str) -> str:
    """The path of tool ``name`` (or one of its ``aliases``) from Debian's ``package``, or skip/fail."""
    return require_tool(name, find_tool(name, *aliases), package)
