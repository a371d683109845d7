"""Does a small convolutional network over each candidate's patch rank faint nodules better than the
shipped focal evidence? A learned measurement in place of the hand-made ones.

Nodules are inserted into the drawn lungs of the zone file's normal films and measured as
``focal_ceiling.py`` does (same copies, same hit rule, same sensitivity at 0.5, 1 and 2 false candidates
per film run). Each candidate's patch (:data:`PATCH` pixels of :data:`PATCH_MM_PER_PX` mm, from the detail
image the blob detector works on, less its median) is scored by a network of four convolutions, trained on
the candidates of the other development films (those copies, and :data:`TRAINING_COPIES` more per film
with 3 nodules of 10-40 mm at contrast 0.04-0.3, as the focal model is trained), one film left out at a
time, with the eight flips and turns of each patch. The held-out films are scored by a network trained on
every development film. The shipped focal evidence is the baseline, ranked in the same runs; the sum of
both, each standardised per film run, is the third ranking.

This is the in-site ceiling of such a network (the films it is trained on come from the same site as the
films it is measured on), not a shippable model. Run
``python benchmarks/focal_cnn.py --data-root ../shared/data`` (about 10 minutes on 2 cores, as measured).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.focal_ceiling import (  # noqa: E402
    CONTRASTS,
    FP_RATES,
    Run,
    candidate_hits,
    insertion_arguments,
    nodule_copies,
    normal_films,
    sensitivities,
)

#: A candidate's patch: this many pixels a side, each this many mm (60 mm: a 30 mm nodule and its surroundings).
PATCH = 48
PATCH_MM_PER_PX = 1.25
#: Display units per unit of the network's input.
INPUT_SCALE = 0.1
#: Training copies per development film, beyond the measured ones.
TRAINING_COPIES = 10
EPOCHS = 12


def main() -> None:
    """Print, per split and contrast, the sensitivity of each ranking."""
    args = insertion_arguments(__doc__.splitlines()[0]).parse_args()
    runs = _measure(args)
    _score(runs)
    measured = [run for run, _ in runs if run.contrast >= 0.0]
    for split in ("development", "held-out"):
        print(f"[{split}] sensitivity at {'/'.join(f'{r:g}' for r in FP_RATES)} false candidates per film run")
        for title, key in (
            ("shipped focal evidence (baseline)", "evidence"),
            ("network over the candidate's patch", "network"),
            ("both, standardised per film run", "both"),
        ):
            cells = []
            for contrast in CONTRASTS:
                group = [r for r in measured if r.split == split and r.contrast in (0.0, contrast)]
                cells.append(f"{contrast:g}: {'/'.join(f'{s:.2f}' for s in sensitivities(group, key))}")
            print(f"  {title:40s} " + "   ".join(cells))


def _measure(args: argparse.Namespace) -> list[tuple[Run, np.ndarray]]:
    """Every film run with its candidates' patches; training copies have contrast -1."""
    from miemss_node.config import load_config
    from miemss_node.evaluate.lesions import insert_lesions
    from miemss_node.pipeline.chest import DETAIL_SIDE
    from miemss_node.pipeline.chest_reference import focal_evidence, load_chest_reference, measure_for_reference
    from miemss_node.pipeline.features import to_working

    settings = load_config(args.config).pipeline
    reference = load_chest_reference(settings.chest_reference)
    out = []
    for film, image, lungs, spacing, rng in normal_films(args.data_root, args.zones):
        started = time.perf_counter()
        copies = nodule_copies(image.pixels, lungs, spacing, rng, args.trials)
        for _ in range(TRAINING_COPIES if film.split == "development" else 0):
            contrast = float(rng.uniform(0.04, 0.3))
            pixels, labels, _ = insert_lesions(
                image.pixels, lungs, spacing, kind="nodule", contrast=contrast, count=3, diameter_range_mm=(10.0, 40.0), rng=rng
            )
            copies.append((-1.0, pixels, labels))
        for contrast, pixels, labels in copies:
            measured, enhanced = measure_for_reference(replace(image, pixels=pixels), settings)
            if measured is None:
                continue
            detail = np.asarray(to_working(enhanced, DETAIL_SIDE), dtype=np.float32)
            scale = (labels.shape[0] / measured.detail_shape[0], labels.shape[1] / measured.detail_shape[1])
            patches = np.array(
                [_patch(detail, measured.detail_mm_per_px, c.row, c.col) for c in measured.candidates]
            ).reshape(-1, PATCH, PATCH)
            values = {"evidence": np.array([focal_evidence(c, reference) for c in measured.candidates])}
            run = Run(film.file, film.split, contrast, len(np.unique(labels)) - 1, candidate_hits(measured.candidates, labels, scale), values)
            out.append((run, patches))
        print(f"  {film.file}: {len(copies)} runs, {time.perf_counter() - started:.0f} s", flush=True)
    return out


def _patch(detail: np.ndarray, mm_per_px: float, row: float, col: float) -> np.ndarray:
    offsets = (np.arange(PATCH) - (PATCH - 1) / 2.0) * (PATCH_MM_PER_PX / mm_per_px)
    rows, cols = np.meshgrid(row + offsets, col + offsets, indexing="ij")
    return ndimage.map_coordinates(detail, [rows, cols], order=1, mode="nearest").astype(np.float32)


def _score(runs: list[tuple[Run, np.ndarray]]) -> None:
    """Add "network" and "both" values: development films one left out at a time, held-out by all."""
    development = [item for item in runs if item[0].split == "development"]
    for film in [*sorted({run.film for run, _ in development}), None]:
        training = [(run, patches) for run, patches in development if run.film != film]
        network = _train(
            np.concatenate([patches for _, patches in training]),
            np.concatenate([np.array(run.hits) > 0 for run, _ in training]),
        )
        for run, patches in runs:
            if (run.film == film) if film is not None else (run.split != "development"):
                run.values["network"] = _predict(network, patches)
                run.values["both"] = _standardised(run.values["evidence"]) + _standardised(run.values["network"])
        print(f"  trained without {film or 'the held-out films'}", flush=True)


def _standardised(values: np.ndarray) -> np.ndarray:
    return (values - np.median(values)) / (np.std(values) + 1e-6) if values.size else values


def _inputs(patches: np.ndarray) -> Any:
    import torch

    centre = np.median(patches.reshape(len(patches), -1), axis=1)[:, None, None]
    return torch.from_numpy(((patches - centre) / INPUT_SCALE).astype(np.float32))[:, None]


def _train(patches: np.ndarray, positive: np.ndarray) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.3), nn.Linear(32, 1),
    )  # fmt: skip
    x, y = _inputs(patches), torch.from_numpy(positive.astype(np.float32))
    loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float((len(y) - y.sum()) / max(float(y.sum()), 1.0))))
    optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-3)
    for _ in range(EPOCHS):
        network.train()
        order = torch.randperm(len(y))
        for start in range(0, len(y), 128):
            batch = order[start : start + 128]
            inputs = torch.rot90(x[batch], int(torch.randint(0, 4, (1,))), (2, 3))
            if float(torch.rand(1)) < 0.5:
                inputs = torch.flip(inputs, (3,))
            optimiser.zero_grad()
            loss(network(inputs)[:, 0], y[batch]).backward()
            optimiser.step()
    return network.eval()


def _predict(network: Any, patches: np.ndarray) -> np.ndarray:
    """The network's mean logit over the patch's four turns."""
    import torch

    if not len(patches):
        return np.zeros(0)
    with torch.no_grad():
        x = _inputs(patches)
        return (sum(network(torch.rot90(x, k, (2, 3)))[:, 0] for k in range(4)) / 4).numpy()


if __name__ == "__main__":
    main()
