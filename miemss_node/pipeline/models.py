"""Learned models of a worker process, loaded once and offline from local folders.

ViT and BLIP (Hugging Face format), and the TorchXRayVision chest classifier and anatomy segmentation
(:mod:`~miemss_node.pipeline.xrv`, :mod:`~miemss_node.pipeline.xrv_models`).

Hospitals run nodes without internet, so a model is a folder as ``save_pretrained`` writes it,
named in ``[models]``, and loaded with ``local_files_only=True``: nothing is fetched at run time.
:func:`load_models` builds a :class:`ModelSet` once when a worker process starts; the worker passes
it down to the pipeline, which records in every result which models ran (:class:`ModelRun`).

torch and transformers are imported here, inside the functions, so that the receiver and
``check-config`` start without them. ``models fetch`` (:func:`fetch_model`) is the one place that
reaches the network, on purpose, on a machine that has one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from miemss_node.config import ModelSettings
from miemss_node.errors import ModelError
from miemss_node.pipeline.base import ModelRun

if TYPE_CHECKING:
    import torch

    from miemss_node.pipeline.caption import BlipCaptioner
    from miemss_node.pipeline.vit import VitAttention
    from miemss_node.pipeline.xrv_models import AnatomySegmenter, ChestClassifier

logger = logging.getLogger(__name__)

#: Written by ``models fetch`` beside the weights: the Hub repository and commit they came from.
PROVENANCE_FILE = "miemss_model.json"

#: Hub repositories that ``models fetch vit`` and ``models fetch blip`` download.
DEFAULT_REPOS = {
    "vit": "google/vit-base-patch16-224-in21k",
    "blip": "Salesforce/blip-image-captioning-base",
}

#: Files ``models fetch`` downloads: configs, processor and tokenizer files, safetensors weights.
FETCH_PATTERNS = ("*.json", "*.txt", "*.safetensors")

#: Hex digits of the weights' SHA-256 kept in a model's revision.
DIGEST_CHARS = 12


@dataclass(frozen=True, kw_only=True)
class ModelSet:
    """The models a worker loaded: each None when not configured."""

    vit: VitAttention | None = None
    blip: BlipCaptioner | None = None
    #: ``[models] chest``: pathology probabilities and Grad-CAM on frontal chest films.
    chest: ChestClassifier | None = None
    #: ``[models] anatomy``: lungs, heart and mediastinum of frontal chest films.
    anatomy: AnatomySegmenter | None = None

    @property
    def runs(self) -> tuple[ModelRun, ...]:
        """The models configured, for the report and the SR (empty: none)."""
        models = (self.vit, self.blip, self.chest, self.anatomy)
        return tuple(model.run for model in models if model is not None)


#: No model configured: the pipeline runs on HOG features alone.
NO_MODELS = ModelSet()


def load_models(settings: ModelSettings) -> ModelSet:
    """Load the configured models once, offline, on the configured device.

    Parameters
    ----------
    settings
        ``[models]``: folders (already resolved and checked by the config), device, threads, int8.

    Returns
    -------
    ModelSet
        :data:`NO_MODELS` when no folder is configured (torch is then not even imported).

    Raises
    ------
    ModelError
        When torch/transformers are missing, the device is unavailable, or a folder cannot be
        loaded offline; the message names the model, the folder and the fix.
    """
    if not (settings.vit or settings.blip or settings.chest or settings.anatomy):
        return NO_MODELS
    torch = _import_torch()
    if settings.threads:
        # Process-wide in torch; a worker process runs one pipeline, so this is its budget.
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    vit = load_vit(Path(settings.vit), device=device, int8="vit" in settings.int8) if settings.vit else None
    blip = (
        load_blip(
            Path(settings.blip),
            device=device,
            int8="blip" in settings.int8,
            max_new_tokens=settings.caption_max_tokens,
            num_beams=settings.caption_beams,
        )
        if settings.blip
        else None
    )
    chest = anatomy = None
    if settings.chest or settings.anatomy:
        from miemss_node.pipeline.xrv_models import load_anatomy_segmenter, load_chest_classifier

        started = time.perf_counter()
        if settings.chest:
            chest = load_chest_classifier(
                Path(settings.chest),
                device=device,
                default_threshold=settings.chest_threshold,
                thresholds=dict(settings.chest_thresholds),
            )
            _log_loaded(chest.run, started)
        started = time.perf_counter()
        if settings.anatomy:
            anatomy = load_anatomy_segmenter(Path(settings.anatomy), device=device)
            _log_loaded(anatomy.run, started)
    return ModelSet(vit=vit, blip=blip, chest=chest, anatomy=anatomy)


def resolve_device(name: str) -> str:
    """Map ``[models] device`` to a torch device: "auto" picks "cuda" when torch sees a GPU.

    Raises
    ------
    ModelError
        When "cuda" is asked for and torch sees no GPU.
    """
    torch = _import_torch()
    has_gpu = bool(torch.cuda.is_available())
    if name == "auto":
        return "cuda" if has_gpu else "cpu"
    if name == "cuda" and not has_gpu:
        raise ModelError(
            "[models] device = 'cuda' but torch sees no GPU (CPU-only torch build or no driver): "
            "set device = 'auto' or 'cpu'"
        )
    return name


def load_vit(folder: Path, *, device: str, int8: bool) -> VitAttention:
    """Load a ``ViTModel`` and its image processor from ``folder``, offline.

    Eager attention is asked for because the SDPA kernels do not return the attention
    probabilities that the rollout needs.

    Raises
    ------
    ModelError
        When the folder does not hold a loadable ViT and image processor.
    """
    _import_torch()
    from transformers import AutoImageProcessor, ViTModel

    from miemss_node.pipeline.vit import VitAttention

    started = time.perf_counter()
    model = _from_pretrained(
        "vit", folder, ViTModel, add_pooling_layer=False, attn_implementation="eager"
    )
    processor = _processor("vit", folder, AutoImageProcessor)
    model, precision = _place(model, device=device, int8=int8)
    run = ModelRun(
        role="vit",
        name=model_name(folder),
        revision=model_revision(folder),
        parameters=(
            f"{type(model).__name__}, {model.config.num_hidden_layers} layers, "
            f"{model.config.image_size}x{model.config.image_size} input, attention rollout, {precision} on {device}"
        ),
    )
    _log_loaded(run, started)
    return VitAttention(
        model=model, processor=processor, device=device, run=run, batch_frames=precision == "fp32"
    )


def load_blip(folder: Path, *, device: str, int8: bool, max_new_tokens: int, num_beams: int) -> BlipCaptioner:
    """Load a ``BlipForConditionalGeneration`` and its ``BlipProcessor`` from ``folder``, offline.

    Raises
    ------
    ModelError
        When the folder does not hold a loadable BLIP captioning model and processor.
    """
    _import_torch()
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from miemss_node.pipeline.caption import BlipCaptioner

    started = time.perf_counter()
    model = _from_pretrained("blip", folder, BlipForConditionalGeneration)
    processor = _processor("blip", folder, BlipProcessor)
    model, precision = _place(model, device=device, int8=int8)
    decoding = "greedy" if num_beams == 1 else f"beam search ({num_beams} beams)"
    run = ModelRun(
        role="blip",
        name=model_name(folder),
        revision=model_revision(folder),
        parameters=f"{type(model).__name__}, {decoding}, max {max_new_tokens} new tokens, {precision} on {device}",
    )
    _log_loaded(run, started)
    return BlipCaptioner(
        model=model, processor=processor, device=device, run=run, max_new_tokens=max_new_tokens, num_beams=num_beams
    )


@dataclass(frozen=True, kw_only=True)
class ModelCheck:
    """What ``models check`` found for one configured model."""

    run: ModelRun
    #: Seconds to load the folder (and quantise).
    load_seconds: float
    #: Seconds of one forward pass (a caption for BLIP) on a synthetic 512x512 image, after a warm-up.
    forward_seconds: float
    #: Parameters of the model (int8 Linear weights included).
    parameters: int
    #: What the pass produced, e.g. the caption or the token grid.
    output: str


def check_models(settings: ModelSettings) -> list[ModelCheck]:
    """Load each configured model offline, as a worker does, and time one forward pass.

    Returns
    -------
    list of ModelCheck
        Empty when no model is configured.

    Raises
    ------
    ModelError
        When a model cannot be loaded (the message names it and the fix).
    """
    import numpy as np

    rows, cols = np.mgrid[:512, :512] / 512.0
    # A synthetic, patient-free image: a smooth gradient with a bright disc.
    image = (0.3 + 0.4 * rows + 0.3 * (((rows - 0.4) ** 2 + (cols - 0.6) ** 2) < 0.01)).astype(np.float32)
    checks = []
    roles = ("vit", "blip", "chest", "anatomy")
    for role in roles:
        if not getattr(settings, role):
            continue
        started = time.perf_counter()
        # One model at a time, so each load time is its own.
        unset: dict[str, Any] = {other: "" for other in roles if other != role}
        loaded = load_models(replace(settings, **unset))
        load_seconds = time.perf_counter() - started
        model: Any = getattr(loaded, role)
        output = ""
        # The first pass pays for one-off allocations; the PSPNet's one pass takes seconds on a CPU.
        for _ in range(1 if role == "anatomy" else 2):
            started = time.perf_counter()
            if loaded.vit is not None:
                grid = loaded.vit.patches([image])[0].rollout.shape
                output = f"{grid[0]}x{grid[1]} patch tokens with attention rollout"
            elif loaded.blip is not None:
                output = f"caption {loaded.blip.caption(image)!r}"
            elif loaded.chest is not None:
                output = _classifier_output(loaded.chest.classify(image))
            elif loaded.anatomy is not None:
                masks = loaded.anatomy.segment(image, image.shape)
                fractions = [float(lung.mean()) for lung in masks.lungs]
                output = f"lungs cover {fractions[0]:.0%} and {fractions[1]:.0%} of the image"
            forward_seconds = time.perf_counter() - started
        checks.append(
            ModelCheck(
                run=model.run,
                load_seconds=load_seconds,
                forward_seconds=forward_seconds,
                parameters=_parameter_count(getattr(model, "model", None) or model.module),
                output=output,
            )
        )
    return checks


def _classifier_output(result: Any) -> str:
    """The classifier's three most probable pathologies, in words."""
    top = sorted(result.pathologies, key=lambda p: -p.probability)[:3]
    return f"{len(result.pathologies)} pathology probabilities, highest " + ", ".join(
        f"{p.label} {p.probability:.2f}" for p in top
    )


def model_name(folder: Path) -> str:
    """The Hub repository the folder was fetched from (``miemss_model.json``), else the folder's name."""
    return str(_provenance(folder).get("repo_id") or folder.name)


def model_revision(folder: Path) -> str:
    """Identify the weights: the Hub commit when known, and always a SHA-256 of the weight files.

    Returns
    -------
    str
        For example ``"commit 1a2b3c4d5e6f, sha256 0123456789ab"`` or ``"sha256 0123456789ab"``.
    """
    digest = hashlib.sha256()
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    for path in weights:
        with path.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    text = f"sha256 {digest.hexdigest()[:DIGEST_CHARS]}"
    commit = str(_provenance(folder).get("revision") or "")
    return f"commit {commit[:DIGEST_CHARS]}, {text}" if commit else text


def fetch_model(name: str, folder: Path, *, revision: str | None = None) -> tuple[str, str]:
    """Download a model from the Hugging Face Hub into ``folder`` (``models fetch``).

    The only network access of the package, run by hand where a network exists; ``HF_ENDPOINT``
    (read now) points it at a mirror. ``miemss_model.json`` records the repository and commit, so
    the SR can name them.

    Parameters
    ----------
    name
        "vit", "blip" (the repositories of :data:`DEFAULT_REPOS`) or a repository id "owner/name".
    folder
        Where the files go; created if missing.
    revision
        A branch, tag or commit; None is the default branch.

    Returns
    -------
    tuple of str
        The repository id and the commit downloaded.

    Raises
    ------
    ModelError
        When the Hub cannot be reached or refuses, with what to do instead.
    """
    from huggingface_hub import HfApi, snapshot_download

    repo_id = DEFAULT_REPOS.get(name, name)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
        commit = str(info.sha or revision or "")
        snapshot_download(
            repo_id,
            revision=commit or None,
            local_dir=folder,
            allow_patterns=list(FETCH_PATTERNS),
            endpoint=endpoint,
        )
    except Exception as exc:  # noqa: BLE001 - huggingface_hub and requests/httpx raise many kinds
        where = endpoint or "https://huggingface.co"
        raise ModelError(
            f"could not download {repo_id} from {where} ({type(exc).__name__}): no network, or the Hub "
            "refused. On a machine with a network run `miemss-node models fetch` there and copy the "
            "folder over, or copy a folder written by save_pretrained; see README, section Models"
        ) from exc
    (folder / PROVENANCE_FILE).write_text(
        json.dumps({"repo_id": repo_id, "revision": commit}, indent=2) + "\n", encoding="utf-8"
    )
    logger.info("fetched %s at %s", repo_id, commit[:DIGEST_CHARS], extra={"action": "models.fetched"})
    return repo_id, commit


def _parameter_count(model: Any) -> int:
    """Parameters, including the packed weights of dynamic int8 Linear layers (not ``parameters()``)."""
    total = sum(int(p.numel()) for p in model.parameters())
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight):
            bias = module.bias()
            total += int(weight().numel()) + (0 if bias is None else int(bias.numel()))
    return total


def _provenance(folder: Path) -> dict[str, Any]:
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s is unreadable; ignored", path, extra={"action": "models.provenance_unreadable"})
        return {}
    return data if isinstance(data, dict) else {}


def _import_torch() -> Any:
    from miemss_node.pipeline.xrv import import_torchvision

    import_torchvision()  # before transformers, which imports it (see pipeline/xrv.py)
    try:
        import torch
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        raise ModelError(
            f"[models] needs torch and transformers ({exc}): `make install`, or empty [models] vit/blip"
        ) from exc
    # Loading draws progress bars on stderr: noise in a service's log, which is not a terminal.
    transformers_logging.disable_progress_bar()
    return torch


def _from_pretrained(role: str, folder: Path, cls: Any, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` offline; missing weights are an error, never a silent random init."""
    _import_torch()
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(
            f"[models] {role}: {folder} could not be loaded as {cls.__name__} offline ({type(exc).__name__}: "
            f"{exc}); it must be a folder written by save_pretrained (see README, section Models)"
        ) from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelError(
            f"[models] {role}: {folder} lacks {len(missing)} weight(s) of {cls.__name__} (e.g. {missing[0]}); "
            "it holds a different architecture or is incomplete"
        )
    return model.eval()


def _processor(role: str, folder: Path, cls: Any) -> Any:
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"[models] {role}: the processor files in {folder} could not be loaded offline "
            f"({type(exc).__name__}: {exc}); save the processor with the model (processor.save_pretrained)"
        ) from exc


def _place(model: torch.nn.Module, *, device: str, int8: bool) -> tuple[Any, str]:
    """Move to the device; on the CPU, optionally quantise the Linear layers to dynamic int8."""
    import torch

    if device != "cpu":
        return model.to(device), "fp32"
    if not int8:
        return model, "fp32"
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.x marks eager-mode quantisation deprecated in favour of torchao (not installed);
        # quantize_dynamic still works in the pinned torch and is covered by the tests.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        # In place: a copy would hold the fp32 weights twice while quantising.
        quantized = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return quantized, "int8 dynamic (Linear)"


def _log_loaded(run: ModelRun, started: float) -> None:
    logger.info(
        "%s model %s (%s) loaded in %.1f s",
        run.role,
        run.name,
        run.revision,
        time.perf_counter() - started,
        extra={"action": "models.loaded", "role": run.role},
    )
