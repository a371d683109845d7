"""TorchXRayVision models with random weights, saved in folders as a hospital's node holds them.

The real architectures (the library's DenseNet-121 and PSPNet), randomly initialised: nothing is
downloaded. Each weights file is written as the library's released file is (a pickled DenseNet module;
a PSPNet state dict saved from DataParallel, keys prefixed "module."), under the name the library looks
for, and the folder gets its manifest from the same code ``models fetch`` runs after downloading.

A fresh network's batch-norm statistics (mean 0, variance 1) are far from its activations, which
saturates every output at 0 or 1 and leaves Grad-CAM without a gradient; as in any training run, the
statistics are first estimated, here on a few random images (:func:`_estimate_batch_norm`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from miemss_node.pipeline.xrv import DEFAULT_CHEST_WEIGHTS, PSPNET_FILE, import_xrv, write_manifest


@dataclass(frozen=True)
class XrvFolders:
    """Folders of the saved random models."""

    chest: Path
    anatomy: Path


def build_chest_folder(folder: Path, *, seed: int = 0, weights: str = DEFAULT_CHEST_WEIGHTS) -> Path:
    """Save a random DenseNet-121 of ``weights``' 18 outputs, and its manifest, into ``folder``."""
    import torch

    xrv = import_xrv()
    torch.manual_seed(seed)
    labels = xrv.models.model_urls[weights]["labels"]
    module = xrv.models.DenseNet(num_classes=len(labels))
    _estimate_batch_norm(module, torch.rand(4, 1, 224, 224) * 2048 - 1024)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(module, folder / os.path.basename(xrv.models.model_urls[weights]["weights_url"]))
    write_manifest("chest", folder, weights=weights, source="random weights (test)")
    return folder


def build_anatomy_folder(folder: Path, *, seed: int = 0) -> Path:
    """Save a random PSPNet of the 14 ChestX-Det structures, and its manifest, into ``folder``."""
    import torch
    from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

    xrv = import_xrv()
    torch.manual_seed(seed)
    module = pspnet(len(xrv.baseline_models.chestx_det.PSPNet.targets))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{key}": value for key, value in module.state_dict().items()}, folder / PSPNET_FILE)
    write_manifest("anatomy", folder, weights="", source="random weights (test)")
    return folder


def _estimate_batch_norm(module: object, images: object) -> None:
    """Batch-norm running statistics from a few batches, no gradients; the module ends in eval mode."""
    import torch

    assert isinstance(module, torch.nn.Module) and isinstance(images, torch.Tensor)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # a plain average over the batches
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(images)
    module.eval()


def build_xrv_folders(folder: Path) -> XrvFolders:
    """Both models under ``folder`` (``chest`` and ``anatomy``)."""
    return XrvFolders(chest=build_chest_folder(folder / "chest"), anatomy=build_anatomy_folder(folder / "anatomy"))
