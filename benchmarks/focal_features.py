"""Which measurements a focal model should read: leave one reference film out at a time.

The shipped reference's focal model is trained by inserting nodules into four films
(``miemss-node reference chest``). Here each film in turn is left out: a model is fitted on the other
three films' candidates, exactly as the reference fits it, and judged on the copies of the film it has
not seen: the share of the inserted nodules it ranks above the film's false candidates at 1 false
positive per film copy (the threshold pooled over the copies, as ``evaluate --insert-nodules`` pools it
over films). This is done for several sets of measurements; the baseline, run in the same process, is
the model that read every measurement until 2026-12-02.

Run ``python benchmarks/focal_features.py --data-root ../shared/data`` (about 2 minutes).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

def main() -> None:
    """Print, per set of measurements, the share of nodules found in the films left out."""
    from miemss_node.config import load_config
    from miemss_node.evaluate.real import decode_film
    from miemss_node.pipeline.chest_reference import (
        FOCAL_FLAGS_PER_NORMAL_FILM,
        inserted_candidates,
        load_chest_reference,
        measure_for_reference,
    )
    from miemss_node.pipeline.focal import FEATURE_NAMES, FocalCandidate
    from miemss_node.pipeline.focal_model import MODEL_FEATURES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--config", type=Path, default=REPO / "config.toml")
    args = parser.parse_args()
    settings = load_config(args.config).pipeline
    # The sets compared; the first is the baseline, the last the shipped model's.
    sets = {
        "every measurement but convergence (the model until 2026-12-02)": tuple(
            name for name in FEATURE_NAMES if name != "convergence"
        ),
        "every measurement": FEATURE_NAMES,
        "convergence alone": ("convergence",),
        "the shipped model's (convergence, place, contrast)": MODEL_FEATURES,
    }
    films: list[tuple[str, list[FocalCandidate], list[tuple[FocalCandidate, int]]]] = []
    for seed, film in enumerate(load_chest_reference().films):
        path = next(args.data_root.rglob(film["file"]), None)
        if path is None:
            raise SystemExit(f"{film['file']} (a reference film) is not under {args.data_root}")
        image = decode_film(path, view="PA")
        measured, enhanced = measure_for_reference(image, settings)
        if measured is None:
            raise SystemExit(f"{film['file']} is not measured as a frontal chest film")
        films.append((film["file"], list(measured.candidates), inserted_candidates(image, enhanced, measured, seed)))
        print(f"  {film['file']}: {len(measured.candidates)} candidates, {len(films[-1][2])} on its copies")
    print("share of inserted nodules found at 1 FP per copy of the film left out:")
    shares = []
    for title, features in sets.items():
        per_film = [_left_out(films, index, features, FOCAL_FLAGS_PER_NORMAL_FILM) for index in range(len(films))]
        found, total = sum(f for f, _ in per_film), sum(t for _, t in per_film)
        shares.append(found / max(total, 1))
        each = ", ".join(f"{f / max(t, 1):.2f}" for f, t in per_film)
        print(f"  {title}: {shares[-1]:.3f} ({found} of {total}; per film {each})")
    print(f"shipped / baseline: {shares[-1] / max(shares[0], 1e-9):.2f}")


def _left_out(films: Sequence[tuple], index: int, features: Sequence[str], flags_per_film: float) -> tuple[int, int]:
    """(nodules found, nodules inserted) in film ``index`` by a model fitted on the others."""
    from miemss_node.pipeline.focal_model import TRAINING_COPIES, TRAINING_NODULES, fit_focal_model

    training = [film for i, film in enumerate(films) if i != index]
    model = fit_focal_model(
        [clean for _, clean, _ in training], [pair for _, _, pairs in training for pair in pairs], flags_per_film, features
    )
    _, clean, labelled = films[index]
    negatives = sorted([model.log_odds(c) for c in clean] + [model.log_odds(c) for c, on in labelled if not on])
    copies = 1 + TRAINING_COPIES
    cut = negatives[-(copies + 1)] if len(negatives) > copies else -np.inf
    found = {nodule for c, nodule in labelled if nodule and model.log_odds(c) > cut}
    return len(found), TRAINING_COPIES * TRAINING_NODULES


if __name__ == "__main__":
    main()
