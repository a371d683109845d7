"""Checks a valid config must also pass before the node runs: what only the machine can say.

``load_config`` checks the file itself; this checks what it points at: the storage folder can be
written, the DICOM templates installed with the package are valid, the TLS files load, and (for a
node that sends) there is somewhere to send to. ``check-config`` and ``serve`` run the same checks,
so ``serve`` stops with the same list of problems instead of a traceback.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from miemss_node.config import Config
from miemss_node.errors import ConfigError, TemplateError


def storage_problem(folder: Path) -> str | None:
    """None when ``folder`` exists as a writable folder or can be created, else why not.

    A missing folder is checked by writing a nameless temporary file in its nearest existing parent
    (which must hold it); nothing is left behind.
    """
    label = f"[node] storage_dir {folder}"
    if folder.exists() and not folder.is_dir():
        return f"{label} is not a folder"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{label}: no existing folder above it"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = "it" if existing == folder else f"{existing}, where it would be created"
        return f"{label}: cannot write in {where} ({exc.strerror or exc}); choose a writable folder"
    return None


def preflight_problems(config: Config, *, sends: bool = True) -> list[str]:
    """Every problem that would stop this config from running, in one list.

    Parameters
    ----------
    config
        A loaded (so already valid) config.
    sends
        Whether the process sends results (``serve``): then it needs at least one destination.
    """
    problems = []
    storage = storage_problem(config.node.storage_dir)
    if storage is not None:
        problems.append(storage)
    if sends and not config.destinations:
        problems.append(
            "no [[destinations]]: results would be made but never sent; add a [[destinations]] table "
            "with ae_title, host and port"
        )
    try:
        from miemss_node.encode.templates import load_templates

        load_templates()
    except TemplateError as exc:
        problems.append(f"DICOM templates installed with the package: {exc}")
    if config.tls.enabled:
        from miemss_node.tls import server_context

        try:
            server_context(config.tls)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"[tls] certificate/private_key cannot be loaded: {exc}")
    return problems


def check_ready(config: Config, *, sends: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem :func:`preflight_problems` finds."""
    problems = preflight_problems(config, sends=sends)
    if problems:
        raise ConfigError(problems)
