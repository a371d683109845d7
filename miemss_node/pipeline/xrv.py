"""TorchXRayVision models from local folders: the manifest, the weights' SHA-256, fetching and loading.

A hospital's node has no network, so each TorchXRayVision model (PyPI ``torchxrayvision``, Apache-2.0)
is a folder named in ``[models]``: ``chest`` (a DenseNet-121 pathology classifier) or ``anatomy`` (the
PSPNet segmentation of 14 chest structures, ChestX-Det). The folder holds the library's own weights
file, under the name the library looks for, and :data:`MANIFEST_FILE`: which class and weights it is,
the file, its SHA-256 and the model's output labels. ``models fetch chest|anatomy DIR`` writes both on
a machine with a network (the library downloads); :func:`folder_problems` checks a folder without
importing torch (``check-config``), and the loaders check it again before the library reads the file,
so a missing or corrupt file is named at start, never at the first job, and the library never tries
to download in its place.

Two workarounds of the pinned releases live here and nowhere else (:func:`import_xrv`):

* PyPI's torchvision 0.28.0 (the release for torch 2.13.0) ships C++ ops built against the CUDA build of
  torch; beside the CPU build its ``_C`` extension does not load, which torchvision tolerates, except
  that ``_meta_registrations.py`` then registers fake kernels for ``torchvision::nms``/``qnms``
  unconditionally and the import fails ("operator torchvision::nms does not exist",
  pytorch/vision#9085). When (and only when) that happens, the two operator schemas are declared
  without kernels and torchvision is imported again: its Python parts (transforms, model classes) work,
  and its C++ ops raise if called. TorchXRayVision's DenseNet and PSPNet never call them.
* ``torchxrayvision.models`` calls ``warnings.filterwarnings("ignore")`` when imported, which would
  silence every warning of the process; the import runs inside ``warnings.catch_warnings()``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from miemss_node.errors import ModelError

logger = logging.getLogger(__name__)

#: The manifest beside the weights (the same name as the Hugging Face models' provenance file).
MANIFEST_FILE = "miemss_model.json"
#: The library, as the manifest names it.
LIBRARY = "torchxrayvision"
#: ``[models]`` keys of TorchXRayVision models, and the class each accepts.
ROLE_CLASSES = {"chest": "DenseNet", "anatomy": "PSPNet"}
#: Weights ``models fetch chest`` downloads by default (18 pathologies, trained on 8 public data sets).
DEFAULT_CHEST_WEIGHTS = "densenet121-res224-all"
#: The weights name of the PSPNet in the manifest: its training set, ChestX-Det.
PSPNET_WEIGHTS = "chestx_det"
#: The file ``torchxrayvision.baseline_models.chestx_det.PSPNet(cache_dir=DIR)`` reads in DIR (1.5.7); a
#: test checks the library still looks for it, so that a missing file is never downloaded instead.
PSPNET_FILE = "pspnet_chestxray_best_model_4.pth"
#: Hex digits of the SHA-256 that reports quote.
DIGEST_CHARS = 12


@dataclass(frozen=True, kw_only=True)
class XrvManifest:
    """What a model folder holds (:data:`MANIFEST_FILE`)."""

    library: str
    library_version: str
    #: "DenseNet" or "PSPNet".
    model_class: str
    #: Weights name, e.g. "densenet121-res224-all" or "chestx_det".
    weights: str
    #: The weights file's name in the folder.
    file: str
    sha256: str
    #: The model's outputs in order ("" where a classifier's weights do not predict that output).
    labels: tuple[str, ...]
    #: Where ``models fetch`` downloaded it from ("" when unknown).
    source: str = ""

    @property
    def name(self) -> str:
        """How reports name the model, e.g. "torchxrayvision DenseNet densenet121-res224-all"."""
        return f"{self.library} {self.model_class} {self.weights}"

    @property
    def revision(self) -> str:
        """The weights' identity as reports quote it: "sha256" and its first digits."""
        return f"sha256 {self.sha256[:DIGEST_CHARS]}"


def model_method(name: str, revision: str) -> str:
    """``Anatomy.method`` of masks made by a model, and the anatomy a chest reference records."""
    return f"{name} ({revision})"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(role: str, folder: Path) -> XrvManifest:
    """Read and check a folder's manifest (not the weights).

    Raises
    ------
    ModelError
        When the manifest is missing or unreadable, or names another class than ``role`` takes.
    """
    path = folder / MANIFEST_FILE
    fix = f"run `miemss-node models fetch {role} DIR` on a machine with a network and copy DIR here"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"[models] {role}: {folder} has no {MANIFEST_FILE}: {fix}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"[models] {role}: {path} cannot be read as JSON ({exc}): {fix}") from exc
    try:
        manifest = XrvManifest(
            library=str(data["library"]),
            library_version=str(data.get("library_version", "")),
            model_class=str(data["model_class"]),
            weights=str(data["weights"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]).lower(),
            labels=tuple(str(label) for label in data["labels"]),
            source=str(data.get("source", "")),
        )
    except (KeyError, TypeError) as exc:
        raise ModelError(f"[models] {role}: {path} lacks {exc} or is malformed: {fix}") from exc
    if manifest.library != LIBRARY or manifest.model_class != ROLE_CLASSES[role]:
        raise ModelError(
            f"[models] {role}: {path} names {manifest.library} {manifest.model_class}; "
            f"{role} takes {LIBRARY} {ROLE_CLASSES[role]}"
        )
    if Path(manifest.file).name != manifest.file:
        raise ModelError(f"[models] {role}: {path} names the file {manifest.file!r}; it must be a name in the folder")
    return manifest


def folder_problems(role: str, folder: Path) -> list[str]:
    """What stops a model folder from loading, without importing torch (``check-config``).

    The manifest must be readable and name the class ``role`` takes, and the weights file must be
    there with the manifest's SHA-256 (a truncated copy or a different file is named here).
    """
    try:
        manifest = read_manifest(role, folder)
    except ModelError as exc:
        return [str(exc)]
    return [problem for problem in (_weights_problem(role, folder, manifest),) if problem]


def verify_folder(role: str, folder: Path) -> XrvManifest:
    """The folder's manifest, once its weights file is found with the manifest's SHA-256.

    Raises
    ------
    ModelError
        As :func:`folder_problems` describes.
    """
    manifest = read_manifest(role, folder)
    problem = _weights_problem(role, folder, manifest)
    if problem:
        raise ModelError(problem)
    return manifest


def _weights_problem(role: str, folder: Path, manifest: XrvManifest) -> str | None:
    weights = folder / manifest.file
    fix = f"copy the folder again from where `miemss-node models fetch {role}` wrote it"
    if not weights.is_file():
        return f"[models] {role}: weights file {weights} is missing: {fix}"
    try:
        actual = sha256_file(weights)
    except OSError as exc:
        return f"[models] {role}: weights file {weights} cannot be read ({exc.strerror or exc}): {fix}"
    if actual != manifest.sha256:
        return (
            f"[models] {role}: weights file {weights} is corrupt or replaced: its SHA-256 is {actual[:DIGEST_CHARS]}..., "
            f"the manifest says {manifest.sha256[:DIGEST_CHARS]}...: {fix}"
        )
    return None


def import_torchvision() -> Any:
    """Import torchvision, declaring its two missing operator schemas first when needed (module docstring).

    Transformers imports torchvision whenever it is installed (its image processors use it), so every
    path that imports transformers calls this first (``pipeline/models.py``).

    Raises
    ------
    ModelError
        When torch or torchvision is not installed, or torchvision fails for another reason.
    """
    try:
        import torch
    except ImportError as exc:
        raise ModelError(f"the models need torch ({exc}): `make install`") from exc
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise ModelError(f"torchvision cannot be imported beside torch {torch.__version__}: {exc}") from exc
        _declare_torchvision_ops(torch)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        import torchvision
    except ImportError as exc:
        raise ModelError(f"the models need torchvision ({exc}): `make install`") from exc
    return torchvision


def import_xrv() -> Any:
    """Import torchxrayvision (see the module docstring for the two workarounds).

    Raises
    ------
    ModelError
        When torchxrayvision, torch or torchvision is not installed, or torchvision fails otherwise.
    """
    import_torchvision()
    try:
        with warnings.catch_warnings():
            import torchxrayvision
    except ImportError as exc:
        raise ModelError(f"[models] chest/anatomy need torchxrayvision ({exc}): `make install`") from exc
    return torchxrayvision


def _declare_torchvision_ops(torch: Any) -> None:
    """Declare the schemas torchvision's fake-kernel registration expects, without kernels."""
    logger.info(
        "torchvision's C++ ops do not load beside this torch build; its Python parts are used without them",
        extra={"action": "models.torchvision_without_ops"},
    )
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    # The Library object unregisters its definitions when collected; keep it for the process.
    _KEEP_ALIVE.append(library)


_KEEP_ALIVE: list[Any] = []


def write_manifest(role: str, folder: Path, *, weights: str, source: str = "") -> XrvManifest:
    """Describe the weights file already in ``folder`` and write :data:`MANIFEST_FILE` beside it.

    ``models fetch`` calls this after the library downloaded the file; a folder made by hand (the
    library's file copied in) is described the same way.

    Parameters
    ----------
    role
        "chest" or "anatomy".
    folder
        Holds the weights file under the name the library reads.
    weights
        The classifier's weights name (e.g. "densenet121-res224-all"); ignored for "anatomy".
    source
        Where the file came from, for the record.

    Raises
    ------
    ModelError
        When ``weights`` is not a classifier the library knows, or the file is not in the folder.
    """
    xrv = import_xrv()
    if role == "chest":
        urls = xrv.models.model_urls
        if weights not in urls or not weights.startswith("densenet"):
            known = sorted(name for name in urls if name.startswith("densenet"))
            raise ModelError(f"[models] chest: unknown weights {weights!r}; TorchXRayVision's DenseNet weights: {known}")
        file = os.path.basename(urls[weights]["weights_url"])
        labels = tuple(urls[weights]["labels"])
    else:
        weights, file = PSPNET_WEIGHTS, PSPNET_FILE
        labels = tuple(xrv.baseline_models.chestx_det.PSPNet.targets)
    path = folder / file
    if not path.is_file():
        raise ModelError(f"[models] {role}: {path} is missing; put the library's weights file there first")
    manifest = XrvManifest(
        library=LIBRARY,
        library_version=str(xrv.__version__),
        model_class=ROLE_CLASSES[role],
        weights=weights,
        file=file,
        sha256=sha256_file(path),
        labels=labels,
        source=source,
    )
    payload = {**asdict(manifest), "labels": list(manifest.labels)}
    (folder / MANIFEST_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return manifest


def fetch_xrv(role: str, folder: Path, *, weights: str | None = None) -> XrvManifest:
    """Download a TorchXRayVision model into ``folder`` with the library, then write its manifest.

    The only network access of these models, run by hand where a network exists.

    Raises
    ------
    ModelError
        When the download fails, with what to do instead.
    """
    xrv = import_xrv()
    folder.mkdir(parents=True, exist_ok=True)
    weights = weights or DEFAULT_CHEST_WEIGHTS
    try:
        if role == "chest":
            if weights not in xrv.models.model_urls:
                write_manifest(role, folder, weights=weights)  # raises naming the known weights
            source = str(xrv.models.model_urls[weights]["weights_url"])
            xrv.models.get_weights(weights, cache_dir=str(folder))
        else:
            source = f"{LIBRARY} {xrv.__version__} chestx_det.PSPNet default weights"
            xrv.baseline_models.chestx_det.PSPNet(cache_dir=str(folder))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - requests, OSError and the library's own errors
        raise ModelError(
            f"could not download the TorchXRayVision {role} model ({type(exc).__name__}: {exc}): no network, or "
            "the download was refused. Run `miemss-node models fetch` where a network exists and copy the folder"
        ) from exc
    manifest = write_manifest(role, folder, weights=weights, source=source)
    logger.info("fetched %s (%s)", manifest.name, manifest.revision, extra={"action": "models.fetched"})
    return manifest


def load_module(role: str, folder: Path, *, device: str) -> tuple[Any, XrvManifest]:
    """Build the library's model from a checked folder, offline, in eval mode on ``device``.

    Parameters are frozen (no gradients are kept for them; Grad-CAM needs only the activations').

    Raises
    ------
    ModelError
        When the folder does not check out, or the library cannot load the file.
    """
    manifest = verify_folder(role, folder)
    xrv = import_xrv()
    try:
        if role == "chest":
            if manifest.weights not in xrv.models.model_urls:
                raise ModelError(f"[models] chest: this torchxrayvision does not know the weights {manifest.weights!r}")
            expected = os.path.basename(xrv.models.model_urls[manifest.weights]["weights_url"])
            if expected != manifest.file:
                raise ModelError(
                    f"[models] chest: torchxrayvision reads {expected} for {manifest.weights}, the folder holds {manifest.file}"
                )
            # weights_only=False inside the library: the released file is a pickled module. Its SHA-256
            # was checked above against the manifest written where it was downloaded.
            module = xrv.models.DenseNet(weights=manifest.weights, cache_dir=str(folder))
        else:
            if manifest.file != PSPNET_FILE:
                raise ModelError(f"[models] anatomy: torchxrayvision reads {PSPNET_FILE}, the folder holds {manifest.file}")
            module = xrv.baseline_models.chestx_det.PSPNet(cache_dir=str(folder))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load and load_state_dict raise many kinds
        raise ModelError(
            f"[models] {role}: {folder / manifest.file} could not be loaded as {manifest.name} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.to(device), manifest
