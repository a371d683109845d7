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

from miemss_node.config import XRV_ROLES, Config
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
    problems += model_folder_problems(config)
    problems += chest_reference_problems(config)
    if config.tls.enabled:
        from miemss_node.tls import server_context

        try:
            server_context(config.tls)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"[tls] certificate/private_key cannot be loaded: {exc}")
    return problems


def chest_reference_problems(config: Config) -> list[str]:
    """The chest analysis's normal reference (each Modality's): it must load, or say how to make one."""
    from miemss_node.errors import ModelError
    from miemss_node.pipeline.chest_reference import load_chest_reference

    problems = []
    settings = [("[pipeline]", config.pipeline)] + [
        (f"[pipeline.modality.{name}]", override) for name, override in config.pipeline.modality_overrides
    ]
    for label, pipeline in settings:
        if not pipeline.chest_analysis:
            continue
        try:
            load_chest_reference(pipeline.chest_reference)
        except ModelError as exc:
            problems.append(
                f"{label} chest_reference: {exc}; build one with `miemss-node reference chest FILMS --output FILE`, "
                'or set chest_reference = "" for the shipped one'
            )
    return list(dict.fromkeys(problems))


def model_folder_problems(config: Config) -> list[str]:
    """TorchXRayVision folders: manifest, weights file and its SHA-256, and thresholds naming real labels.

    Checked here, without torch, so that a missing or corrupt weights file stops ``check-config`` and
    ``serve`` at start instead of failing the first job.
    """
    from miemss_node.pipeline.xrv import folder_problems, read_manifest

    models = config.models
    problems = []
    for role in XRV_ROLES:
        folder = getattr(models, role)
        if folder:
            problems += folder_problems(role, Path(folder))
    if models.chest and models.chest_thresholds and not problems:
        labels = set(read_manifest("chest", Path(models.chest)).labels) - {""}
        unknown = sorted(label for label, _ in models.chest_thresholds if label not in labels)
        if unknown:
            problems.append(
                f"[models.chest_thresholds] names {', '.join(unknown)}, which the chest model does not output "
                f"(its labels: {', '.join(sorted(labels))})"
            )
    return problems


def reference_anatomy_note(config: Config) -> str | None:
    """Why zone comparisons are approximate: the chest reference's anatomy is not the configured one."""
    from miemss_node.errors import ModelError
    from miemss_node.pipeline.chest_reference import load_chest_reference
    from miemss_node.pipeline.xrv import model_method, read_manifest

    try:
        reference = load_chest_reference(config.pipeline.chest_reference)
        anatomy = "classical"
        if config.models.anatomy:
            manifest = read_manifest("anatomy", Path(config.models.anatomy))
            anatomy = model_method(manifest.name, manifest.revision)
    except ModelError:
        return None  # listed as a problem elsewhere
    if reference.anatomy == anatomy:
        return None
    return (
        f"the chest reference {reference.name} was measured with anatomy {reference.anatomy}, the node outlines "
        f"lungs with {anatomy}: reports say so; rebuild it with `miemss-node reference chest` for like-with-like zones"
    )


def check_ready(config: Config, *, sends: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem :func:`preflight_problems` finds."""
    problems = preflight_problems(config, sends=sends)
    if problems:
        raise ConfigError(problems)
